"""Shared feature spec and image statistics of the galaxy datasets.

Both ``synthetic_galaxies`` and ``cosmos_galaxies`` store every example as (``S`` the
stamp size, ``P`` the PSF size of the config)::

    "image":      float32 [S, S]  the noisy galaxy stamp divided by flux_scale
    "noise_std":  float32 scalar  per-pixel Gaussian noise std of "image" (same units)
    "psf":        float32 [P, P]  the PSF at the stamp's pixel scale, P odd, sum 1
    "snr":        float32 scalar  matched-filter S/N (see below)
    "flux_scale": float32 scalar  the factor the stamp was divided by (native flux units)
    "id":         int64           catalog IDENT (synthetic: the running index)
    "mag":        float32         magnitude (NaN if unknown)

#### Normalisation and centring

``flux_scale`` makes the galaxy peak at about 1: it is the maximum of the noise-free image
(synthetic) or of the 3x3-box-smoothed image (real data, :func:`box_smooth3`). The galaxy's
light-weighted centroid (:func:`light_centroid`) is at the stamp centre, pixel ``((S-1)/2,
(S-1)/2)`` (the :class:`tfstronglens.lensing.PixelGrid` convention), within a pixel.

The S/N is ``sqrt(sum(I^2)) / noise_std`` for the noise-free synthetic image ``I`` and
``sqrt(max(sum(image^2) / noise_std^2 - S^2, 0))`` for real stamps
(:func:`estimated_snr`: the expected ``sum(noise^2)`` removed).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["FEATURE_NAMES", "galaxy_features", "box_smooth3", "light_centroid",
           "border_noise_std", "estimated_snr", "MAD_TO_STD"]

FEATURE_NAMES = ("image", "noise_std", "psf", "snr", "flux_scale", "id", "mag")
#: ``sigma = MAD_TO_STD * median(|x - median(x)|)`` for Gaussian data.
MAD_TO_STD = 1.482602218505602


def galaxy_features(stamp_size: int, psf_size: int):
    """The ``tfds.features.FeaturesDict`` of the galaxy datasets (see the module docs)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(stamp_size, stamp_size), dtype=np.float32),
        "noise_std": tfds.features.Scalar(dtype=np.float32),
        "psf": tfds.features.Tensor(shape=(psf_size, psf_size), dtype=np.float32),
        "snr": tfds.features.Scalar(dtype=np.float32),
        "flux_scale": tfds.features.Scalar(dtype=np.float32),
        "id": tfds.features.Scalar(dtype=np.int64),
        "mag": tfds.features.Scalar(dtype=np.float32),
    })


def box_smooth3(image) -> np.ndarray:
    """3x3 box average of ``[..., H, W]`` images (edges: nearest-pixel extension), float64."""
    a = np.asarray(image, np.float64)
    size = (1,) * (a.ndim - 2) + (3, 3)
    return ndimage.uniform_filter(a, size=size, mode="nearest")


def border_noise_std(image, width: int = 4) -> float:
    """Robust per-pixel noise std from the ``width``-pixel border of a 2D stamp:
    ``1.4826 * MAD`` of the border pixels (insensitive to a few galaxy pixels there)."""
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {a.shape}")
    w = int(max(1, min(width, min(a.shape) // 4 or 1)))
    border = np.concatenate([a[:w].ravel(), a[-w:].ravel(), a[w:-w, :w].ravel(), a[w:-w, -w:].ravel()])
    border = border[np.isfinite(border)]
    if border.size == 0:
        return float("nan")
    return float(MAD_TO_STD * np.median(np.abs(border - np.median(border))))


def estimated_snr(image, noise_std) -> np.ndarray:
    """Matched-filter S/N of a noisy stamp, ``sqrt(max(sum(image^2)/noise_std^2 - H W, 0))``
    (``[..., H, W]`` images, ``noise_std`` broadcasting against the leading dims)."""
    a = np.asarray(image, np.float64)
    s = np.asarray(noise_std, np.float64)
    npix = a.shape[-1] * a.shape[-2]
    return np.sqrt(np.maximum(np.sum(a * a, axis=(-2, -1)) / (s * s) - npix, 0.0))


def light_centroid(image, noise_std=None, nsigma: float = 2.0):
    """Light-weighted centroid ``(y, x)`` (pixel indices) of a 2D galaxy stamp.

    The stamp is smoothed with a 3x3 box (:func:`box_smooth3`). Without ``noise_std`` the
    centroid is that of the smoothed positive part. With it, only the connected region of
    pixels above ``nsigma * noise_std / 3`` (``noise_std / 3`` is the std of box-smoothed
    white noise) that holds the galaxy is used: the region containing the stamp's central
    pixel, else the brightest region within a quarter stamp of the centre, else the
    brightest region, else (nothing above threshold) the whole positive part. This keeps
    the noise and residual neighbours from pulling the centroid.
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {a.shape}")
    sm = box_smooth3(a)
    w = np.where(np.isfinite(sm), np.maximum(sm, 0.0), 0.0)
    if noise_std is not None and np.isfinite(noise_std) and noise_std > 0:
        labels, nlab = ndimage.label(sm > nsigma * noise_std / 3.0)
        if nlab > 0:
            h, wd = a.shape
            cy, cx = (h - 1) / 2.0, (wd - 1) / 2.0
            pick = labels[int(round(cy)), int(round(cx))]
            if pick == 0:
                idx = np.arange(1, nlab + 1)
                flux = ndimage.sum_labels(w, labels, idx)
                yy, xx = np.indices(a.shape)
                dist = ndimage.minimum(np.hypot(yy - cy, xx - cx), labels, idx)
                near = dist <= max(h, wd) / 4.0
                pick = idx[near][np.argmax(flux[near])] if near.any() else idx[np.argmax(flux)]
            w = np.where(labels == pick, w, 0.0)
    tot = w.sum()
    if not tot > 0:
        return ((a.shape[0] - 1) / 2.0, (a.shape[1] - 1) / 2.0)
    y = (w.sum(axis=1) @ np.arange(a.shape[0])) / tot
    x = (w.sum(axis=0) @ np.arange(a.shape[1])) / tot
    return (float(y), float(x))
