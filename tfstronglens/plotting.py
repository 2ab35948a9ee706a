"""Quick-look plots of lens images with astronomical defaults.

Images are shown with ``origin="lower"`` (row 0 at the bottom, so ``y`` grows upwards as
in :class:`~tfstronglens.PixelGrid`), in arcsec when a grid (or an extent) is given, with a
colorbar. :func:`save_png` draws on its own Agg canvas, so it never needs a display or
touches pyplot's global state; :func:`plot_image` without ``ax`` uses pyplot (so that it
shows up in notebooks), which falls back to the Agg backend on a machine without display.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .io._atomic import atomic_output, check_output_path
from .lensing.grid import PixelGrid

__all__ = ["plot_image", "save_png", "save_fit_panels", "plot_corner", "save_corner",
           "parameter_labels", "density_levels", "SIGMA_LEVELS_2D",
           "save_population_posterior", "save_sensitivity_map"]


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


# ------------------------------------------------------------------------- corner plots
#: Probability mass inside the "1 sigma" and "2 sigma" contours of a corner plot's 2D
#: panels: for a 2D Gaussian the region within Mahalanobis distance ``r`` holds
#: ``1 - exp(-r^2 / 2)``, i.e. 39.3% (r = 1) and 86.5% (r = 2), *not* the 68% / 95% of a
#: 1D interval (those would be r = 1.52 and 2.45). This is the ``corner`` package's
#: convention.
SIGMA_LEVELS_2D = (1.0 - math.exp(-0.5), 1.0 - math.exp(-2.0))

# symbols (mathtext) and units of the lenstronomy parameter names, for short labels
_SYMBOLS = {
    "theta_E": (r"$\theta_{\rm E}$", "arcsec"), "e1": ("$e_1$", None), "e2": ("$e_2$", None),
    "center_x": ("$x$", "arcsec"), "center_y": ("$y$", "arcsec"),
    "gamma1": (r"$\gamma_1$", None), "gamma2": (r"$\gamma_2$", None),
    "gamma": (r"$\gamma$", None), "amp": ("amp", None),
    "R_sersic": (r"$R_{\rm S}$", "arcsec"), "n_sersic": (r"$n_{\rm S}$", None),
    "mass": ("$M$", "msun"), "Rs": ("$R_s$", "arcsec"),
    "alpha_Rs": (r"$\alpha_{R_s}$", "arcsec"), "r_trunc": (r"$r_{\rm t}$", "arcsec"),
    "a_m": ("$a_m$", None), "phi_m": (r"$\phi_m$", "rad"), "r_E": (r"$r_{\rm E}$", "arcsec"),
    "theta_E_sis": (r"$\theta_{\rm E}$", "arcsec"),
}
_UNITS = {"arcsec": '["]', "msun": r"[M$_\odot$]", "rad": "[rad]"}
_TAGS = {"lens": "lens", "source": "src", "lens_light": "light", "subhalo": "sub"}


def parameter_labels(names) -> list:
    r"""Short axis labels for flat parameter names: a symbol, the component where two
    names share the symbol, and the unit, e.g. ``lens.0.theta_E`` -> ``$\theta_{\rm E}$
    ["]``, ``source.0.center_x`` beside ``lens.0.center_x`` -> ``$x$ (src) ["]`` and
    ``$x$ (lens) ["]``, ``lens.1.gamma1`` -> ``$\gamma_1$``, ``subhalo.0.mass`` ->
    ``$M$ (sub0) [M_sun]``. Names it does not know are kept as they are."""
    names = [str(n) for n in names]
    parts = []
    for n in names:
        bits = n.split(".")
        if len(bits) == 3 and bits[2] in _SYMBOLS and bits[0] in _TAGS and bits[1].isdigit():
            kind, i = bits[0], int(bits[1])
            symbol, unit = _SYMBOLS[bits[2]]
            tag = _TAGS[kind] + (str(i) if i or kind == "subhalo" else "")
            parts.append((symbol, tag, unit))
        else:
            parts.append((n, None, None))
    counts = {}
    for symbol, tag, _ in parts:
        counts[symbol] = counts.get(symbol, 0) + (tag is not None)
    labels = []
    for symbol, tag, unit in parts:
        label = symbol
        if tag is not None and (counts[symbol] > 1 or tag.startswith("sub")):
            label += f" ({tag})"
        if unit is not None:
            label += f" {_UNITS[unit]}"
        labels.append(label)
    return labels


def density_levels(hist, fractions, total=None) -> np.ndarray:
    """The density thresholds of a (smoothed) 2D histogram whose regions ``hist >= level``
    hold the given ``fractions`` of the mass (highest-density regions, as ``corner``).

    ``total`` is the mass the fractions refer to (default: ``hist.sum()``; the number of
    draws, when some fall outside the histogram's range). With the cells sorted by
    decreasing value ``h_1 >= h_2 >= ...`` and ``c_k = (h_1 + ... + h_k) / total``, the
    level of ``f`` is interpolated linearly between ``h_{k-1}`` and ``h_k`` where ``c``
    crosses ``f`` (``h_1`` if ``f <= c_1``). Returns the levels in the order of
    ``fractions``; a fraction above the histogram's share of ``total`` gives its smallest
    positive value."""
    h = np.sort(np.asarray(hist, np.float64).ravel())[::-1]
    cum = np.cumsum(h) / (h.sum() if total is None else float(total))
    out = []
    for f in fractions:
        if not 0 < f < 1:
            raise ValueError(f"fractions must lie in (0, 1), got {f!r}")
        k = int(np.searchsorted(cum, f))
        if k >= len(h):
            level = h[h > 0][-1]
        elif k == 0:
            level = h[0]
        else:
            w = (f - cum[k - 1]) / (cum[k] - cum[k - 1])
            level = h[k - 1] + w * (h[k] - h[k - 1])
        out.append(level if level > 0 else h[h > 0][-1])
    return np.asarray(out)


def _interval_text(v) -> str:
    """``median +hi -lo`` of draws ``v`` (16/50/84 percentiles), to two digits of the
    error."""
    lo, mid, hi = np.percentile(v, [16, 50, 84])
    err = min(hi - mid, mid - lo)
    if not err > 0:
        return f"{mid:.4g}"
    digits = max(0, 1 - int(math.floor(math.log10(err))))
    if abs(mid) >= 1e4 or digits > 6:
        return f"{mid:.3g} +{hi - mid:.2g} -{mid - lo:.2g}"
    return f"{mid:.{digits}f} +{hi - mid:.{digits}f} -{mid - lo:.{digits}f}"


def _corner_sizes(fig, k):
    """Font sizes (points) of labels, titles and ticks for ``k x k`` panels on ``fig``:
    proportional to the panel size (9% of its side), 7 to 14 pt, so that a plot of 15
    parameters in :func:`save_corner`'s size is as readable as one of 3."""
    panel_pt = 72.0 * min(fig.get_size_inches()) / k
    label = float(np.clip(0.09 * panel_pt, 7.0, 14.0))
    return label, 0.85 * label, 0.75 * label


def _own_corner(fig, s, labels, truths, ranges, bins, levels, sizes, truth_color):
    """The package's own corner plot (without the ``corner`` package)."""
    from matplotlib import colormaps
    from scipy.ndimage import gaussian_filter

    blues = colormaps["Blues"]
    k = s.shape[1]
    label_size, title_size, tick_size = sizes
    for i in range(k):
        for j in range(i + 1):
            ax = fig.add_subplot(k, k, i * k + j + 1)
            if i == j:
                ax.hist(s[:, j], bins=bins, range=ranges[j], histtype="step", color="k",
                        density=True)
                for q, style in zip(np.percentile(s[:, j], [16, 50, 84]), ("--", "-", "--")):
                    ax.axvline(q, color="k", ls=style, lw=0.8)
                ax.set_yticks([])
                ax.set_title(_interval_text(s[:, j]), fontsize=title_size)
            else:
                hist, xe, ye = np.histogram2d(s[:, j], s[:, i], bins=bins,
                                              range=[ranges[j], ranges[i]])
                hist = gaussian_filter(hist, 1.0)  # (reflecting edges: no mass lost)
                lev = density_levels(hist, levels, total=len(s))
                xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                order = np.sort(np.unique(lev))
                if len(order) == len(levels) and hist.max() > order[-1]:
                    ax.contourf(xc, yc, hist.T, levels=[*order, hist.max() * 1.0001],
                                colors=[blues(v) for v in np.linspace(0.35, 0.75, len(order))])
                    ax.contour(xc, yc, hist.T, levels=order, colors="k", linewidths=0.8)
                else:  # too few distinct values (e.g. a constant column): the draws
                    ax.plot(s[:, j], s[:, i], ",", color="k", alpha=0.3)
                ax.set_xlim(ranges[j])
                ax.set_ylim(ranges[i])
                if truths[i] is not None:
                    ax.axhline(truths[i], color=truth_color, lw=1.0)
                if truths[i] is not None and truths[j] is not None:
                    ax.plot(truths[j], truths[i], "s", color=truth_color, ms=3)
            if truths[j] is not None:
                ax.axvline(truths[j], color=truth_color, lw=1.0)
            # at most 3 ticks per axis: readable, and tick artists are most of the
            # drawing time of a corner plot
            ax.xaxis.set_major_locator(_few_ticks())
            if i != j:
                ax.yaxis.set_major_locator(_few_ticks())
            ax.tick_params(labelsize=tick_size)
            if i == k - 1:
                ax.set_xlabel(labels[j], fontsize=label_size)
                for t in ax.get_xticklabels():
                    t.set_rotation(45)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i], fontsize=label_size)
                for t in ax.get_yticklabels():
                    t.set_rotation(45)
            elif i != j:
                ax.set_yticklabels([])


