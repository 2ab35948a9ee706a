r"""Posterior of the subhalo population from many lenses, with a learned likelihood ratio.

A :class:`~tfstronglens.models.ratio.PopulationRatioEstimator` gives, per lens ``i``,
``f(x_i, theta) = log p(x_i | theta) + c(x_i)``. Lenses are independent given the
population parameters ``theta``, so on a grid over the prior box

    log p(theta | x_1..x_N) = sum_i f(x_i, theta) + log p(theta) + const,

normalised over the grid (:func:`population_posterior`). The prior is uniform on its box,
so the posterior is the normalised product of the lenses' ratios.

:class:`PopulationPosterior` holds the grid posterior and its summaries: per parameter the
marginal density, mean, standard deviation and the 2.5/16/50/84/97.5 percentiles (from
the marginal's piecewise-linear CDF), and the highest-posterior-density (HPD) level of
any point (:meth:`PopulationPosterior.hpd_level`: the posterior mass of the grid cells
denser than the point's), with which :func:`ensemble_coverage` checks calibration: over
ensembles simulated with ``theta`` from the prior, the true ``theta`` lies inside the
``alpha`` HPD region in a fraction ``alpha`` of them if the estimator is honest.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

__all__ = ["PopulationPosterior", "population_posterior", "ensemble_coverage", "grid_points",
           "PERCENTILES"]

#: The percentiles every summary reports.
PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)


@dataclasses.dataclass(frozen=True)
class PopulationPosterior:
    """The posterior of population parameters on a regular grid (see the module docs).

    Fields: ``param_names``; ``axes`` (one 1-D grid per parameter); ``log_posterior``
    (shape ``[len(axis) for axis in axes]``, normalised so that ``exp`` sums to 1 over the
    grid points); ``num_lenses``.
    """

    param_names: tuple
    axes: tuple
    log_posterior: np.ndarray
    num_lenses: int

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_posterior)

    def marginal(self, name: str):
        """``(axis, density)`` of one parameter (density per unit of it, integrating to 1
        with the trapezoid rule)."""
        j = self._index(name)
        p = self.probabilities
        m = p.sum(axis=tuple(k for k in range(p.ndim) if k != j))
        axis = self.axes[j]
        return axis, m / np.trapezoid(m, axis)

    def _index(self, name):
        if name not in self.param_names:
            raise ValueError(f"unknown parameter {name!r}; this posterior is over "
                             f"{list(self.param_names)}")
        return self.param_names.index(name)

    def percentiles(self, name: str, q=PERCENTILES) -> np.ndarray:
        """Percentiles of a marginal from its piecewise-linear density's CDF."""
        axis, dens = self.marginal(name)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(axis))])
        cdf /= cdf[-1]
        return np.interp(np.asarray(q, float) / 100.0, cdf, axis)

    def summary(self) -> dict:
        """Per parameter: ``mean``, ``std`` and the percentiles ``p2.5 ... p97.5``."""
        out = {}
        for name in self.param_names:
            axis, dens = self.marginal(name)
            mean = np.trapezoid(axis * dens, axis)
            std = np.sqrt(max(np.trapezoid((axis - mean) ** 2 * dens, axis), 0.0))
            out[name] = {"mean": float(mean), "std": float(std),
                         **{f"p{q:g}": float(v) for q, v in zip(PERCENTILES,
                                                                self.percentiles(name))}}
        return out

    def hpd_level(self, theta) -> float:
        """The smallest HPD credible level whose region contains ``theta`` (``[D]``): the
        posterior mass of grid points denser than the (multilinearly interpolated)
        density at ``theta``. Uniform in ``[0, 1]`` over ensembles if calibrated."""
        from scipy.interpolate import RegularGridInterpolator

        theta = np.asarray(theta, float).reshape(-1)
        if theta.shape != (len(self.param_names),):
            raise ValueError(f"theta must have {len(self.param_names)} entries "
                             f"({list(self.param_names)}), got {theta.shape[0]}")
        lp = self.log_posterior
        at = float(RegularGridInterpolator(self.axes, lp)(theta[None])[0])
        p = self.probabilities
        return float(p[lp > at].sum())

    def to_dict(self) -> dict:
        """JSON-able: the summary, the grid axes and the log posterior (nested lists)."""
        return {"num_lenses": int(self.num_lenses), "param_names": list(self.param_names),
                "summary": self.summary(),
                "grid": {n: a.tolist() for n, a in zip(self.param_names, self.axes)},
                "log_posterior": self.log_posterior.tolist()}


def population_posterior(estimator, inputs=None, points_per_axis: int = 41,
                         log_ratios=None, axes=None) -> PopulationPosterior:
    """The grid posterior of ``estimator``'s population parameters given lenses.

    Args:
      estimator: a :class:`~tfstronglens.models.ratio.PopulationRatioEstimator`.
      inputs: ``{"image": [N, n, n], "noise": [N, n, n] or [N]}``, the ``N`` lenses.
      points_per_axis: grid points per parameter over its prior range.
      log_ratios: instead of ``inputs``, precomputed ``f(x_i, grid) [N, G]`` (from
        :meth:`~tfstronglens.models.ratio.PopulationRatioEstimator.log_ratio_grid` on
        :func:`grid_points` of ``axes``), e.g. to reuse them across ensembles.
      axes: the grid axes (default :meth:`PopulationPrior.grid`).
    """
    prior = estimator.prior
    axes = tuple(np.asarray(a, float) for a in (axes or prior.grid(points_per_axis)))
    shape = tuple(len(a) for a in axes)
    if log_ratios is None:
        if inputs is None:
            raise ValueError("give the lenses (inputs) or their log_ratios")
        log_ratios = estimator.log_ratio_grid(inputs, grid_points(axes))
    log_ratios = np.asarray(log_ratios, np.float64)
    if log_ratios.ndim != 2 or log_ratios.shape[1] != int(np.prod(shape)):
        raise ValueError(f"log_ratios must be [num_lenses, {int(np.prod(shape))}], got "
                         f"shape {log_ratios.shape}")
    if len(log_ratios) == 0:
        raise ValueError("no lenses: the posterior needs at least one image")
    total = log_ratios.sum(0)  # the uniform prior is a constant on the grid
    total = total - total.max()
    total = total - np.log(np.exp(total).sum())
    return PopulationPosterior(tuple(prior.names), axes, total.reshape(shape),
                               int(len(log_ratios)))


def grid_points(axes) -> np.ndarray:
    """All points ``[G, D]`` of the grid with 1-D ``axes`` (C order, as
    :attr:`PopulationPosterior.log_posterior` is laid out)."""
    return np.array(list(itertools.product(*axes)), np.float64)


def ensemble_coverage(hpd_levels, levels=(0.68, 0.95)) -> dict:
    """Empirical coverage of HPD regions: for each nominal level, the fraction of
    ensembles whose true parameters lie inside (HPD level of the truth < nominal), with
    its binomial standard error. ``hpd_levels``: :meth:`PopulationPosterior.hpd_level`
    of the truth, one per ensemble."""
    h = np.asarray(hpd_levels, float)
    if h.ndim != 1 or len(h) == 0:
        raise ValueError("hpd_levels must be a non-empty 1-D list")
    out = {}
    for lv in levels:
        frac = float(np.mean(h < lv))
        out[float(lv)] = {"coverage": frac, "stderr": float(np.sqrt(lv * (1 - lv) / len(h)))}
    return out
