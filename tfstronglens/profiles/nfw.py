"""Navarro-Frenk-White (NFW) profile, and the projected-NFW functions shared with TNFW."""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from ._geometry import safe_norm
from .base import MassProfile

__all__ = ["NFW"]

# g(1) = 1 + ln(1/2): the dimensionless mass inside X = 1, which fixes rho0 from alpha_Rs.
G1 = 1.0 - math.log(2.0)

# Inside |1 - X^2| < _WINDOW the closed forms (arccosh / arccos branches, 0/0 at X = 1)
# are replaced by the Taylor series in u = 1 - X^2, truncated after n terms with
# |u|^n / (2n + 3) below 2e-18 (float64) or 2e-9 (float32). The window is wide so that
# outside it the closed forms (notably B = (A - 1)/(1 - X^2)) cancel by less than a factor 8.
_WINDOW = 0.5
_TERMS = {"float64": 52, "float32": 24}


class NFWTerms(NamedTuple):
    """Dimensionless functions of ``X = r / Rs`` for the projected NFW profile.

    ``a = ln(2/X)``; ``A = arccosh(1/X)/sqrt(1-X^2)`` (= ``arccos(1/X)/sqrt(X^2-1)``);
    ``B = (A - 1)/(1 - X^2)`` (convergence); ``G = g(X)/X^2`` with ``g = ln(X/2) + A``
    (deflection); ``h = ln^2(X/2) - (1 - X^2) A^2`` (potential); ``K = (1 - X^2) A^2``;
    ``W = a + (X^2 - 1) A``; ``hi``: mask of the ``X > 1`` closed-form branch, where
    ``w = sqrt(X^2 - 1)`` and ``acot = arctan(1/w)`` hold their true values (elsewhere
    harmless placeholders).
    """

    a: tf.Tensor
    A: tf.Tensor
    B: tf.Tensor
    G: tf.Tensor
    h: tf.Tensor
    K: tf.Tensor
    W: tf.Tensor
    hi: tf.Tensor
    w: tf.Tensor
    acot: tf.Tensor


def nfw_terms(X) -> NFWTerms:
    r"""Evaluate the projected-NFW functions (see :class:`NFWTerms`) for ``X > 0``.

    Three branches, joined with double ``tf.where`` so that every branch only ever sees
    inputs where it is finite and well conditioned (values and gradients stay finite):

    * ``X < 1`` (outside the window), with ``s = sqrt(1 - X^2)``:
      ``arccosh(1/X) = atanh(s) = log1p(2 s (1 + s) / X^2) / 2`` (no cancellation as
      ``X -> 0``), and with ``d = a - atanh(s) = -log1p(-X^2 / (2 (1 + s)))``:
      ``g = (a X^2 / (1 + s) - d) / s`` and ``h = d (2 a - d)``, which avoid the
      catastrophic cancellations ``ln(X/2) + A`` and ``ln^2 - arccosh^2`` at small ``X``
      (where ``g ~ X^2 ln(2/X) / 2`` and ``h ~ X^2 ln(2/X) / 2``).
    * ``|1 - X^2| < 0.5``: ``A = atanh(sqrt(u))/sqrt(u) = sum_n u^n / (2n + 1)`` with
      ``u = 1 - X^2`` (the same analytic function on both sides of ``X = 1``; the
      singularity at ``X = 1`` of the closed forms is removable), ``B = sum_{n>=1}
      u^{n-1} / (2n + 1)``, ``B(1) = 1/3``.
    * ``X > 1`` (outside the window), with ``w = sqrt(X^2 - 1)``: ``A = arctan(w) / w``.
    """
    one = tf.ones_like(X)
    u = (1.0 - X) * (1.0 + X)
    win = tf.abs(u) < _WINDOW
    lo = tf.logical_and(X < 1.0, tf.logical_not(win))
    hi = tf.logical_and(X > 1.0, tf.logical_not(win))
    a = tf.math.log(2.0 / X)

    # --- X < 1 branch (safe placeholder X = 0.5 elsewhere)
    xl = tf.where(lo, X, 0.5 * one)
    xl2 = xl * xl
    s = tf.sqrt((1.0 - xl) * (1.0 + xl))
    atanh_s = 0.5 * tf.math.log1p(2.0 * s * (1.0 + s) / xl2)
    A_lo = atanh_s / s
    d = -tf.math.log1p(-xl2 / (2.0 * (1.0 + s)))
    B_lo = (A_lo - 1.0) / (s * s)
    G_lo = (a / (1.0 + s) - d / xl2) / s
    h_lo = d * (2.0 * a - d)
    K_lo = atanh_s * atanh_s
    W_lo = a * xl2 / (1.0 + s) + s * d

    # --- X > 1 branch (safe placeholder X = 2 elsewhere)
    xh = tf.where(hi, X, 2.0 * one)
    w = tf.sqrt((xh - 1.0) * (xh + 1.0))
    acot = tf.math.atan(1.0 / w)  # accurate when small (X >> 1)
    at = 0.5 * math.pi - acot  # arctan(w), w >= 0.7 here: no cancellation
    A_hi = at / w
    B_hi = (1.0 - A_hi) / (w * w)
    G_hi = (A_hi - a) / (xh * xh)
    h_hi = a * a + at * at
    K_hi = -at * at
    W_hi = a + w * at

    # --- window |1 - X^2| < 0.5: Taylor series in u (placeholder u = 0 elsewhere)
    uw = tf.where(win, u, tf.zeros_like(u))
    xw = tf.where(win, X, one)
    terms = _TERMS.get(X.dtype.name, 52)
    B_w = tf.zeros_like(uw) + 1.0 / (2 * terms + 1)
    for n in range(terms - 1, 0, -1):
        B_w = B_w * uw + 1.0 / (2 * n + 1)
    A_w = 1.0 + uw * B_w
    G_w = (A_w - a) / (xw * xw)
    K_w = uw * A_w * A_w
    h_w = a * a - K_w
    W_w = a - uw * A_w

    def pick(v_lo, v_w, v_hi):
        return tf.where(lo, v_lo, tf.where(hi, v_hi, v_w))

    return NFWTerms(
        a=a,
        A=pick(A_lo, A_w, A_hi),
        B=pick(B_lo, B_w, B_hi),
        G=pick(G_lo, G_w, G_hi),
        h=pick(h_lo, h_w, h_hi),
        K=pick(K_lo, K_w, K_hi),
        W=pick(W_lo, W_w, W_hi),
        hi=hi,
        w=w,
        acot=acot,
    )


