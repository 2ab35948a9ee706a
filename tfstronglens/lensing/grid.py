"""Pixel grids: where rays are shot and how sub-pixels are binned."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from .._validation import resolve_dtype

__all__ = ["PixelGrid"]


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
