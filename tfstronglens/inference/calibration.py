r"""Calibration of posterior estimators from draws: interval coverage and TARP.

A posterior estimator :math:`q(\theta \mid d)` (an amortized network, a Laplace
approximation, a sampler) is *calibrated* when its credible regions contain the truth as
often as they claim, on data simulated from the prior. These functions measure that on a
set of ``N`` simulations with known truths :math:`\theta_i` and ``S`` draws of the
estimator's posterior for each.

#### Interval coverage (per parameter)

:func:`interval_coverage`: the fraction of simulations whose true value lies in the central
``level`` interval of its marginal draws (between the ``(1 - level)/2`` and
``(1 + level)/2`` quantiles). For a calibrated estimator it is ``level`` up to the binomial
scatter :math:`\sqrt{\ell (1 - \ell) / N}` (1.0 point at ``N = 2000``, ``level = 0.68``).
Marginal coverage is necessary, not sufficient: an estimator that ignores correlations can
have perfect marginals.

#### TARP (joint)

:func:`tarp_coverage`: Tests of Accuracy with Random Points (Lemos et al. 2023,
arXiv:2302.03026). For each simulation pick a random reference point :math:`\theta_r`; the
credibility of the truth is the fraction of draws closer to the reference than the truth,
:math:`f_i = \frac1S\sum_s [\lVert\theta_{i,s} - \theta_r\rVert < \lVert\theta_i -
\theta_r\rVert]`. The expected coverage probability :math:`\mathrm{ECP}(\alpha) =
\frac1N\sum_i [f_i < \alpha]` equals :math:`\alpha` for every :math:`\alpha` if (and, with
references drawn from a distribution that covers the support, only if) the estimator is
the true posterior. Distances are measured after dividing each parameter by the truths'
standard deviation, and references are drawn uniformly in the box spanned by the truths.
The largest deviation :math:`\max_\alpha |\mathrm{ECP}(\alpha) - \alpha|` is the summary;
its scatter for a calibrated estimator is about :math:`1/\sqrt{N}` (a Kolmogorov-Smirnov
distance of ``N`` uniform credibilities: 95% of calibrated runs stay below
:math:`1.36/\sqrt{N}`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["interval_coverage", "tarp_coverage", "TARPResult"]


def _check(samples, truths):
    samples = np.asarray(samples, np.float64)
    truths = np.asarray(truths, np.float64)
    if samples.ndim == 2:
        samples = samples[..., None]
    if truths.ndim == 1:
        truths = truths[:, None]
    if samples.ndim != 3 or truths.ndim != 2 or samples.shape[0] != truths.shape[0] \
            or samples.shape[2] != truths.shape[1]:
        raise ValueError(f"samples must be [N, S, D] and truths [N, D]; got {samples.shape} "
                         f"and {truths.shape}")
    if samples.shape[1] < 2:
        raise ValueError(f"samples need at least 2 draws per simulation, got {samples.shape[1]}")
    if not (np.all(np.isfinite(samples)) and np.all(np.isfinite(truths))):
        raise ValueError("samples and truths must be finite")
    return samples, truths


def interval_coverage(samples, truths, levels=(0.68, 0.95)) -> dict:
    """Per-parameter coverage of central credible intervals.

    Args:
      samples: ``[N, S, D]`` posterior draws (``[N, S]`` for one parameter).
      truths: ``[N, D]`` true values.
      levels: credible levels in ``(0, 1)``.

    Returns ``{level: [D] fraction of simulations whose truth is inside}``.
    """
    samples, truths = _check(samples, truths)
    out = {}
    for level in levels:
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"levels must lie in (0, 1), got {level!r}")
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[float(level)] = np.mean((truths >= lo) & (truths <= hi), axis=0)
    return out


@dataclasses.dataclass(frozen=True)
class TARPResult:
    """``alpha`` ``[K]`` credibility levels, ``ecp`` ``[K]`` expected coverage at each,
    ``credibility`` ``[N]`` per simulation, ``max_deviation`` = max |ecp - alpha|."""

    alpha: np.ndarray
    ecp: np.ndarray
    credibility: np.ndarray
    max_deviation: float


def tarp_coverage(samples, truths, num_alpha: int = 101, seed: int = 0) -> TARPResult:
    """TARP expected coverage of a posterior estimator (see the module docs).

    Args:
      samples: ``[N, S, D]`` posterior draws for ``N`` simulations.
      truths: ``[N, D]`` their true parameters.
      num_alpha: number of credibility levels in ``[0, 1]``.
      seed: seed of the random reference points.
    """
    samples, truths = _check(samples, truths)
    scale = truths.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    s, t = samples / scale, truths / scale
    rng = np.random.default_rng(seed)
    ref = rng.uniform(t.min(axis=0), t.max(axis=0), size=t.shape)
    d_true = np.linalg.norm(t - ref, axis=-1)
    d_draw = np.linalg.norm(s - ref[:, None, :], axis=-1)
    cred = np.mean(d_draw < d_true[:, None], axis=1)
    alpha = np.linspace(0.0, 1.0, int(num_alpha))
    ecp = np.mean(cred[None, :] < alpha[:, None], axis=1)
    return TARPResult(alpha, ecp, cred, float(np.max(np.abs(ecp - alpha))))