class NFW(MassProfile):
    r"""Navarro-Frenk-White halo (lenstronomy ``NFW``), parametrized in lensing units.

    #### Mathematical details

    The 3D density (Navarro, Frenk & White 1996, ApJ 462, 563; 1997, ApJ 490, 493) is

        rho(r) = rho0 / ((r / Rs) (1 + r / Rs)^2),

    with ``Rs`` the scale radius (arcsec) and the normalization expressed through the
    deflection at ``Rs``, ``alpha_Rs`` (arcsec), as in lenstronomy:

        rho0 = alpha_Rs / (4 Rs^2 (1 + ln(1/2)))     (in units of Sigma_crit / arcsec).

    The projection (Bartelmann 1996; Wright & Brainerd 2000, ApJ 534, 34; Golse & Kneib
    2002, A&A 390, 821) gives, with ``X = r / Rs`` and
    ``A(X) = arccosh(1/X) / sqrt(1 - X^2)`` for ``X < 1``,
    ``= arccos(1/X) / sqrt(X^2 - 1)`` for ``X > 1`` and ``A(1) = 1``:

        kappa(X) = 2 rho0 Rs (1 - A(X)) / (X^2 - 1)               (kappa(1) = 2 rho0 Rs / 3),
        alpha    = 4 rho0 Rs g(X) / X^2 * (theta - c),  g(X) = ln(X/2) + A(X),
        psi(X)   = 2 rho0 Rs^3 h(X),  h(X) = ln^2(X/2) - arccosh^2(1/X)   (X < 1)
                                            = ln^2(X/2) + arccos^2(1/X)    (X > 1)

    (``h`` as in Keeton 2001, arXiv:astro-ph/0102341, the form lenstronomy uses; its
    additive constant gives ``psi(0) = 0``). Hence ``|alpha(Rs)| = alpha_Rs``,
    the total mass diverges logarithmically, ``kappa`` diverges logarithmically at the
    centre and ``|alpha| ~ alpha_Rs/(2 (1 - ln 2)) (r/Rs) ln(2 Rs/r)`` -> 0 there.

    Numerics: ``A`` is one analytic function of ``u = 1 - X^2``; near ``X = 1`` (the
    removable 0/0 of the two closed forms) its Taylor series is used, and the small-``X``
    cancellations in ``g`` and ``h`` are removed algebraically (see :func:`nfw_terms`).
    The radius is floored at a tiny value, so the centre gives ``alpha = 0``, a finite
    (large) ``kappa`` and finite gradients. Measured against 40-digit arithmetic over
    1e-12 <= X <= 1e5: relative errors below 5e-16 (float64) and 3e-7 (float32, above
    the 1e-8 arcsec radius floor).

    Parameters: ``Rs`` (arcsec, > 0), ``alpha_Rs`` (arcsec, >= 0), ``center_x``,
    ``center_y`` (arcsec, default 0).

    #### Example

    >>> ax, ay = NFW().deflection([2.0], [0.0], Rs=2.0, alpha_Rs=0.5)   # ax == 0.5
    """

    name = "NFW"
    param_names = ("Rs", "alpha_Rs", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("Rs",)
    nonnegative_params = ("alpha_Rs",)

    def default_priors(self) -> dict:
        """For a galaxy- or group-scale halo: ``Rs`` log-uniform in [0.05, 5] F and
        ``alpha_Rs`` (the deflection at ``Rs``, comparable to an Einstein radius) uniform in
        [0.01, 0.5] F, ``F`` the field of view."""
        return {"Rs": {"log_uniform": [0.05, 5.0], "scale": "fov"},
                "alpha_Rs": {"uniform": [0.01, 0.5], "scale": "fov"}}

    def _deflection(self, x, y, Rs, alpha_Rs, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        X = safe_norm(dx, dy) / Rs
        scale = alpha_Rs / (G1 * Rs) * nfw_terms(X).G
        return scale * dx, scale * dy

    def _convergence(self, x, y, Rs, alpha_Rs, center_x, center_y):
        X = safe_norm(x - center_x, y - center_y) / Rs
        return alpha_Rs / (2.0 * G1 * Rs) * nfw_terms(X).B

    def _potential(self, x, y, Rs, alpha_Rs, center_x, center_y):
        X = safe_norm(x - center_x, y - center_y) / Rs
        return alpha_Rs * Rs / (2.0 * G1) * nfw_terms(X).h
