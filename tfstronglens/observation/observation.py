r"""Observations: pixel scale, exposure, sky, detector noise and PSF of an imaging dataset.

An :class:`Observation` turns a noiseless model image (from
:class:`~tfstronglens.lensing.Simulator`) into a likelihood, noisy images and a
signal-to-noise ratio, in physical units.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import check_finite, check_positive, is_concrete, resolve_dtype
from ..lensing.grid import PixelGrid
from ..lensing.psf import PSF, GaussianPSF, MoffatPSF, psf_from_config
from .instruments import get_instrument

__all__ = ["Observation"]

tfd = tfp.distributions

_OVERRIDES = ("pixel_scale", "exposure_time", "num_exposures", "sky_brightness", "zero_point",
              "read_noise", "background_rms", "psf", "psf_fwhm", "psf_model", "psf_beta")


def _real(value, name: str, *, positive: bool = False, non_negative: bool = False) -> float:
    """A finite Python float, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return value


def _stateless_seed(seed):
    """An int seed -> the stateless seed ``[0, seed]`` (same noise on every call); a
    shape-[2] integer tensor is used as is; ``None`` draws a fresh seed."""
    if seed is None:
        return tfp.random.sanitize_seed(None)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"seed must be an integer in [0, 2**31) or a shape-[2] int tensor, "
                             f"got {seed!r}")
        return tf.constant([0, int(seed)], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.as_list() != [2]:
        raise ValueError(f"seed must be an integer or a shape-[2] integer tensor, got {seed!r}")
    return tf.cast(seed, tf.int32)


class Observation:
    r"""An imaging observation: pixels, exposure, background noise and PSF.

    #### Units

    Images are in **electrons per second per pixel** (e-/s). The
    :class:`~tfstronglens.lensing.Simulator` returns ``surface brightness x pixel area``, so
    light-profile amplitudes (e.g. Sersic ``amp``) must be in e-/s/arcsec^2. With a zero
    point ``ZP`` (the AB magnitude giving 1 e-/s), a magnitude ``m`` is
    ``10^(-0.4 (m - ZP))`` e-/s (:meth:`magnitude_to_counts`, :meth:`counts_to_magnitude`);
    the same formula turns a surface brightness in mag/arcsec^2 into e-/s/arcsec^2.

    #### Mathematical details

    With ``N`` exposures of ``t`` seconds (``T = N t``), the background noise per pixel is
    either given (``background_rms = sigma_bkg``, e-/s) or computed from the sky brightness
    ``mu_sky`` (mag/arcsec^2) and the read noise ``r`` (e- per exposure and pixel), with the
    sky rate per pixel ``s = 10^(-0.4 (mu_sky - ZP)) p^2`` (e-/s, pixel side ``p``):

        sigma_bkg^2 = (N r^2 + T s) / T^2

    (the sky's Poisson noise in its Gaussian approximation plus read noise; the sky is taken
    as subtracted, as in lenstronomy's ``data_util.bkg_noise``). The source's Poisson noise,
    also in the Gaussian approximation, adds ``max(model, 0) / T``:

        sigma^2(model) = sigma_bkg^2 + max(model, 0) / T,
        data ~ Normal(model, sigma(model))  independently in every pixel,

    which :meth:`likelihood` returns as a ``tfp.distributions.Independent`` over the last two
    (pixel) axes: ``obs.likelihood(model).log_prob(data)`` is the log-likelihood (with the
    ``-log sigma`` and ``-log(2 pi)/2`` terms, since ``sigma`` depends on the model), and
    ``.sample(seed=...)`` draws noisy images. :meth:`add_noise` with
    ``exact_poisson=True`` draws the source (and sky) counts from Poisson distributions
    instead, with the same mean and variance.

    #### Signal-to-noise ratio

    :meth:`snr` is the matched-filter ("optimal") S/N of a known image ``I``, the S/N with
    which its amplitude is measured by an inverse-variance-weighted fit:

        S/N = sqrt( sum_{i in mask} I_i^2 / sigma_i^2 ),
        sigma_i^2 = sigma_bkg^2 + max(I_i + L_i, 0) / T,

    where ``L`` is optional extra light that adds noise but is no signal (the lens galaxy,
    when ``I`` is the lensed source alone, which gives the S/N of the arcs). For a constant
    variance this is the S/N of GREAT08 (Bridle et al. 2009, AoAS 3, 6) and of GalSim's
    ``Image.addNoiseSNR`` (Rowe et al. 2015); it needs no threshold because faint pixels
    add little. (Lens-finding forecasts often use instead an aperture S/N, ``sum I /
    sqrt(sum sigma^2)`` over the pixels where the source is above ~1 sigma: Collett 2015,
    ApJ 811, 20; Holloway et al. 2023, MNRAS 525, 2341. That is not implemented here.)

    :meth:`scale_to_snr` returns the factor ``A > 0`` with ``S/N(A I) = target``. Since
    ``sigma`` grows with ``A`` the equation is nonlinear; for ``I, L >= 0``, ``d log(S/N^2) /
    d log A`` lies in ``[1, 2]``, so the root is unique and a safeguarded Newton iteration on
    ``log A`` (bracketed by that slope bound) converges to machine precision.

    Args:
      num_pix: pixels per side of the images (int >= 1).
      pixel_scale: pixel side in arcsec (> 0).
      exposure_time: exposure time of one exposure in seconds (> 0).
      psf: a :class:`~tfstronglens.lensing.GaussianPSF`, ``MoffatPSF``, ``PixelPSF`` or
        ``None`` (no PSF).
      background_rms: background noise per pixel in e-/s (>= 0), including read noise (with
        0, pixels where the model is <= 0 have zero variance and the likelihood is
        degenerate there); or
      sky_brightness: sky surface brightness in AB mag/arcsec^2, with ``zero_point`` and
        optionally ``read_noise``.
      zero_point: AB magnitude that gives 1 e-/s (needed with ``sky_brightness`` and for the
        magnitude conversions).
      read_noise: read noise in e- per exposure and pixel (>= 0; only with
        ``sky_brightness``).
      num_exposures: number of co-added exposures (int >= 1).
      dtype: float32 (default) or float64, for :meth:`grid` and non-tensor inputs.

    #### Example

    >>> obs = Observation.from_instrument("euclid_vis", num_pix=64)
    >>> sim = obs.simulator(lens=["SIE"], source=["SERSIC_ELLIPSE"], supersample=2)
    >>> model = sim(lens=[dict(theta_E=1.2, e1=0.1, e2=0.0)],
    ...             source=[dict(amp=1.0, R_sersic=0.2, n_sersic=1.0, e1=0.0, e2=0.1)])
    >>> model = model * obs.scale_to_snr(model, 50.0)[..., None, None]
    >>> data = obs.add_noise(model, seed=1)
    >>> log_like = obs.likelihood(model).log_prob(data)
    """

    def __init__(self, num_pix: int, pixel_scale: float, exposure_time: float, *,
                 psf: PSF | None = None, background_rms: float | None = None,
                 sky_brightness: float | None = None, zero_point: float | None = None,
                 read_noise: float | None = None, num_exposures: int = 1, dtype=tf.float32):
        if isinstance(num_pix, bool) or not isinstance(num_pix, numbers.Integral) or num_pix < 1:
            raise ValueError(f"num_pix must be a positive integer, got {num_pix!r}")
        if (isinstance(num_exposures, bool) or not isinstance(num_exposures, numbers.Integral)
                or num_exposures < 1):
            raise ValueError(f"num_exposures must be a positive integer, got {num_exposures!r}")
        if psf is not None and not isinstance(psf, PSF):
            raise ValueError(f"psf must be a PSF (GaussianPSF, MoffatPSF, PixelPSF) or None, "
                             f"got {psf!r}")
        self.num_pix = int(num_pix)
        self.pixel_scale = _real(pixel_scale, "pixel_scale", positive=True)
        self.exposure_time = _real(exposure_time, "exposure_time", positive=True)
        self.num_exposures = int(num_exposures)
        self.psf = psf
        self.dtype = resolve_dtype(dtype)
        self.zero_point = None if zero_point is None else _real(zero_point, "zero_point")
        if background_rms is not None:
            if sky_brightness is not None:
                raise ValueError("give either background_rms or sky_brightness (with zero_point "
                                 f"and read_noise), not both: background_rms={background_rms!r}, "
                                 f"sky_brightness={sky_brightness!r}")
            if read_noise is not None:
                raise ValueError(f"read_noise={read_noise!r} would be ignored: background_rms "
                                 "already includes the read noise; give read_noise only with "
                                 "sky_brightness")
            self._background_rms = _real(background_rms, "background_rms", non_negative=True)
            self.sky_brightness = None
            self.read_noise = None
        elif sky_brightness is not None:
            self.sky_brightness = _real(sky_brightness, "sky_brightness")
            if self.zero_point is None:
                raise ValueError("sky_brightness (mag/arcsec^2) needs zero_point (the magnitude "
                                 "giving 1 e-/s) to be converted to e-/s, got zero_point=None")
            self.read_noise = 0.0 if read_noise is None else _real(read_noise, "read_noise",
                                                                   non_negative=True)
            t_tot = self.total_exposure_time
            var = (self.num_exposures * self.read_noise**2
                   + t_tot * self.sky_counts_per_pixel) / t_tot**2
            self._background_rms = math.sqrt(var)
        else:
            raise ValueError("the background noise is not set: give background_rms (e-/s per "
                             "pixel) or sky_brightness (mag/arcsec^2) with zero_point")

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_instrument(cls, name: str, num_pix: int, dtype=tf.float32, **overrides):
        """An observation from a preset of :mod:`tfstronglens.observation.instruments`.

        ``overrides`` replace preset values: ``pixel_scale``, ``exposure_time``,
        ``num_exposures``, ``sky_brightness``, ``zero_point``, ``read_noise``, ``psf_fwhm``,
        ``psf_model`` (``"gaussian"`` or ``"moffat"``), ``psf_beta``, ``psf`` (a PSF instance,
        replacing the preset's) or ``background_rms`` (which replaces the sky and read noise).
        """
        cfg = get_instrument(name)
        unknown = sorted(set(overrides) - set(_OVERRIDES))
        if unknown:
            raise ValueError(f"unknown override(s) {unknown} for instrument {name!r}; allowed: "
                             f"{list(_OVERRIDES)}")
        cfg.update(overrides)
        psf = cfg.pop("psf", None)
        model = cfg.pop("psf_model", "gaussian")
        fwhm = cfg.pop("psf_fwhm")
        beta = cfg.pop("psf_beta", None)
        cfg.pop("description", None)
        if psf is None:
            if model == "gaussian":
                if beta is not None and "psf_beta" in overrides:
                    raise ValueError(f"psf_beta={beta!r} applies to psf_model='moffat' only")
                psf = GaussianPSF(fwhm)
            elif model == "moffat":
                psf = MoffatPSF(fwhm) if beta is None else MoffatPSF(fwhm, beta=beta)
            else:
                raise ValueError(f"psf_model must be 'gaussian' or 'moffat', got {model!r}")
        if cfg.get("background_rms") is not None:
            cfg.pop("sky_brightness", None)
            cfg.pop("read_noise", None)
        return cls(num_pix, psf=psf, dtype=dtype, **cfg)

    # -------------------------------------------------------------- properties
    @property
    def total_exposure_time(self) -> float:
        """``num_exposures * exposure_time`` in seconds."""
        return self.num_exposures * self.exposure_time

    @property
    def background_rms(self) -> float:
        """Background noise per pixel in e-/s (sky and read noise, or as given)."""
        return self._background_rms

    @property
    def sky_counts_per_pixel(self) -> float | None:
        """Sky rate in e-/s per pixel (``None`` when ``background_rms`` was given)."""
        if self.sky_brightness is None:
            return None
        return 10.0 ** (-0.4 * (self.sky_brightness - self.zero_point)) * self.pixel_scale**2

    @property
    def pixel_area(self) -> float:
        return self.pixel_scale**2

    def grid(self, supersample: int = 1) -> PixelGrid:
        """The :class:`PixelGrid` of these images (``supersample`` sub-pixels per side)."""
        return PixelGrid(self.num_pix, self.pixel_scale, supersample=supersample, dtype=self.dtype)

    def simulator(self, lens=(), source=(), lens_light=(), supersample: int = 1,
                  jit_compile: bool = True):
        """A :class:`~tfstronglens.lensing.Simulator` on :meth:`grid` with this PSF."""
        from ..lensing.simulator import Simulator

        return Simulator(self.grid(supersample), lens=lens, source=source, lens_light=lens_light,
                         psf=self.psf, jit_compile=jit_compile)

    # ------------------------------------------------------------ magnitudes
    def _need_zero_point(self):
        if self.zero_point is None:
            raise ValueError("this Observation has no zero_point; give zero_point= to convert "
                             "magnitudes")
        return self.zero_point

    def magnitude_to_counts(self, magnitude):
        """``10^(-0.4 (m - ZP))``: e-/s for a magnitude, e-/s/arcsec^2 for mag/arcsec^2."""
        zp = self._need_zero_point()
        if isinstance(magnitude, (tf.Tensor, tf.Variable)):
            m = tf.convert_to_tensor(magnitude)
            m = m if m.dtype.is_floating else tf.cast(m, self.dtype)
            return tf.pow(tf.constant(10.0, m.dtype), -0.4 * (m - zp))
        check_finite(magnitude, "magnitude")
        return 10.0 ** (-0.4 * (np.asarray(magnitude, dtype=np.float64) - zp))

    def counts_to_magnitude(self, counts):
        """``ZP - 2.5 log10(counts)`` for counts in e-/s (> 0)."""
        zp = self._need_zero_point()
        if isinstance(counts, (tf.Tensor, tf.Variable)):
            check_positive(counts, "counts")
            c = tf.convert_to_tensor(counts)
            c = c if c.dtype.is_floating else tf.cast(c, self.dtype)
            return zp - 2.5 * tf.math.log(c) / tf.math.log(tf.constant(10.0, c.dtype))
        check_positive(counts, "counts")
        return zp - 2.5 * np.log10(np.asarray(counts, dtype=np.float64))

    # ----------------------------------------------------------------- noise
    def _image(self, value, name: str) -> tf.Tensor:
        if value is None:
            raise ValueError(f"{name} is required, got None")
        check_finite(value, name)
        if isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_floating:
            t = tf.convert_to_tensor(value)
        else:
            arr = value if isinstance(value, (tf.Tensor, tf.Variable)) else np.asarray(value)
            t = tf.cast(arr, self.dtype)
        shape = t.shape
        if shape.rank is not None:
            n = self.num_pix
            if shape.rank < 2 or (shape[-2] is not None and shape[-2] != n) or \
                    (shape[-1] is not None and shape[-1] != n):
                raise ValueError(f"{name} must have shape [..., {n}, {n}] (num_pix={n}), got "
                                 f"{shape.as_list()}")
        return t

    def noise_variance(self, model):
        """Per-pixel variance ``background_rms^2 + max(model, 0) / T`` in (e-/s)^2."""
        m = self._image(model, "model")
        return self._variance(m)

    def _variance(self, m):
        bkg2 = tf.constant(self._background_rms**2, m.dtype)
        return bkg2 + tf.nn.relu(m) / tf.constant(self.total_exposure_time, m.dtype)

    def likelihood(self, model) -> tfd.Distribution:
        """``Independent(Normal(model, sqrt(noise_variance(model))), 2)``: the distribution of
        the data given a model image ``[..., N, N]`` (batch shape ``[...]``)."""
        m = self._image(model, "model")
        return tfd.Independent(tfd.Normal(loc=m, scale=tf.sqrt(self._variance(m))),
                               reinterpreted_batch_ndims=2)

    def add_noise(self, model, seed=None, exact_poisson: bool = False):
        """A noisy image (e-/s per pixel) drawn for the model image(s) ``[..., N, N]``.

        ``seed``: an int (the same noise on every call), a shape-[2] int tensor (a stateless
        TF/TFP seed) or ``None``. With ``exact_poisson=False`` (default) the noise is the
        Gaussian of :meth:`likelihood`. With ``exact_poisson=True`` the source counts
        ``T max(model, 0)`` are Poisson draws (negative model values are kept as they are)
        and, when the background comes from ``sky_brightness``, so are the sky counts
        ``T s`` (sky-subtracted), plus Gaussian read noise of variance ``N r^2``; a given
        ``background_rms`` stays Gaussian. Either way the mean is the model and the
        variance :meth:`noise_variance`.
        """
        m = self._image(model, "model")
        seed = _stateless_seed(seed)
        if not exact_poisson:
            return self.likelihood(m).sample(seed=seed)
        dt = m.dtype
        t_tot = tf.constant(self.total_exposure_time, dt)
        s_src, s_sky, s_read = tfp.random.split_seed(seed, n=3)
        shape = tf.shape(m)
        pos = tf.nn.relu(m)
        counts = tf.random.stateless_poisson(shape, s_src, lam=pos * t_tot, dtype=dt)
        img = counts / t_tot + (m - pos)
        if self.sky_brightness is not None:
            sky = self.sky_counts_per_pixel * self.total_exposure_time
            sky_counts = tf.random.stateless_poisson(shape, s_sky, lam=tf.constant(sky, dt),
                                                     dtype=dt)
            read_sd = math.sqrt(self.num_exposures) * self.read_noise
            noise = (sky_counts - sky
                     + read_sd * tf.random.stateless_normal(shape, s_read, dtype=dt)) / t_tot
        else:
            noise = self._background_rms * tf.random.stateless_normal(shape, s_read, dtype=dt)
        return img + noise

    # ------------------------------------------------------------------- S/N
    def _weights(self, mask, like, name="mask"):
        if mask is None:
            return tf.ones_like(like)
        check_finite(mask, name)
        w = tf.cast(mask, like.dtype)
        try:
            tf.broadcast_static_shape(w.shape, like.shape)
        except ValueError:
            raise ValueError(f"{name} has shape {w.shape.as_list()}, which does not broadcast "
                             f"against the model's {like.shape.as_list()}") from None
        if is_concrete(w) and np.any(w.numpy() < 0):
            raise ValueError(f"{name} must be boolean or non-negative weights")
        return w

    def _extra(self, lens_light, like):
        if lens_light is None:
            return tf.zeros_like(like)
        light = tf.cast(self._image(lens_light, "lens_light"), like.dtype)
        return light

    def snr(self, model, mask=None, lens_light=None):
        """Matched-filter S/N ``sqrt(sum_mask model^2 / sigma^2(model + lens_light))`` of each
        image ``[..., N, N]`` (returns shape ``[...]``); see the class docs. ``mask`` (bool or
        0/1, broadcasting against the model) selects pixels; ``lens_light`` adds Poisson noise
        without counting as signal."""
        m = self._image(model, "model")
        w = self._weights(mask, m)
        var = self._variance(m + self._extra(lens_light, m))
        safe = tf.where(var > 0, var, tf.ones_like(var))
        terms = tf.where((var > 0) & (m != 0), w * tf.square(m) / safe, tf.zeros_like(m))
        return tf.sqrt(tf.reduce_sum(terms, axis=[-2, -1]))

    def scale_to_snr(self, model, target_snr, mask=None, lens_light=None,
                     num_iterations: int = 40):
        """The factor ``A`` (shape ``[...]``) with ``snr(A * model, mask, lens_light) ==
        target_snr`` for each image ``[..., N, N]``, solved to machine precision (float64
        internally). Multiply the source amplitude (or image) by ``A``. Raises ``ValueError``
        for a non-positive target or an image with zero S/N (concrete inputs)."""
        m_in = self._image(model, "model")
        dt = m_in.dtype
        check_positive(target_snr, "target_snr")
        f64 = tf.float64
        m = tf.cast(m_in, f64)
        a = tf.cast(self._weights(mask, m_in), f64) * tf.square(m)
        a = tf.broadcast_to(a, tf.broadcast_dynamic_shape(tf.shape(a), tf.shape(m)))
        light = tf.cast(self._extra(lens_light, m_in), f64)
        target = tf.cast(tf.convert_to_tensor(target_snr), f64)
        b = tf.constant(self._background_rms**2, f64)
        t_tot = tf.constant(self.total_exposure_time, f64)
        log_t2 = 2.0 * tf.math.log(target)

        def h_and_slope(u):
            amp = tf.exp(u)[..., None, None]
            flux = amp * m + light
            var = b + tf.nn.relu(flux) / t_tot
            ok = (var > 0) & (a > 0)
            safe = tf.where(ok, var, tf.ones_like(var))
            f = tf.where(ok, a * tf.square(amp) / safe, tf.zeros_like(var))
            dvar = tf.where(flux > 0, amp * m / t_tot, tf.zeros_like(var))
            g = tf.reduce_sum(f, axis=[-2, -1])
            dg = tf.reduce_sum(f * (2.0 - dvar / safe), axis=[-2, -1])
            return tf.math.log(g) - log_t2, dg / g

        var1 = b + tf.nn.relu(m + light) / t_tot
        ok1 = (var1 > 0) & (a > 0)
        snr1 = tf.sqrt(tf.reduce_sum(
            tf.where(ok1, a / tf.where(ok1, var1, tf.ones_like(var1)), tf.zeros_like(var1)),
            axis=[-2, -1]))
        if is_concrete(snr1) and np.any(snr1.numpy() <= 0):
            raise ValueError("model has zero signal-to-noise (an empty image or mask); it "
                             "cannot be scaled to a target S/N")
        u0 = tf.math.log(target) - tf.math.log(snr1)   # exact without Poisson noise
        u0 = u0 + tf.zeros_like(snr1)
        h0, _ = h_and_slope(u0)
        # d h / d u >= 1 (for model, lens_light >= 0): the root is within |h0| of u0
        width = tf.abs(h0) + 1e-8
        lo, hi = u0 - width, u0 + width

        def body(i, u, lo, hi, _):
            h, slope = h_and_slope(u)
            lo = tf.where(h < 0, u, lo)
            hi = tf.where(h > 0, u, hi)
            step = u - h / slope
            # (inclusive: near the root the step can round to u itself, which is a bound)
            inside = (step >= lo) & (step <= hi) & tf.math.is_finite(step)
            return i + 1, tf.where(inside, step, 0.5 * (lo + hi)), lo, hi, tf.reduce_max(tf.abs(h))

        def cond(i, u, lo, hi, err):
            # Newton converges quadratically: stop once log(S/N^2) is right to ~1e-13
            return (i < num_iterations) & (err > 1e-13)

        _, u, _, _, _ = tf.while_loop(cond, body, (tf.constant(0), u0, lo, hi,
                                                   tf.constant(np.inf, f64)))
        if is_concrete(u):
            h, _ = h_and_slope(u)
            if not np.all(np.abs(h.numpy()) < 1e-8):
                raise ValueError("scale_to_snr did not converge (is the model or lens_light "
                                 "negative somewhere?)")
        return tf.cast(tf.exp(u), dt)

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        cfg = {"num_pix": self.num_pix, "pixel_scale": self.pixel_scale,
               "exposure_time": self.exposure_time, "num_exposures": self.num_exposures,
               "zero_point": self.zero_point,
               "psf": None if self.psf is None else self.psf.get_config(),
               "dtype": self.dtype.name}
        if self.sky_brightness is None:
            cfg["background_rms"] = self._background_rms
        else:
            cfg.update(sky_brightness=self.sky_brightness, read_noise=self.read_noise)
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> "Observation":
        cfg = dict(config)
        cfg["psf"] = psf_from_config(cfg.get("psf"))
        return cls(cfg.pop("num_pix"), cfg.pop("pixel_scale"), cfg.pop("exposure_time"), **cfg)

    def __repr__(self):
        bkg = (f"background_rms={self._background_rms:.6g}" if self.sky_brightness is None else
               f"sky_brightness={self.sky_brightness}, zero_point={self.zero_point}, "
               f"read_noise={self.read_noise}")
        return (f"Observation(num_pix={self.num_pix}, pixel_scale={self.pixel_scale}, "
                f"exposure_time={self.exposure_time}, num_exposures={self.num_exposures}, "
                f"{bkg}, psf={self.psf!r})")
