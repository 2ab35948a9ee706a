"""Point-spread functions and image convolution."""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf
from scipy.special import erf, erfc

from .._validation import check_finite

__all__ = ["PSF", "GaussianPSF", "PixelPSF", "convolve"]

# Kernels up to this many pixels per side use direct convolution; larger ones use FFTs.
# Measured on a 2-core CPU (benchmarks/simulate.py): direct wins clearly for 7x7 and 11x11.
DIRECT_MAX_SIZE = 15


def _check_kernel(kernel, name="kernel"):
    arr = np.asarray(kernel, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square 2D array, got shape {arr.shape}")
    if arr.shape[0] % 2 != 1:
        raise ValueError(f"{name} must have an odd number of pixels per side, got {arr.shape}")
    check_finite(arr, name)
    if arr.sum() <= 0:
        raise ValueError(f"{name} must have a positive sum, got {arr.sum()!r}")
    return arr


class PSF:
    """Base class: a PSF produces a normalized, odd-sized pixel kernel."""

    def kernel(self, pixel_scale: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def convolve(self, image, pixel_scale: float, method: str = "auto"):
        """Convolve ``[..., H, W]`` images with this PSF sampled at ``pixel_scale``."""
        return convolve(image, self.kernel(pixel_scale), method=method)


class GaussianPSF(PSF):
    r"""Circular Gaussian PSF of full width at half maximum ``fwhm`` (arcsec).

    The kernel is the Gaussian integrated over each pixel (differences of error
    functions, ``sigma = fwhm / (2 sqrt(2 ln 2))``), on ``size x size`` pixels (default: the
    smallest odd size covering ``truncation`` sigma on each side), normalized to sum 1.
    """

    def __init__(self, fwhm: float, truncation: float = 4.0, size: int | None = None):
        if not isinstance(fwhm, numbers.Real) or not math.isfinite(fwhm) or fwhm <= 0:
            raise ValueError(f"fwhm must be a positive number (arcsec), got {fwhm!r}")
        if not isinstance(truncation, numbers.Real) or not truncation > 0:
            raise ValueError(f"truncation must be a positive number of sigmas, got {truncation!r}")
        if size is not None and (not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0):
            raise ValueError(f"size must be a positive odd integer, got {size!r}")
        self.fwhm = float(fwhm)
        self.truncation = float(truncation)
        self.size = None if size is None else int(size)

    @property
    def sigma(self) -> float:
        return self.fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def kernel(self, pixel_scale: float) -> np.ndarray:
        if not isinstance(pixel_scale, numbers.Real) or not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be a positive number, got {pixel_scale!r}")
        size = self.size
        if size is None:
            half = int(math.ceil(self.truncation * self.sigma / pixel_scale))
            size = 2 * half + 1
        # pixel masses from |centre| with erfc (differences of a CDF near 1 lose the
        # relative precision of the right tail): exactly symmetric, accurate to rounding
        scale = math.sqrt(2.0) * self.sigma
        centres = np.abs(np.arange(size) - 0.5 * (size - 1)) * pixel_scale
        lo, hi = centres - 0.5 * pixel_scale, centres + 0.5 * pixel_scale
        k1 = np.where(lo < 0, erf(hi / scale),
                      0.5 * (erfc(np.maximum(lo, 0.0) / scale) - erfc(hi / scale)))
        k = np.outer(k1, k1)
        return k / k.sum()

    def get_config(self):
        return {"type": "gaussian", "fwhm": self.fwhm, "truncation": self.truncation, "size": self.size}

    def __repr__(self):
        return f"GaussianPSF(fwhm={self.fwhm}, truncation={self.truncation}, size={self.size})"


class PixelPSF(PSF):
    """A PSF given as a pixel kernel at the image's pixel scale (odd size, sum > 0).

    The kernel is normalized to sum 1 unless ``normalize=False``.
    """

    def __init__(self, kernel, normalize: bool = True):
        arr = _check_kernel(kernel)
        self._kernel = arr / arr.sum() if normalize else arr
        self.normalize = bool(normalize)

    def kernel(self, pixel_scale: float | None = None) -> np.ndarray:
        return self._kernel

    def get_config(self):
        return {"type": "pixel", "kernel": self._kernel.tolist(), "normalize": False}

    def __repr__(self):
        return f"PixelPSF(kernel of shape {self._kernel.shape})"


def psf_from_config(config):
    """Rebuild a PSF from ``PSF.get_config()`` (or ``None``)."""
    if config is None:
        return None
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind == "gaussian":
        return GaussianPSF(**cfg)
    if kind == "pixel":
        return PixelPSF(**cfg)
    raise ValueError(f"psf config type must be 'gaussian' or 'pixel', got {kind!r}")


def convolve(image, kernel, method: str = "auto"):
    r"""Convolve images ``[..., H, W]`` with an odd-sized kernel ``[k, k]``.

    Output has the input's shape ("same" mode, zero padding outside the image, as
    ``scipy.signal.fftconvolve(..., mode="same")``): ``out[i, j] = sum_{a,b}
    kernel[a, b] image[i - a + c, j - b + c]`` with ``c = (k - 1) / 2``.

    ``method``: ``"direct"`` (``tf.nn.conv2d``), ``"fft"`` (zero-padded real FFTs, no
    wrap-around) or ``"auto"`` (direct for ``k <= DIRECT_MAX_SIZE``).
    """
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    image = tf.convert_to_tensor(image)
    if isinstance(kernel, np.ndarray):
        kernel = tf.constant(kernel, image.dtype)
    kernel = tf.cast(kernel, image.dtype)
    k = kernel.shape[-1]
    if k is None or kernel.shape.rank != 2:
        raise ValueError(f"kernel must be a static 2D tensor, got shape {kernel.shape}")
    if k == 1:
        return image * kernel[0, 0]
    if method == "auto":
        method = "direct" if k <= DIRECT_MAX_SIZE else "fft"
    shape = tf.shape(image)
    h, w = image.shape[-2], image.shape[-1]
    # inside a tf.function traced with relaxed shapes (reduce_retracing) the static
    # height/width can be unknown: use the dynamic ones then
    h = shape[-2] if h is None else h
    w = shape[-1] if w is None else w
    flat = tf.reshape(image, [-1, h, w])
    if method == "direct":
        filt = tf.reverse(kernel, axis=[0, 1])[:, :, None, None]
        out = tf.nn.conv2d(flat[..., None], filt, strides=1, padding="SAME")[..., 0]
    else:
        ph, pw = h + k - 1, w + k - 1
        fi = tf.signal.rfft2d(flat, fft_length=[ph, pw])
        fk = tf.signal.rfft2d(kernel, fft_length=[ph, pw])
        full = tf.signal.irfft2d(fi * fk, fft_length=[ph, pw])
        c = (k - 1) // 2
        out = full[:, c : c + h, c : c + w]
    return tf.reshape(out, shape)
