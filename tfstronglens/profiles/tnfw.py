"""Truncated NFW profile (Baltz, Marshall & Oguri 2009)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ._geometry import safe_norm
from .base import MassProfile
from .nfw import G1, nfw_terms

__all__ = ["TNFW"]

_PI = math.pi

# Far outside max(Rs, r_trunc) the closed-form convergence is a sum of O(1/X) terms whose
# result is O(X^-4); there it is replaced by Gauss-Legendre quadrature of the (positive,
# smooth) line-of-sight integral. For X > 1.5 max(1, tau) the integrand's poles lie at
# |cos(theta)| >= 1.5 and 16 nodes give ~4e-16 relative accuracy (checked against 40-digit
# arithmetic for tau in [1e-3, 1e4], down to X = 1.2 max(1, tau)).
_FAR = 1.5
_GL_T, _GL_W = np.polynomial.legendre.leggauss(16)
_GL_COS = np.cos(0.25 * np.pi * (1.0 + _GL_T))
_GL_W = 0.25 * np.pi * _GL_W


class _TNFWTerms:
    """The ``tau``-dependent pieces shared by kappa, alpha and psi (see :class:`TNFW`)."""

    def __init__(self, X, tau):
        self.X = X
        self.tau = tau
        self.t2 = tau * tau
        # pref = tau^2 / (tau^2 + 1)^2, written so that it cannot overflow for large tau
        self.pref = (self.t2 / (self.t2 + 1.0)) / (self.t2 + 1.0)
        X2 = X * X
        self.X2 = X2
        self.R = tf.sqrt(self.t2 + X2)  # sqrt(tau^2 + X^2)
        self.dR = X2 / (self.R + tau)  # R - tau
        # lam = ln((tau + R) / (2 tau)),  L = ln(X / (tau + R)) = -ln(1 + (tau + R - X)/X)
        self.lam = tf.math.log1p(X2 / (2.0 * tau * (tau + self.R)))
        self.L = -tf.math.log1p((tau + self.t2 / (self.R + X)) / X)
        self.n = nfw_terms(X)


class TNFW(MassProfile):
    r"""Truncated NFW halo (lenstronomy ``TNFW``; Baltz, Marshall & Oguri 2009).

    #### Mathematical details

    The 3D density is the NFW profile (Navarro, Frenk & White 1996, 1997) times a smooth
    truncation with exponent ``n = 1`` (Baltz, Marshall & Oguri 2009, JCAP 01, 015):

        rho(r) = rho0 / ((r/Rs) (1 + r/Rs)^2) * r_trunc^2 / (r^2 + r_trunc^2),

    with lenstronomy's normalization ``rho0 = alpha_Rs / (4 Rs^2 (1 + ln(1/2)))`` taken from
    the *untruncated* NFW (so ``alpha_Rs`` is the deflection at ``Rs`` only as
    ``r_trunc -> inf``). The total mass is finite, ``rho ~ r^-5`` outside ``r_trunc``.

    With ``X = r/Rs``, ``tau = r_trunc/Rs``, ``R = sqrt(tau^2 + X^2)``,
    ``L = ln(X / (tau + R))``, the NFW functions ``A(X)`` (arccosh/arccos form, ``A(1) = 1``),
    ``B(X) = (A - 1)/(1 - X^2)`` and ``g(X) = ln(X/2) + A`` (see :class:`NFW`), the
    projected quantities (Baltz et al. 2009, n = 1 case; as in lenstronomy's ``_F`` and
    ``_g``; ``h_t`` is lenstronomy's ``_h``, the integral of ``h_t' = 2 g_t / X``):

        kappa = 2 rho0 Rs tau^2/(tau^2+1)^2 [ (tau^2+1) B + 2 A - pi/R + (tau^2-1) L/(tau R) ]

        alpha = 4 rho0 Rs g_t(X)/X^2 (theta - c),
        g_t   = tau^2/(tau^2+1)^2 [ (tau^2 + 1 + 2(X^2-1)) A + pi tau + (tau^2-1) ln tau
                                     + R (-pi + (tau^2-1) L / tau) ]

        psi = 2 rho0 Rs^3 h_t(X),
        h_t = (tau^2+1)^-2 [ 2 pi tau^2 (tau - R + tau ln(tau + R)) + 2 (tau^2-1) tau R L
              + tau^2 (tau^2-1) (L^2 - (1 - X^2) A^2) + 4 tau^2 (X^2-1) A
              + tau^2 ((tau^2-1) ln tau - tau^2 - 1) ln X^2
              - tau^2 ((tau^2-1) ln tau ln(4 tau) + 2 ln(tau/2) - 2 tau (tau - pi) ln(2 tau)) ]

    where the last (constant) line is lenstronomy's additive constant; with it
    ``h_t(0) = 0`` exactly, as for the NFW potential. The total mass is
    ``M = 4 pi rho0 Rs^3 tau^2/(tau^2+1)^2 [(tau^2-1) ln tau + pi tau - (tau^2+1)]``
    (Baltz et al. 2009): ``|alpha| r -> M / pi`` far out.

    Numerics: the textbook forms cancel catastrophically at small ``X`` (``g_t`` is a sum
    of O(tau^2 ln X) terms that is O(X^2 ln X); ``h_t`` cancels even its ``ln X`` and
    constant parts) and far outside ``r_trunc`` (O(X) terms of ``h_t`` and O(1/X) terms
    of ``alpha``). They are evaluated in the algebraically equivalent forms, with
    ``lam = ln((tau+R)/(2 tau))``, ``dR = R - tau = X^2/(R + tau)`` and ``G = g/X^2``:

        g_t/X^2 = pref [ (tau^2-1) (G - lam/X^2 + L/(tau (R + tau))) + 2 A - pi/(tau + R) ]
        h_t     = pref [ 2 pi (tau lam - dR) + (tau^2-1) (2 (ln tau - 1) lam + Q)
                         - 2 (tau^2-1) dR (-L)/tau + 4 (ln(2/X) + (X^2-1) A) ]

    (``pref = tau^2/(tau^2+1)^2``, ``Q = (ln(2/X) + lam)^2 - (1 - X^2) A^2``), each
    ingredient computed without cancellation (small-``X`` forms from :func:`nfw_terms`;
    for ``X > 1``, ``2A - pi/(tau+R) = pi (tau + (tau^2+1)/(R+w))/(w (tau+R)) -
    2 arctan(1/w)/w`` with ``w = sqrt(X^2-1)``, and likewise for the ``O(X)`` terms of
    ``h_t``). The series of :func:`nfw_terms` handles ``X = 1``. The closed-form
    convergence loses ~ (X / max(1, tau))^3 ulp far out (``kappa ~ X^-4`` is left over
    from O(1/X) terms; lenstronomy shares this), so for ``X > 1.5 max(1, tau)`` it is
    replaced by 16-point Gauss-Legendre quadrature of the projection integral

        kappa = 2 rho0 Rs tau^2 int_0^{pi/2} cos^3(t) / ((cos t + X)^2 (X^2 + tau^2 cos^2 t)) dt,

    whose integrand is positive and analytic there (machine precision). Measured against
    40-digit arithmetic over 1e-12 <= X <= 1e5 and 1e-3 <= tau <= 1e4: relative errors
    below 5e-15 (float64) and 4e-6 (float32, above the 1e-8 arcsec radius floor).

    The radius is floored at a tiny value: at the centre ``alpha = 0``, ``psi = 0`` and
    ``kappa`` (logarithmically divergent) is large but finite, with finite gradients.
    (lenstronomy instead floors ``X`` at ``1e-3``, so it differs inside ``r < 1e-3 Rs``.)

    Parameters: ``Rs`` (arcsec, > 0), ``alpha_Rs`` (arcsec, >= 0), ``r_trunc`` (arcsec,
    > 0), ``center_x``, ``center_y`` (arcsec, default 0).

    #### Example

    >>> ax, ay = TNFW().deflection([1.0], [0.0], Rs=0.5, alpha_Rs=0.1, r_trunc=2.0)
    >>> # ax ~ [0.0812], ay = [0.]
    """

    name = "TNFW"
    param_names = ("Rs", "alpha_Rs", "r_trunc", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("Rs", "r_trunc")
    nonnegative_params = ("alpha_Rs",)

    def default_priors(self) -> dict:
        """As :class:`NFW` (``Rs`` log-uniform in [0.05, 5] F, ``alpha_Rs`` uniform in
        [0.01, 0.5] F) and ``r_trunc`` log-uniform in [0.1, 20] F, ``F`` the field of
        view."""
        return {"Rs": {"log_uniform": [0.05, 5.0], "scale": "fov"},
                "alpha_Rs": {"uniform": [0.01, 0.5], "scale": "fov"},
                "r_trunc": {"log_uniform": [0.1, 20.0], "scale": "fov"}}

    def _deflection(self, x, y, Rs, alpha_Rs, r_trunc, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        T = _TNFWTerms(safe_norm(dx, dy) / Rs, r_trunc / Rs)
        n, tau, t2, R = T.n, T.tau, T.t2, T.R
        c2_generic = 2.0 * n.A - _PI / (tau + R)
        c2_far = _PI * (tau + (t2 + 1.0) / (R + n.w)) / (n.w * (tau + R)) - 2.0 * n.acot / n.w
        c2 = tf.where(n.hi, c2_far, c2_generic)
        inner = n.G - T.lam / T.X2 + T.L / (tau * (R + tau))
        G_t = T.pref * ((t2 - 1.0) * inner + c2)
        scale = alpha_Rs / (G1 * Rs) * G_t
        return scale * dx, scale * dy

    def _convergence(self, x, y, Rs, alpha_Rs, r_trunc, center_x, center_y):
        T = _TNFWTerms(safe_norm(x - center_x, y - center_y) / Rs, r_trunc / Rs)
        n, tau, t2, R = T.n, T.tau, T.t2, T.R
        F_t = T.pref * (
            (t2 + 1.0) * n.B + 2.0 * n.A - _PI / R + (t2 - 1.0) * T.L / (tau * R)
        )
        # far field: F_t = tau^2 int_0^{pi/2} c^3 / ((c + X)^2 (X^2 + tau^2 c^2)) dtheta,
        # c = cos(theta) (the projection integral with z = r tan(theta)).
        X_far = _FAR * tf.maximum(tau, 1.0)
        far = T.X > X_far
        Xf = tf.where(far, T.X, 2.0 * X_far)[..., None]
        c = tf.constant(_GL_COS, dtype=Xf.dtype)
        wq = tf.constant(_GL_W, dtype=Xf.dtype)
        t2f = t2[..., None]
        integrand = wq * c * c * c / ((c + Xf) ** 2 * (Xf * Xf + t2f * c * c))
        F_far = t2 * tf.reduce_sum(integrand, axis=-1)
        return alpha_Rs / (2.0 * G1 * Rs) * tf.where(far, F_far, F_t)

    def _potential(self, x, y, Rs, alpha_Rs, r_trunc, center_x, center_y):
        X = safe_norm(x - center_x, y - center_y) / Rs
        T = _TNFWTerms(X, r_trunc / Rs)
        n, tau, t2, R, lam = T.n, T.tau, T.t2, T.R, T.lam
        # Q = (ln(2/X) + lam)^2 - (1 - X^2) A^2
        q_near = n.h + lam * (2.0 * n.a + lam)
        a_plus_lam = tf.math.log((tau + R) / (tau * X))
        q_far = a_plus_lam * a_plus_lam - n.K
        Q = tf.where(n.hi, q_far, q_near)
        # 4 W + 2 pi (tau lam - dR), with the O(X) terms cancelled analytically for X > 1
        lin_generic = 4.0 * n.W + 2.0 * _PI * (tau * lam - T.dR)
        lin_far = 4.0 * (n.a - n.w * n.acot) + 2.0 * _PI * (
            tau * lam + tau - (t2 + 1.0) / (R + n.w)
        )
        lin = tf.where(n.hi, lin_far, lin_generic)
        h_t = T.pref * (
            lin
            + (t2 - 1.0) * (2.0 * (tf.math.log(tau) - 1.0) * lam + Q)
            + 2.0 * (t2 - 1.0) * T.dR * T.L / tau
        )
        return alpha_Rs * Rs / (2.0 * G1) * h_t
