"""Pixel grids: where rays are shot and how sub-pixels are binned."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from .._validation import resolve_dtype

__all__ = ["PixelGrid"]


def _cpu_only() -> bool:
    """True when TensorFlow sees no GPU or TPU (decides the binning method)."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


class PixelGrid:
    r"""A square image grid with optional supersampling.

    Pixel ``(row i, column j)`` of an ``N x N`` image has its centre at

        x_j = (j - (N - 1) / 2) * pixel_scale,   y_i = (i - (N - 1) / 2) * pixel_scale

    (arcsec; x along columns, y along rows, centres symmetric about 0). With
    ``supersample = s`` each pixel is split into ``s x s`` sub-pixels whose centres sit at
    ``(k + 1/2) / s - 1/2`` pixel offsets; the pixel value is the mean over its sub-pixels,
    i.e. a midpoint-rule integral of the surface brightness over the pixel area.

    Args:
      num_pix: pixels per side (int >= 1).
      pixel_scale: pixel side in arcsec (> 0).
      supersample: sub-pixels per side per pixel (int >= 1).
      dtype: float32 (default) or float64.
    """

    def __init__(self, num_pix: int, pixel_scale: float, supersample: int = 1, dtype=tf.float32):
        if isinstance(num_pix, bool) or not isinstance(num_pix, numbers.Integral) or num_pix < 1:
            raise ValueError(f"num_pix must be a positive integer, got {num_pix!r}")
        if isinstance(supersample, bool) or not isinstance(supersample, numbers.Integral) or supersample < 1:
            raise ValueError(f"supersample must be a positive integer, got {supersample!r}")
        if not isinstance(pixel_scale, numbers.Real) or not np.isfinite(pixel_scale) or pixel_scale <= 0:
            raise ValueError(f"pixel_scale must be a positive number (arcsec), got {pixel_scale!r}")
        self.num_pix = int(num_pix)
        self.pixel_scale = float(pixel_scale)
        self.supersample = int(supersample)
        self.dtype = resolve_dtype(dtype)

    # ------------------------------------------------------------------ numpy
    @property
    def pixel_area(self) -> float:
        """Area of one (native) pixel in arcsec^2."""
        return self.pixel_scale**2

    @property
    def extent(self) -> tuple:
        """``(xmin, xmax, ymin, ymax)`` of the pixel edges in arcsec (for ``imshow``)."""
        half = 0.5 * self.num_pix * self.pixel_scale
        return (-half, half, -half, half)

    def coordinates_1d(self, supersampled: bool = True) -> np.ndarray:
        """Centres along one axis (of sub-pixels if ``supersampled``), float64 numpy."""
        n, s = self.num_pix, (self.supersample if supersampled else 1)
        centres = (np.arange(n) - 0.5 * (n - 1)) * self.pixel_scale
        offsets = ((np.arange(s) + 0.5) / s - 0.5) * self.pixel_scale
        return (centres[:, None] + offsets[None, :]).reshape(-1)

    def coordinates(self, supersampled: bool = True):
        """``(x, y)`` tensors of shape ``[N s, N s]`` (``[N, N]`` if not supersampled)."""
        c = self.coordinates_1d(supersampled)
        xx, yy = np.meshgrid(c, c)
        return tf.constant(xx, self.dtype), tf.constant(yy, self.dtype)

    def ray_coordinates(self):
        """``(x, y)`` of all sub-pixels in the "sub-pixel-major" layout ``[s*s*N, N]``.

        Row ``(a*s + b)*N + i``, column ``j`` holds sub-pixel ``(a, b)`` (row, column offset)
        of pixel ``(i, j)``. Binning this layout (:meth:`bin_rays`) is a sum of ``s^2``
        contiguous slabs, which XLA:CPU computes at full vector speed even when fused with
        an expensive surface-brightness producer; binning the natural ``[N s, N s]`` image
        (:meth:`bin`) made rendering ~5x slower. Used by the Simulator.
        """
        n, s = self.num_pix, self.supersample
        centres = (np.arange(n) - 0.5 * (n - 1)) * self.pixel_scale
        offsets = ((np.arange(s) + 0.5) / s - 0.5) * self.pixel_scale
        x = centres[None, None, None, :] + offsets[None, :, None, None] + 0.0 * offsets[:, None, None, None]
        y = centres[None, None, :, None] + offsets[:, None, None, None] + 0.0 * offsets[None, :, None, None]
        x = np.broadcast_to(x, (s, s, n, n)).reshape(s * s * n, n)
        y = np.broadcast_to(y, (s, s, n, n)).reshape(s * s * n, n)
        return tf.constant(x, self.dtype), tf.constant(y, self.dtype)

    def bin_rays(self, values, method: str = "auto"):
        """Average ``[..., s*s*N, N]`` values in the :meth:`ray_coordinates` layout to
        ``[..., N, N]`` pixels.

        ``method="matmul"`` sums the ``s^2`` slabs with a (tiny) matrix product, which XLA
        never fuses with its producer: the surface brightness is then computed once, in a
        vectorized loop. Fused into a reduction (``"reduce"``), or into the PSF convolution
        that follows, XLA:CPU evaluated the ray tracing up to 5x slower (measured in
        ``benchmarks/simulate.py``). Matrix products run in reduced precision on GPUs
        (TF32) and TPUs (bfloat16 passes), so ``"auto"`` picks ``"matmul"`` only when no
        GPU or TPU is visible, else ``"reduce"``. The factor ``1/s^2`` is exact in binary.
        """
        if method not in ("auto", "matmul", "reduce"):
            raise ValueError(f"method must be 'auto', 'matmul' or 'reduce', got {method!r}")
        if method == "auto":
            method = "matmul" if _cpu_only() else "reduce"
        s, n = self.supersample, self.num_pix
        lead = tf.shape(values)[:-2]
        if method == "reduce":
            if s == 1:
                return values
            slabs = tf.reshape(values, tf.concat([lead, [s * s, n, n]], 0))
            return tf.reduce_mean(slabs, axis=-3)
        slabs = tf.reshape(values, [-1, s * s, n * n])
        # two identical rows of weights: with one row and a single image XLA rewrites the
        # (vector x matrix) product into a fused loop that evaluates the producer
        # unvectorized (measured: the compute of a batch-1 rendering 4.5x slower)
        weights = tf.fill([1, 2, s * s], tf.constant(1.0 / (s * s), values.dtype))
        weights = tf.broadcast_to(weights, tf.stack([tf.shape(slabs)[0], 2, s * s]))
        out = tf.matmul(weights, slabs)[:, 0]
        return tf.reshape(out, tf.concat([lead, [n, n]], 0))

    # --------------------------------------------------------------- binning
    def bin(self, image):
        """Average ``[..., N s, N s]`` sub-pixel values to ``[..., N, N]`` pixels."""
        s = self.supersample
        if s == 1:
            return image
        n = self.num_pix
        shape = tf.shape(image)
        lead = shape[:-2]
        x = tf.reshape(image, tf.concat([lead, [n, s, n, s]], 0))
        return tf.reduce_mean(x, axis=[-3, -1])

    def get_config(self) -> dict:
        return {
            "num_pix": self.num_pix,
            "pixel_scale": self.pixel_scale,
            "supersample": self.supersample,
            "dtype": self.dtype.name,
        }

    def __repr__(self):
        return (
            f"PixelGrid(num_pix={self.num_pix}, pixel_scale={self.pixel_scale}, "
            f"supersample={self.supersample})"
        )
