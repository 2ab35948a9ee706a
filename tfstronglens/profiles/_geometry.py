"""Geometry shared by the profiles: safe radii, ellipticity and complex arithmetic.

Complex numbers are carried as ``(real, imag)`` pairs of real tensors: this keeps every
profile on the float fast paths of XLA and on TPUs (which lack complex128).

Ellipticity (lenstronomy convention): ``e = e1 + i e2``, ``|e| = (1 - q) / (1 + q)``,
position angle ``phi = arg(e) / 2`` of the major axis. The formulas below never form
``phi`` itself; they use ``e`` directly, which keeps values and gradients finite and
exact at ``q = 1`` (``e = 0``), where ``phi`` is undefined.
"""

from __future__ import annotations

import tensorflow as tf


def tiny(dtype) -> float:
    """A floor for squared radii: small enough to be invisible, large enough that
    1/r^2 stays far from overflow in ``dtype``."""
    return 1e-30 if dtype == tf.float64 else 1e-16


def safe_norm(x, y):
    """``sqrt(x^2 + y^2)`` floored so that it and its gradient stay finite at 0."""
    r2 = x * x + y * y
    return tf.sqrt(tf.maximum(r2, tiny(x.dtype)))


def abs_e(e1, e2):
    """``|e|`` with a zero (sub)gradient at ``e = 0`` instead of NaN."""
    e_sq = e1 * e1 + e2 * e2
    return tf.sqrt(tf.maximum(e_sq, 1e-30))


def q_from_e(e1, e2):
    """Axis ratio ``q = (1 - |e|) / (1 + |e|)``."""
    e = abs_e(e1, e2)
    return (1.0 - e) / (1.0 + e)


def cmul(ar, ai, br, bi):
    """Complex product of ``(ar + i ai)`` and ``(br + i bi)``."""
    return ar * br - ai * bi, ar * bi + ai * br


def cdiv(ar, ai, br, bi):
    """Complex quotient ``(ar + i ai) / (br + i bi)``."""
    den = br * br + bi * bi
    return (ar * br + ai * bi) / den, (ai * br - ar * bi) / den


def csqrt(ar, ai):
    """Principal complex square root (branch cut on the negative real axis).

    Written as ``t = sqrt((r + |ar|) / 2)`` and ``ai / (2 t)`` so that neither part takes
    ``sqrt(0)``: values and gradients are finite and correct everywhere except at 0 and on
    the cut itself (where the root is discontinuous). On the positive real axis, the naive
    ``sqrt(max((r - ar) / 2, 0))`` form gave NaN gradients.
    """
    r = tf.sqrt(tf.maximum(ar * ar + ai * ai, tiny(ar.dtype)))
    pos = ar >= 0
    t = tf.sqrt(0.5 * tf.where(pos, r + ar, r - ar))
    re = tf.where(pos, t, tf.abs(ai) / (2.0 * t))
    im = tf.where(pos, ai / (2.0 * t), tf.where(ai < 0, -t, t))
    return re, im


def atan(x):
    """``arctan(x)``; in float32 a branch-free Cephes ``atanf`` polynomial (about 1 ulp).

    XLA's CPU ``atan``/``atan2`` are not vectorized and cost ~10-20x an ``exp``; this
    range-reduced minimax polynomial (Moshier's Cephes library) is exact to float32
    rounding and vectorizes. float64 uses ``tf.math.atan``.
    """
    if x.dtype == tf.float64:
        return tf.math.atan(x)
    a = tf.abs(x)
    big = a > 2.414213562373095
    mid = a > 0.4142135623730950
    xr = tf.where(big, -1.0 / tf.maximum(a, 1e-30), tf.where(mid, (a - 1.0) / (a + 1.0), a))
    y0 = tf.where(big, 1.5707963267948966, tf.where(mid, 0.7853981633974483, 0.0))
    z = xr * xr
    poly = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1
    res = y0 + (poly * z * xr + xr)
    return tf.where(x < 0, -res, res)


def clog(ar, ai):
    """Principal complex logarithm."""
    return 0.5 * tf.math.log(ar * ar + ai * ai), tf.math.atan2(ai, ar)


def clog_right(ar, ai):
    """Complex logarithm for arguments with positive real part (fast: no atan2)."""
    return 0.5 * tf.math.log(ar * ar + ai * ai), atan(ai / ar)


class EllipticalFrame:
    """Elliptical coordinates of an elliptical mass distribution (Tessore & Metcalf 2015).

    For a profile with isodensity contours ``R = sqrt(q^2 x'^2 + y'^2)`` in the frame
    ``(x', y')`` rotated to the major axis, define (``z = x + i y`` relative to the centre)

        W = e^{i phi} (q x' + i y') = (z - e conj(z)) / (1 + |e|),

    so that ``R = |W|``, ``e^{i phi} e^{i phi_ell} = W / R`` and
    ``f e^{2 i phi_ell} = conj(e) W^2 / R^2`` with ``f = (1 - q)/(1 + q) = |e|``.

    Attributes: ``dx, dy`` (offsets from the centre), ``wr, wi`` (W), ``R`` (floored
    elliptical radius), ``ur, ui`` = ``-conj(e) W^2 / R^2`` (the argument of the
    hypergeometric series, ``|u| = |e|``), ``q`` and ``abs_e``.
    """

    def __init__(self, x, y, e1, e2, center_x, center_y):
        self.dx = x - center_x
        self.dy = y - center_y
        self.abs_e = abs_e(e1, e2)
        self.q = (1.0 - self.abs_e) / (1.0 + self.abs_e)
        inv = 1.0 / (1.0 + self.abs_e)
        # e conj(z) = (e1 + i e2)(dx - i dy) = (e1 dx + e2 dy) + i (e2 dx - e1 dy)
        self.wr = (self.dx - (e1 * self.dx + e2 * self.dy)) * inv
        self.wi = (self.dy - (e2 * self.dx - e1 * self.dy)) * inv
        self.R = safe_norm(self.wr, self.wi)
        # W^2 / R^2 and u = -conj(e) W^2 / R^2
        inv_r2 = 1.0 / (self.R * self.R)
        w2r = (self.wr * self.wr - self.wi * self.wi) * inv_r2
        w2i = 2.0 * self.wr * self.wi * inv_r2
        self.ur, self.ui = cmul(-e1, e2, w2r, w2i)
