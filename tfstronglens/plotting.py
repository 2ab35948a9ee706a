"""Quick-look plots of lens images with astronomical defaults.

Images are shown with ``origin="lower"`` (row 0 at the bottom, so ``y`` grows upwards as
in :class:`~tfstronglens.PixelGrid`), in arcsec when a grid (or an extent) is given, with a
colorbar. :func:`save_png` draws on its own Agg canvas, so it never needs a display or
touches pyplot's global state; :func:`plot_image` without ``ax`` uses pyplot (so that it
shows up in notebooks), which falls back to the Agg backend on a machine without display.
"""

from __future__ import annotations

import numbers

import numpy as np

from .io._atomic import atomic_output, check_output_path
from .lensing.grid import PixelGrid

__all__ = ["plot_image", "save_png", "save_fit_panels", "plot_corner", "save_corner",
           "save_population_posterior",
           "save_sensitivity_map"]


def _as_image(image) -> np.ndarray:
    if hasattr(image, "numpy") and callable(image.numpy):
        image = image.numpy()
    arr = np.asarray(image)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"image must be a real-valued array, got dtype {arr.dtype}")
    while arr.ndim > 2 and arr.shape[0] == 1:  # a batch of one, as the Simulator returns
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image must be a 2D array (or a batch of one), got shape {np.shape(image)}")
    return arr.astype(np.float64)


def _extent(grid_or_extent, shape):
    """``(extent, unit)`` for imshow from a PixelGrid, a 4-sequence or None."""
    if grid_or_extent is None:
        return None, "pixel"
    if isinstance(grid_or_extent, PixelGrid):
        n = grid_or_extent.num_pix
        if shape != (n, n):
            raise ValueError(f"image has shape {shape} but the grid has {n} x {n} pixels")
        return tuple(float(v) for v in grid_or_extent.extent), "arcsec"
    try:
        ext = tuple(float(v) for v in grid_or_extent)
    except (TypeError, ValueError):
        ext = ()
    if len(ext) != 4 or not np.all(np.isfinite(ext)) or ext[0] == ext[1] or ext[2] == ext[3]:
        raise ValueError("grid_or_extent must be a PixelGrid, a (xmin, xmax, ymin, ymax) extent "
                         f"in arcsec, or None; got {grid_or_extent!r}")
    return ext, "arcsec"


def _log_norm(arr, log_range):
    from matplotlib.colors import LogNorm

    finite = arr[np.isfinite(arr)]
    vmax = finite.max() if finite.size else 0.0
    if not vmax > 0:
        raise ValueError("log=True needs an image with positive pixels; its maximum is "
                         f"{vmax!r}")
    positive = finite[finite > 0]
    vmin = max(positive.min(), vmax / log_range)
    if vmin >= vmax:
        vmin = vmax / log_range
    return LogNorm(vmin=vmin, vmax=vmax, clip=True)