def _corner_package(fig, s, labels, truths, ranges, bins, levels, sizes, truth_color):
    """The corner plot of the ``corner`` package (Foreman-Mackey 2016), same settings."""
    import corner

    label_size, title_size, tick_size = sizes
    corner.corner(s, bins=bins, range=list(ranges), labels=labels, truths=truths,
                  truth_color=truth_color, levels=levels, smooth=1.0, color="#3182bd",
                  quantiles=[0.16, 0.5, 0.84], show_titles=True, title_fmt=".3g",
                  title_kwargs={"fontsize": title_size},
                  label_kwargs={"fontsize": label_size}, max_n_ticks=3, fig=fig,
                  plot_datapoints=False, plot_density=False, fill_contours=True,
                  contour_kwargs={"linewidths": 0.8})
    for ax in fig.axes:
        ax.tick_params(labelsize=tick_size)


def plot_corner(samples, names, truths=None, fig=None, bins: int = 30, *,
                levels=SIGMA_LEVELS_2D, backend: str = "own", labels=None,
                truth_color: str = "tab:red"):
    """A corner plot: 1D marginals on the diagonal, 2D credible regions below.

    * 2D panels: the highest-density regions holding ``levels`` of the draws (default
      :data:`SIGMA_LEVELS_2D`: 39.3% and 86.5%, the "1 and 2 sigma" regions of a 2D
      Gaussian), filled and outlined, from a histogram smoothed by one bin;
    * diagonal: the marginal histogram with dashed lines at the 16th and 84th and a
      solid line at the 50th percentile, titled ``median +(p84 - p50) -(p50 - p16)``;
    * ``truths``: lines (and a square where two cross) in ``truth_color``;
    * labels: :func:`parameter_labels` (short symbols with units) unless ``labels`` are
      given; their font size scales with the panel size (:func:`save_corner`'s figure
      grows with the number of parameters, so 15 stay as readable as 3).

    Args:
      samples: ``[num_draws, K]`` array; draws with a NaN or inf are left out.
      names: ``K`` parameter names.
      truths: optional ``K`` values (``None`` entries skipped).
      fig: matplotlib ``Figure`` without axes to draw on (default: a new pyplot figure).
      bins: histogram bins per axis.
      levels: the 2D regions' probability masses, each in ``(0, 1)``.
      backend: ``"own"`` (this module's, the default: the same regions, and faster to
        draw than the ``corner`` package's), ``"corner"`` (the ``corner`` package, when
        installed), or ``"auto"`` (``corner`` when it is installed, else ``"own"``).
      labels: ``K`` axis labels instead of the short ones.

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
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels has {len(labels)} entries but samples have K={k} columns")
    finite = np.all(np.isfinite(s), axis=1)
    if finite.sum() < 2:
        raise ValueError(f"samples need at least 2 finite draws (rows without NaN or inf), "
                         f"got {int(finite.sum())} of {len(s)}")
    s = s[finite]
    try:
        levels = tuple(float(v) for v in levels)
    except (TypeError, ValueError):
        levels = ()
    if not levels or not all(0 < v < 1 for v in levels):
        raise ValueError(f"levels must be probability masses in (0, 1), got {levels!r}")
    if backend not in ("auto", "corner", "own"):
        raise ValueError(f"backend must be 'auto', 'corner' or 'own', got {backend!r}")
    if backend == "auto":
        import importlib.util

        backend = "corner" if importlib.util.find_spec("corner") is not None else "own"
    truths = [None] * k if truths is None else [None if t is None else float(t)
                                                 for t in truths]
    labels = parameter_labels(names) if labels is None else [str(v) for v in labels]
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1.6 * k + 1, 1.6 * k + 1))
    ranges = []
    for j in range(k):
        lo, hi = np.percentile(s[:, j], [0.5, 99.5])
        t = truths[j]
        if t is not None and np.isfinite(t):  # keep the truth in view
            pad = 0.05 * (hi - lo)
            lo, hi = min(lo, t - pad), max(hi, t + pad)
        if not hi > lo:
            lo, hi = lo - 0.5 * (abs(lo) + 1e-12), hi + 0.5 * (abs(hi) + 1e-12)
        ranges.append((lo, hi))
    draw = _corner_package if backend == "corner" else _own_corner
    draw(fig, s, labels, truths, ranges, bins, levels, _corner_sizes(fig, k), truth_color)
    return fig


def save_corner(path, samples, names, truths=None, *, overwrite: bool = False,
                dpi: int = 100, bins: int = 30, **plot_kwargs):
    """:func:`plot_corner` written to a PNG of ``(1.6 K + 1.2)`` inches a side,
    atomically (a temporary file, then renamed); returns the path. ``plot_kwargs``:
    ``levels``, ``backend``, ``labels``, ``truth_color``."""
    path = check_output_path(path, overwrite)
    k = len(names)
    size = 1.6 * k + 1.2
    fig = _new_figure((size, size), dpi)
    plot_corner(samples, names, truths=truths, fig=fig, bins=bins, **plot_kwargs)
    # fixed margins (1" for the labels and tick labels, 0.4" above the top title)
    # instead of tight_layout, which measures every label of the k (k + 1) / 2 panels
    fig.subplots_adjust(left=1.0 / size, bottom=1.0 / size, right=1 - 0.15 / size,
                        top=1 - 0.4 / size, wspace=0.08, hspace=0.08)
    return _save_figure(fig, path, overwrite, dpi)
