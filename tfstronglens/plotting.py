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

__all__ = ["plot_image", "save_png"]


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