def plot_image(image, grid_or_extent=None, ax=None, title=None, log: bool = False, *,
               cmap: str = "inferno", colorbar: bool = True, colorbar_label=None,
               log_range: float = 1e4, **imshow_kwargs):
    """Show a lens image with ``origin="lower"``, arcsec axes and a colorbar.

    Args:
      image: ``[N, N]`` array or tensor (a leading batch dimension of size 1 is dropped).
      grid_or_extent: a :class:`~tfstronglens.PixelGrid` (axes in arcsec; its pixel count
        must match the image), an ``(xmin, xmax, ymin, ymax)`` extent in arcsec, or
        ``None`` (axes in pixels).
      ax: matplotlib ``Axes`` to draw on; by default a new pyplot figure.
      title: axes title.
      log: logarithmic colour scale over ``log_range`` decades below the maximum
        (non-positive pixels take the lowest colour).
      cmap: colormap name.
      colorbar: add a colorbar (labelled ``colorbar_label``).
      **imshow_kwargs: passed to ``Axes.imshow`` (e.g. ``vmin``, ``vmax``).

    Returns:
      The matplotlib ``Axes``.
    """
    arr = _as_image(image)
    extent, unit = _extent(grid_or_extent, arr.shape)
    if not (isinstance(log_range, numbers.Real) and log_range > 1):
        raise ValueError(f"log_range must be a number > 1, got {log_range!r}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 4))
    kwargs = dict(origin="lower", cmap=cmap, interpolation="nearest")
    if extent is not None:
        kwargs["extent"] = extent
    if log:
        if "vmin" in imshow_kwargs or "vmax" in imshow_kwargs:
            raise ValueError("give either log=True or vmin/vmax, not both")
        kwargs["norm"] = _log_norm(arr, float(log_range))
    kwargs.update(imshow_kwargs)
    im = ax.imshow(arr, **kwargs)
    ax.set_xlabel(f"x [{unit}]")
    ax.set_ylabel(f"y [{unit}]")
    if title is not None:
        ax.set_title(str(title))
    if colorbar:
        cbar = ax.figure.colorbar(im, ax=ax)
        if colorbar_label is not None:
            cbar.set_label(str(colorbar_label))
    return ax


def save_png(path, image, grid_or_extent=None, title=None, log: bool = False, *,
             overwrite: bool = False, figsize=(5.0, 4.0), dpi: int = 100, **plot_kwargs):
    """Render :func:`plot_image` to a PNG file of ``figsize * dpi`` pixels, atomically.

    The figure is drawn on its own Agg canvas (no display, no pyplot state) and written to
    a temporary file in the same directory, then moved to ``path``.

    Args:
      path: output ``.png`` file.
      image, grid_or_extent, title, log, **plot_kwargs: as :func:`plot_image`.
      overwrite: replace an existing file (default ``False``: ``FileExistsError``).
      figsize: figure size in inches ``(width, height)``.
      dpi: dots per inch.

    Returns:
      The path written, as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_output_path(path, overwrite)
    try:
        w, h = (float(v) for v in figsize)
    except (TypeError, ValueError):
        raise ValueError(f"figsize must be (width, height) in inches, got {figsize!r}") from None
    if not (w > 0 and h > 0 and np.isfinite(w) and np.isfinite(h)):
        raise ValueError(f"figsize must be positive, got {figsize!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not 0 < dpi < 10000:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plot_image(image, grid_or_extent, ax=ax, title=title, log=log, **plot_kwargs)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _new_figure(figsize, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path, overwrite, dpi=100):
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def save_fit_panels(path, data, model, residuals, source=None, *, pixel_scale=None,
                    source_extent=None, overwrite: bool = False, dpi: int = 100):
    """Write a PNG with the panels of a lens fit: data, model, normalised residuals
    ``(data - model) / sigma`` (colour range -5..5) and, if given, the reconstructed source
    (surface brightness on the source plane, ``source_extent`` in arcsec).

    Data and model share one colour scale. With ``pixel_scale`` (arcsec) the image axes are
    in arcsec, centred on the image centre (:class:`~tfstronglens.PixelGrid` convention).
    Written atomically; returns the path.
    """
    path = check_output_path(path, overwrite)
    data, model, residuals = _as_image(data), _as_image(model), _as_image(residuals)
    if not data.shape == model.shape == residuals.shape:
        raise ValueError(f"data, model and residuals must have the same shape, got "
                         f"{data.shape}, {model.shape}, {residuals.shape}")
    extent = None
    if pixel_scale is not None:
        half = 0.5 * data.shape[0] * float(pixel_scale)
        extent = (-half, half, -half, half)
    panels = 4 if source is not None else 3
    fig = _new_figure((4.2 * panels, 3.8), dpi)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    lo, hi = np.nanpercentile(np.concatenate([data.ravel(), model.ravel()]), [0.5, 99.9])
    plot_image(data, extent, ax=axes[0], title="data", vmin=lo, vmax=hi)
    plot_image(model, extent, ax=axes[1], title="best-fit model", vmin=lo, vmax=hi)
    chi2 = float(np.mean(residuals ** 2))
    plot_image(residuals, extent, ax=axes[2], cmap="RdBu_r", vmin=-5, vmax=5,
               title=f"(data - model)/sigma, chi2/pix {chi2:.2f}")
    if source is not None:
        plot_image(source, source_extent, ax=axes[3], title="reconstructed source")
    fig.tight_layout()
    return _save_figure(fig, path, overwrite, dpi)


def save_sensitivity_map(path, data, log10_mass, region, *, pixel_scale, title=None,
                         overwrite: bool = False, dpi: int = 100):
    """Write a PNG of a subhalo sensitivity map (lowest detectable ``log10 M``, ``[G, G]``
    over ``region = (x_min, x_max, y_min, y_max)`` arcsec; NaN: not detectable) beside and
    over the data (contours of the arcs). Written atomically; returns the path."""
    path = check_output_path(path, overwrite)
    data, lm = _as_image(data), np.asarray(log10_mass, np.float64)
    half = 0.5 * data.shape[0] * float(pixel_scale)
    extent = (-half, half, -half, half)
    fig = _new_figure((9.0, 3.9), dpi)
    ax0, ax1 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plot_image(data, extent, ax=ax0, title="data")
    im = ax1.imshow(lm, origin="lower", extent=tuple(region), cmap="viridis_r",
                    interpolation="nearest")
    levels = np.nanpercentile(data, [90, 97]) if np.any(data > 0) else None
    if levels is not None and levels[1] > levels[0]:
        xs = np.linspace(-half, half, data.shape[0] + 1)
        xc = 0.5 * (xs[1:] + xs[:-1])
        ax1.contour(xc, xc, data, levels=levels, colors="white", linewidths=0.7)
    ax1.set_xlim(extent[0], extent[1])
    ax1.set_ylim(extent[2], extent[3])
    ax1.set_title(title or "lowest detectable log10 M [M_sun]")
    ax1.set_xlabel("x [arcsec]")
    fig.colorbar(im, ax=ax1)
    fig.tight_layout()
    return _save_figure(fig, path, overwrite, dpi)


def save_population_posterior(posterior, path, *, truth=None, overwrite: bool = True,
                              dpi: int = 100):
    """Write a PNG of a :class:`~tfstronglens.inference.population.PopulationPosterior`:
    each parameter's marginal with its 68% and 95% intervals and, for two or more
    parameters, the joint posterior of the first two with its 68/95% HPD contours
    (``truth``: optional ``[D]`` values to mark). Written atomically; returns the path."""
    path = check_output_path(path, overwrite)
    names = list(posterior.param_names)
    d = len(names)
    ncol = d + (1 if d >= 2 else 0)
    fig = _new_figure((3.2 * ncol, 3.0), dpi)
    summ = posterior.summary()
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, ncol, j + 1)
        axis, dens = posterior.marginal(name)
        ax.plot(axis, dens, "k-", lw=1.2)
        s = summ[name]
        for lo, hi, alpha in ((s["p2.5"], s["p97.5"], 0.15), (s["p16"], s["p84"], 0.3)):
            sel = (axis >= lo) & (axis <= hi)
            ax.fill_between(axis[sel], dens[sel], color="C0", alpha=alpha, lw=0)
        if truth is not None:
            ax.axvline(float(np.ravel(truth)[j]), color="C3", lw=1)
        ax.set_xlabel(name)
        ax.set_yticks([])
        ax.set_title(f"{s['p50']:.3g} +{s['p84'] - s['p50']:.2g} -{s['p50'] - s['p16']:.2g}",
                     fontsize=8)
    if d >= 2:
        ax = fig.add_subplot(1, ncol, ncol)
        p = posterior.probabilities
        p2 = p.sum(axis=tuple(range(2, d))) if d > 2 else p
        flat = np.sort(p2.ravel())[::-1]
        cum = np.cumsum(flat)
        levels = sorted({float(flat[min(np.searchsorted(cum, c), len(flat) - 1)])
                         for c in (0.95, 0.68)})
        x, y = posterior.axes[0], posterior.axes[1]
        ax.imshow(p2.T, origin="lower", aspect="auto", cmap="Blues",
                  extent=(x[0], x[-1], y[0], y[-1]))
        if len(levels) == 2 and levels[0] < levels[1]:
            ax.contour(x, y, p2.T, levels=levels, colors="k", linewidths=0.8)
        if truth is not None:
            t = np.ravel(truth)
            ax.plot(t[0], t[1], "+", color="C3", ms=10)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    fig.suptitle(f"{posterior.num_lenses} lenses", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path, overwrite, dpi)


def _few_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(3, prune="both")


def plot_corner(samples, names, truths=None, fig=None, bins: int = 30):
    """A corner plot: 1D histograms on the diagonal, 2D histograms below.

    Args:
      samples: ``[num_draws, K]`` array.
      names: ``K`` labels.
      truths: optional ``K`` values (``None`` entries skipped) drawn as lines.
      fig: matplotlib ``Figure`` to draw on (default: a new pyplot figure).
      bins: histogram bins per axis.

    Returns:
      The figure.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ValueError(f"samples must have shape [num_draws >= 2, K], got {s.shape}")
    k = s.shape[1]
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"names has {len(names)} entries but samples have K={k} columns")
    if truths is not None and len(truths) != k:
        raise ValueError(f"truths has {len(truths)} entries but samples have K={k} columns")
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1.6 * k + 1, 1.6 * k + 1))
    ranges = []
    for j in range(k):
        lo, hi = np.percentile(s[:, j], [0.5, 99.5])
        if not hi > lo:
            lo, hi = lo - 0.5 * (abs(lo) + 1e-12), hi + 0.5 * (abs(hi) + 1e-12)
        ranges.append((lo, hi))
    for i in range(k):
        for j in range(i + 1):
            ax = fig.add_subplot(k, k, i * k + j + 1)
            if i == j:
                ax.hist(s[:, j], bins=bins, range=ranges[j], histtype="step", color="k")
                ax.set_yticks([])
            else:
                ax.hist2d(s[:, j], s[:, i], bins=bins, range=[ranges[j], ranges[i]],
                          cmap="Greys")
                if truths is not None and truths[i] is not None:
                    ax.axhline(truths[i], color="tab:red", lw=0.8)
            if truths is not None and truths[j] is not None:
                ax.axvline(truths[j], color="tab:red", lw=0.8)
            # at most 3 ticks per axis: readable at this size, and tick artists are most
            # of the drawing time of a corner plot
            ax.xaxis.set_major_locator(_few_ticks())
            if i != j:
                ax.yaxis.set_major_locator(_few_ticks())
            ax.tick_params(labelsize=5)
            if i == k - 1:
                ax.set_xlabel(names[j], fontsize=6)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=6)
            elif i != j:
                ax.set_yticklabels([])
    return fig


def save_corner(path, samples, names, truths=None, *, overwrite: bool = False,
                dpi: int = 100, bins: int = 30):
    """:func:`plot_corner` written to a PNG, atomically; returns the path."""
    path = check_output_path(path, overwrite)
    k = len(names)
    size = 1.6 * k + 1
    fig = _new_figure((size, size), dpi)
    plot_corner(samples, names, truths=truths, fig=fig, bins=bins)
    # fixed margins (0.8" for the labels) instead of tight_layout, which measures every
    # label of the k (k + 1) / 2 panels (the larger part of the time for k = 14)
    margin = 0.8 / size
    fig.subplots_adjust(left=margin, bottom=margin, right=0.99, top=0.99, wspace=0.08,
                        hspace=0.08)
    return _save_figure(fig, path, overwrite, dpi)
