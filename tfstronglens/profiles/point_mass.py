"""Point mass lens."""

from __future__ import annotations

import tensorflow as tf

from ._geometry import safe_norm
from .base import MassProfile


class PointMass(MassProfile):
    r"""Point mass (lenstronomy ``POINT_MASS``).

    #### Mathematical details

        alpha = theta_E^2 (theta - c) / r^2,   psi = theta_E^2 ln r,   kappa = 0 for r > 0

    (all the mass sits in a delta function at the centre, ``M = pi theta_E^2 Sigma_crit``).
    Parameters: ``theta_E`` (arcsec, > 0), ``center_x``, ``center_y`` (arcsec). The radius is
    floored at a tiny value so that the centre gives finite numbers.
    """

    name = "POINT_MASS"
    param_names = ("theta_E", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("theta_E",)

    def _deflection(self, x, y, theta_E, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        r = safe_norm(dx, dy)
        scale = theta_E * theta_E / (r * r)
        return scale * dx, scale * dy

    def _potential(self, x, y, theta_E, center_x, center_y):
        return theta_E * theta_E * tf.math.log(safe_norm(x - center_x, y - center_y))

    def _convergence(self, x, y, theta_E, center_x, center_y):
        return tf.zeros_like(x + y + theta_E + center_x + center_y)
