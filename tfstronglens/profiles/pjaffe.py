"""Pseudo-Jaffe (dual pseudo-isothermal) profile."""

from __future__ import annotations

import tensorflow as tf

from .base import MassProfile

__all__ = ["PseudoJaffe"]


class PseudoJaffe(MassProfile):
    r"""Spherical pseudo-Jaffe / dual pseudo-isothermal profile (lenstronomy ``PJAFFE``;
    Eliasdottir et al. 2007, arXiv 0710.5636, appendix A).

    #### Mathematical details

    The 3D density ``rho0 / ((1 + r^2/Ra^2)(1 + r^2/Rs^2))`` projects to

        kappa(R) = sigma0 Ra Rs / (Rs - Ra) (1 / sqrt(Ra^2 + R^2) - 1 / sqrt(Rs^2 + R^2)),

    an isothermal profile with a core ``Ra`` and a truncation ``Rs``; total mass
    ``2 pi sigma0 Ra Rs Sigma_crit`` (arcsec^2 units). It is the subhalo profile of the
    gravitational-imaging detections (Vegetti et al. 2010, 2012; there ``Ra -> 0``, i.e. a
    truncated SIS with ``b = 2 sigma0 Ra`` and tidal radius ``Rs``). Written with
    ``A = sqrt(Ra^2 + R^2)``, ``S = sqrt(Rs^2 + R^2)``, which removes the ``1/(Rs - Ra)``:

        kappa = sigma0 Ra Rs (Ra + Rs) / (A S (A + S)),
        alpha = 2 sigma0 Ra Rs (theta - c) (1/(A + Ra) + 1/(S + Rs)) / (A + S),
        psi   = 2 sigma0 Ra Rs (g(Ra) - g(Rs)) / (Rs - Ra),
        g(t)  = sqrt(t^2 + R^2) - t ln(t + sqrt(t^2 + R^2))

    (lenstronomy's potential; at ``Ra = Rs`` its limit ``2 sigma0 Ra^2 ln(Ra + A)``). The
    values are symmetric in ``Ra`` and ``Rs`` (lenstronomy sorts them) and smooth at the
    centre, where ``alpha = 0``.

    Parameters: ``sigma0`` (>= 0), ``Ra``, ``Rs`` (arcsec, > 0), ``center_x``, ``center_y``.
    """

    name = "PJAFFE"
    param_names = ("sigma0", "Ra", "Rs", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("Ra", "Rs")
    nonnegative_params = ("sigma0",)

    def default_priors(self) -> dict:
        """For a galaxy-scale deflector: ``sigma0`` (the central convergence) log-uniform in
        [0.1, 1e4], the core ``Ra`` log-uniform in [1e-3, 0.1] F and the truncation ``Rs``
        in [0.1, 10] F (``F`` the field of view; disjoint ranges, so the symmetric pair is
        not bimodal)."""
        return {"sigma0": {"log_uniform": [0.1, 1e4]},
                "Ra": {"log_uniform": [1e-3, 0.1], "scale": "fov"},
                "Rs": {"log_uniform": [0.1, 10.0], "scale": "fov"}}

    @staticmethod
    def _roots(x, y, Ra, Rs, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        r2 = dx * dx + dy * dy
        return dx, dy, r2, tf.sqrt(Ra * Ra + r2), tf.sqrt(Rs * Rs + r2)

    def _deflection(self, x, y, sigma0, Ra, Rs, center_x, center_y):
        dx, dy, _, A, S = self._roots(x, y, Ra, Rs, center_x, center_y)
        scale = 2.0 * sigma0 * Ra * Rs * (1.0 / (A + Ra) + 1.0 / (S + Rs)) / (A + S)
        return scale * dx, scale * dy

    def _convergence(self, x, y, sigma0, Ra, Rs, center_x, center_y):
        _, _, _, A, S = self._roots(x, y, Ra, Rs, center_x, center_y)
        return sigma0 * Ra * Rs * (Ra + Rs) / (A * S * (A + S))

    def _potential(self, x, y, sigma0, Ra, Rs, center_x, center_y):
        _, _, _, A, S = self._roots(x, y, Ra, Rs, center_x, center_y)
        close = tf.abs(Rs - Ra) < 1e-6 * (Ra + Rs)
        diff = tf.where(close, tf.ones_like(Rs - Ra), Rs - Ra)
        g_a = A - Ra * tf.math.log(Ra + A)
        g_s = S - Rs * tf.math.log(Rs + S)
        general = (g_a - g_s) / diff
        limit = tf.math.log(Ra + A)  # -g'(t) at t = Ra
        return 2.0 * sigma0 * Ra * Rs * tf.where(close, limit, general)
