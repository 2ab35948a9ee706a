"""Analytic light profiles: Sersic (round and elliptical) and Gaussian."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ._geometry import broadcast_shape, sum_pixels, sum_to
from .base import LightProfile

_B_N_CHOICES = ("ciotti_bertin", "lenstronomy")


# b_n tabulated once (numpy/scipy, at first use) on a log grid of n, with its exact
# derivative, and evaluated in TF by cubic Hermite interpolation: cheap to run and to
# XLA-compile (an igamma-based Newton solve cost ~4 s of XLA compile time per Sersic).
_BN_LOG_N_MIN, _BN_LOG_N_MAX, _BN_POINTS = math.log(0.05), math.log(20.0), 4096
_BN_TABLE = None


def _bn_table():
    global _BN_TABLE
    if _BN_TABLE is None:
        from scipy.special import gammaincinv

        log_n = np.linspace(_BN_LOG_N_MIN, _BN_LOG_N_MAX, _BN_POINTS)
        n = np.exp(log_n)
        b = gammaincinv(2.0 * n, 0.5)
        # d b / d log n by a central difference of the exact inverse (relative error ~1e-10)
        eps = 1e-5
        db = (gammaincinv(2.0 * n * math.exp(eps), 0.5) - gammaincinv(2.0 * n * math.exp(-eps), 0.5)) / (2 * eps)
        _BN_TABLE = (b, db)
    return _BN_TABLE


def _ciotti_bertin(n):
    inv = 1.0 / n
    return (
        2.0 * n
        - 1.0 / 3.0
        + inv * (4.0 / 405.0 + inv * (46.0 / 25515.0 + inv * (131.0 / 1148175.0 - inv * 2194697.0 / 30690717750.0)))
    )


def sersic_b_n(n, approximation: str = "ciotti_bertin"):
    r"""The Sersic ``b_n``, defined by ``gamma(2n, b_n) = Gamma(2n) / 2`` so that
    ``R_sersic`` is the half-light radius.

    * ``"ciotti_bertin"`` (default): the exact root. For ``0.05 <= n <= 20`` it is
      interpolated (cubic Hermite in ``log n``, 4096 nodes) from a table of
      ``scipy.special.gammaincinv(2n, 1/2)`` and its derivative: relative error ~1e-11
      and smooth gradients (accurate to 2e-7). Above ``n = 20`` the asymptotic series of
      Ciotti & Bertin (1999, A&A 352, 447, eq. 18) is used (relative error < 1.1e-10). ``n`` is
      floored at 0.05 (below, ``b_n`` underflows float32).
    * ``"lenstronomy"``: ``b_n = 1.9992 n - 0.3271`` (floored at 1e-5), lenstronomy's
      linear approximation, for exact compatibility with its images.
    """
    if approximation == "lenstronomy":
        return tf.maximum(1.9992 * n - 0.3271, 1e-5)
    if approximation != "ciotti_bertin":
        raise ValueError(f"b_n approximation must be one of {_B_N_CHOICES}, got {approximation!r}")
    dtype = n.dtype
    b_tab, db_tab = _bn_table()
    h = (_BN_LOG_N_MAX - _BN_LOG_N_MIN) / (_BN_POINTS - 1)
    n_safe = tf.maximum(n, 0.05)
    u = (tf.math.log(tf.minimum(n_safe, 20.0)) - _BN_LOG_N_MIN) / h
    i = tf.clip_by_value(tf.floor(tf.stop_gradient(u)), 0.0, _BN_POINTS - 2.0)
    t = u - i
    idx = tf.cast(i, tf.int32)
    y0 = tf.gather(tf.constant(b_tab, dtype), idx)
    y1 = tf.gather(tf.constant(b_tab, dtype), idx + 1)
    d0 = tf.gather(tf.constant(db_tab * h, dtype), idx)
    d1 = tf.gather(tf.constant(db_tab * h, dtype), idx + 1)
    t2, t3 = t * t, t * t * t
    hermite = ((2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * d0
               + (-2 * t3 + 3 * t2) * y1 + (t3 - t2) * d1)
    return tf.where(n_safe > 20.0, _ciotti_bertin(n_safe), hermite)


def elliptical_radius_sq(dx, dy, e1, e2):
    r"""Squared "product-average" elliptical radius ``q x'^2 + y'^2 / q`` (lenstronomy's
    convention, ``sqrt(R_major R_minor)`` is constant on isophotes), written without the
    position angle so that it is smooth at ``e = 0``:

        R^2 = [(1 + |e|^2) r^2 - 2 (e1 (dx^2 - dy^2) + 2 e2 dx dy)] / (1 - |e|^2).
    """
    e_sq = e1 * e1 + e2 * e2
    r_sq = dx * dx + dy * dy
    quad = e1 * (dx * dx - dy * dy) + 2.0 * e2 * dx * dy
    return ((1.0 + e_sq) * r_sq - 2.0 * quad) / (1.0 - e_sq)



def _sersic(x, y, amp, R_sersic, n_sersic, bn, e1, e2, center_x, center_y, min_r_sq):
    r"""Sersic surface brightness ``amp exp(bn - bn (R / R_sersic)^(1/n))`` at ``(x, y)``,
    with ``R^2`` the product-average elliptical radius (:func:`elliptical_radius_sq`; round
    if ``e1`` and ``e2`` are ``None``) floored at ``min_r_sq``, and a hand-written gradient.

    The gradient (first order only: it is not itself differentiable, and nothing in the
    package takes second derivatives of light profiles) is computed in one elementwise
    pass. With ``E = exp(bn - bn f)``, ``f = (R / R_s)^(1/n)``, ``L = log R^2`` and the
    upstream gradient ``g``, every parameter derivative is a pixel sum of one of

        g E,  A = g amp E f,  A L,  G dx^2,  G dy^2,  G dx dy,  G_x,  G_y,

    where ``G = -bn A / (2 n R^2)`` (0 where the radius is floored) is the derivative with
    respect to ``R^2`` and ``G_x, G_y`` those with respect to ``x, y``:
    ``d/d amp = sum g E``, ``d/d bn = amp sum g E - sum A``,
    ``d/d R_s = bn / (n R_s) sum A``, ``d/d n = bn / n^2 (sum A L / 2 - log R_s sum A)``,
    ``d/d center = -sum G_{x,y}``, and ``d/d e1, d/d e2`` from the moments of ``G``. The sums
    are taken together by :func:`~tfstronglens.profiles._geometry.sum_pixels`: XLA:CPU
    autodiff instead fused the elementwise derivative code into one unvectorized
    reduction per parameter (5-7x the forward time).
    """
    elliptical = e1 is not None

    @tf.custom_gradient
    def sersic(x, y, amp, R_sersic, n_sersic, bn, *rest):
        if elliptical:
            e1, e2, center_x, center_y = rest
        else:
            center_x, center_y = rest
        dx, dy = x - center_x, y - center_y
        if elliptical:
            r_sq = elliptical_radius_sq(dx, dy, e1, e2)
        else:
            r_sq = dx * dx + dy * dy
        log_r_sq = tf.math.log(tf.maximum(r_sq, min_r_sq))
        inv_2n = 0.5 / n_sersic
        log_rs = tf.math.log(R_sersic)
        frac = tf.exp(log_r_sq * inv_2n + (-log_rs / n_sersic))
        expo = tf.exp(bn - bn * frac)
        value = amp * expo

        def grad(g):
            g_e = g * expo
            a = g_e * amp * frac
            a_l = a * log_r_sq
            # d/d R^2 (0 where the radius is floored), ending in a division: XLA keeps
            # ("expensive") divisions that feed a broadcast in memory, so the code above
            # runs once per pixel rather than once per product below
            mask = tf.cast(r_sq > min_r_sq, a.dtype)
            g_r = ((-bn * inv_2n) * a * mask) / tf.maximum(r_sq, min_r_sq)
            if elliptical:
                e_sq = e1 * e1 + e2 * e2
                inv = 1.0 / (1.0 - e_sq)
                c_r = (1.0 + e_sq) * inv
                # R^2 = c_r (dx^2 + dy^2) - 2 inv (e1 (dx^2 - dy^2) + 2 e2 dx dy)
                d_x = 2.0 * c_r * dx - 4.0 * inv * (e1 * dx + e2 * dy)
                d_y = 2.0 * c_r * dy - 4.0 * inv * (e2 * dx - e1 * dy)
                polys = [d_x, d_y, dx * dx, dy * dy, dx * dy]
            else:
                d_x, d_y = 2.0 * dx, 2.0 * dy
                polys = [d_x, d_y]
            g_x, g_y = g_r * d_x, g_r * d_y
            shape = tf.broadcast_static_shape(g_r.shape, tf.broadcast_static_shape(
                dx.shape, dy.shape))
            if shape.is_fully_defined():
                polys = [tf.broadcast_to(p, shape) for p in polys]
                prods = [g_e, a, a_l] + tf.unstack(g_r[None] * tf.stack(polys, 0), axis=0)
            else:
                prods = [g_e, a, a_l] + [g_r * p for p in polys]
            # sums over pixels at the broadcast shape of all parameters, then per parameter
            params = (amp, R_sersic, n_sersic, bn) + tuple(rest)
            s_e, s_a, s_al, s_x, s_y, *moments = sum_pixels(prods, broadcast_shape(*params))
            grads = [sum_to(g_x, x), sum_to(g_y, y), sum_to(s_e, amp),
                     sum_to(bn * inv_2n * 2.0 / R_sersic * s_a, R_sersic),
                     sum_to(bn * inv_2n * inv_2n * 4.0 * (0.5 * s_al - log_rs * s_a), n_sersic),
                     sum_to(amp * s_e - s_a, bn)]
            if elliptical:
                s_xx, s_yy, s_xy = moments
                # d R^2 / d e_i = [4 e_i (r^2 - quad) - 2 (1 - e^2) m_i] / (1 - e^2)^2 with
                # m_1 = dx^2 - dy^2, m_2 = 2 dx dy, quad = e1 m_1 + e2 m_2
                m1 = s_xx - s_yy
                m2 = 2.0 * s_xy
                rq = s_xx + s_yy - (e1 * m1 + e2 * m2)
                w = inv * inv
                grads += [sum_to(w * (4.0 * e1 * rq - 2.0 * (1.0 - e_sq) * m1), e1),
                          sum_to(w * (4.0 * e2 * rq - 2.0 * (1.0 - e_sq) * m2), e2)]
            grads += [sum_to(-s_x, center_x), sum_to(-s_y, center_y)]
            return grads

        return value, grad

    args = (e1, e2, center_x, center_y) if elliptical else (center_x, center_y)
    return sersic(x, y, amp, R_sersic, n_sersic, bn, *args)


class Sersic(LightProfile):
    r"""Round Sersic profile (lenstronomy ``SERSIC``).

    #### Mathematical details

        I(R) = amp exp(-b_n [(R / R_sersic)^(1/n_sersic) - 1]),

    so ``amp`` is the surface brightness at ``R_sersic`` (flux / arcsec^2) and, with the
    default ``b_n``, ``R_sersic`` is the half-light radius. Total flux:
    ``2 pi n R_sersic^2 amp e^{b_n} Gamma(2n) / b_n^{2n}`` (times ``q``-independent for
    :class:`SersicEllipse`, whose radius is the product average).

    Arguments:
      b_n: ``"ciotti_bertin"`` (exact half-light radius) or ``"lenstronomy"``
        (lenstronomy's linear approximation, to reproduce its images); see
        :func:`sersic_b_n`.
      smoothing: radius floor in arcsec (default 1e-4, as lenstronomy's ``SersicUtil``)
        that keeps the cusp and its gradient finite at the centre.
    """

    name = "SERSIC"
    param_names = ("amp", "R_sersic", "n_sersic", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("R_sersic", "n_sersic")

    def __init__(self, b_n: str = "ciotti_bertin", smoothing: float = 1e-4, dtype=tf.float32):
        super().__init__(dtype=dtype)
        if b_n not in _B_N_CHOICES:
            raise ValueError(f"b_n must be one of {_B_N_CHOICES}, got {b_n!r}")
        if not (isinstance(smoothing, (int, float)) and smoothing > 0 and math.isfinite(smoothing)):
            raise ValueError(f"smoothing must be a positive number, got {smoothing!r}")
        self.b_n = b_n
        self.smoothing = float(smoothing)

    def get_config(self):
        return {**super().get_config(), "b_n": self.b_n, "smoothing": self.smoothing}

    def _profile(self, r_sq, amp, R_sersic, n_sersic):
        bn = sersic_b_n(n_sersic, self.b_n)
        # (R / R_s)^(1/n) = exp(log(R^2) / (2n) - log(R_s) / n): per-lens constants are
        # hoisted so each pixel costs one log and two exps (no sqrt, no pow).
        inv_2n = 0.5 / n_sersic
        offset = -tf.math.log(R_sersic) / n_sersic
        frac = tf.exp(tf.math.log(tf.maximum(r_sq, self.smoothing**2)) * inv_2n + offset)
        return amp * tf.exp(bn - bn * frac)

    def _surface_brightness(self, x, y, amp, R_sersic, n_sersic, center_x, center_y):
        return _sersic(x, y, amp, R_sersic, n_sersic, sersic_b_n(n_sersic, self.b_n),
                       None, None, center_x, center_y, self.smoothing**2)


class SersicEllipse(Sersic):
    r"""Elliptical Sersic profile (lenstronomy ``SERSIC_ELLIPSE``).

    As :class:`Sersic` with ``R`` the product-average elliptical radius
    ``sqrt(q x'^2 + y'^2 / q)`` (see :func:`elliptical_radius_sq`), ``q = (1-|e|)/(1+|e|)``
    and major-axis angle ``atan2(e2, e1) / 2``.
    """

    name = "SERSIC_ELLIPSE"
    param_names = ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")

    def _surface_brightness(self, x, y, amp, R_sersic, n_sersic, e1, e2, center_x, center_y):
        return _sersic(x, y, amp, R_sersic, n_sersic, sersic_b_n(n_sersic, self.b_n),
                       e1, e2, center_x, center_y, self.smoothing**2)


class Gaussian(LightProfile):
    r"""Round Gaussian (lenstronomy ``GAUSSIAN``): ``amp`` is the total flux,

        I(r) = amp / (2 pi sigma^2) exp(-r^2 / (2 sigma^2)).
    """

    name = "GAUSSIAN"
    param_names = ("amp", "sigma", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("sigma",)

    def _surface_brightness(self, x, y, amp, sigma, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        s2 = sigma * sigma
        return amp / (2.0 * math.pi * s2) * tf.exp(-0.5 * (dx * dx + dy * dy) / s2)
