"""Singular isothermal sphere."""

from __future__ import annotations

from ._geometry import safe_norm
from .base import MassProfile


class SIS(MassProfile):
    r"""Singular isothermal sphere (lenstronomy ``SIS``).

    #### Mathematical details

    With ``r = |theta - c|``:

        kappa(r) = theta_E / (2 r),   psi(r) = theta_E r,   alpha = theta_E (theta - c) / r.

    Parameters: ``theta_E`` (Einstein radius, arcsec, > 0), ``center_x``, ``center_y``
    (arcsec, default 0). At the centre the deflection is set to 0 (its angular average);
    values and gradients stay finite there.

    #### Example

    >>> ax, ay = SIS().deflection([1.0], [0.0], theta_E=1.2)   # ax == 1.2
    """

    name = "SIS"
    param_names = ("theta_E", "center_x", "center_y")
    defaults = {"center_x": 0.0, "center_y": 0.0}
    positive_params = ("theta_E",)

    def _deflection(self, x, y, theta_E, center_x, center_y):
        dx, dy = x - center_x, y - center_y
        r = safe_norm(dx, dy)
        return theta_E * dx / r, theta_E * dy / r

    def _potential(self, x, y, theta_E, center_x, center_y):
        return theta_E * safe_norm(x - center_x, y - center_y)

    def _convergence(self, x, y, theta_E, center_x, center_y):
        return 0.5 * theta_E / safe_norm(x - center_x, y - center_y)
