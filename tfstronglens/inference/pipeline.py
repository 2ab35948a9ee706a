r"""The end-to-end inference sequence MAP -> VI -> HMC, its summaries and its output files.

:func:`fit_lens` runs, on one :class:`~tfstronglens.inference.LensModel` and one image,

1. **MAP**: :func:`~tfstronglens.inference.find_map`, ``num_starts`` starts drawn from the
   prior and optimised together (one batched tensor) by Adam, then polished by
   Levenberg-Marquardt (``map_polish_steps``);
2. for ``method="map"``: the **Laplace approximation** at the MAP
   (:func:`~tfstronglens.inference.laplace_approximation`: a Gaussian in the unconstrained
   coordinates with the inverse Hessian as covariance), whose draws, mapped to the
   constrained parameters, give the reported intervals;
3. for ``"vi"`` and ``"hmc"``: **variational inference**
   (:func:`~tfstronglens.inference.fit_vi`, full-rank Gaussian by default) started at the
   MAP;
4. for ``"hmc"``: **NUTS** or **ChEES-HMC** (``hmc_kernel``;
   :func:`~tfstronglens.inference.sample_hmc`), ``num_chains`` chains started from VI
   draws, preconditioned with the VI covariance as the first metric (``x = L u`` with
   ``L L^T`` the VI covariance), then a dense metric and the step size adapted in burn-in;
   with ``neutra=True`` (and ``vi_surrogate="iaf"``) the chains run in the base space of
   the fitted flow instead (NeuTra-HMC, Hoffman et al. 2019); R-hat and bulk/tail ESS per
   parameter (Vehtari et al. 2021). Draws with divergent transitions, an R-hat above 1.01
   or undefined (NaN) or a bulk ESS below 100 per chain are reported in
   ``FitResult.problems``, in ``summary.json`` and by a :class:`ConvergenceWarning`;
5. optionally the **subhalo detection** likelihood-ratio test
   (:func:`~tfstronglens.inference.detect_subhalo`), whose no-subhalo fit starts from the
   MAP's lens and source parameters (a few jittered starts).

This is the sequence of GIGA-Lens (Gu et al. 2022). :func:`write_fit_outputs` writes
``summary.json``, the samples (``samples.npz`` and, with ArviZ, ``samples.nc``) and PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np
import tensorflow as tf

from ..io._atomic import atomic_output
from ._util import as_seed, positive_int
from .amortized import AMORTIZED_INITS, amortized_starts
from .detection import SubhaloDetection, calibrate_null, detect_subhalo, subhalo_point
from .diagnostics import save_samples, summarize
from .map import MAPResult, find_map, polished_starts
from .mcmc import sample_hmc
from .kernels import SAMPLERS, self_tuning_samplers
from .model import LensModel
from .vi import fit_vi, laplace_approximation

__all__ = ["FitResult", "fit_lens", "write_fit_outputs", "METHODS", "FIT_OUTPUT_FILES",
           "ConvergenceWarning", "hmc_advice"]

METHODS = ("map", "vi", "hmc")

#: The files :func:`write_fit_outputs` writes into its folder (``samples.nc`` only when
#: ArviZ is installed).
FIT_OUTPUT_FILES = ("summary.json", "samples.npz", "samples.nc", "fit.png", "corner.png")

# What converged HMC draws reach (Vehtari et al. 2021): a rank-normalised split R-hat
# below 1.01 and a bulk ESS of at least 100 per chain for every parameter, and no
# divergent transition.
_MAX_R_HAT = 1.01
_MIN_ESS_BULK_PER_CHAIN = 100


class ConvergenceWarning(UserWarning):
    """The HMC draws of :func:`fit_lens` did not converge (the reasons are in
    :attr:`FitResult.problems`)."""


@dataclasses.dataclass(frozen=True, repr=False)
class FitResult:
    """The result of :func:`fit_lens`.

    Attributes:
      method: ``"map"``, ``"vi"`` or ``"hmc"``.
      param_names: the model's ``D`` flat parameter names.
      samples: ``[num_draws, num_chains, D]`` posterior draws of the constrained
        parameters in ``param_names`` order (``num_chains = 1`` for the Laplace and VI
        draws, which are independent).
      summary: ``{name: {mean, std, p16, p50, p84[, r_hat, ess_bulk, ess_tail]}}`` for
        every scalar parameter (R-hat and ESS only for HMC).
      problems: plain statements of why the HMC draws did not converge (divergent
        transitions, an undefined (NaN) or large R-hat, a small bulk ESS); empty when
        they did, and for ``"map"`` and ``"vi"``.
      best_fit: ``{name: value}`` at the MAP.
      subhalo_masses: the same statistics of the profile-robust subhalo masses
        (``subhalo.k.mass_aperture``, ``mass_eff``, ``r_pert``;
        :meth:`LensModel.subhalo_masses`) over the draws; empty without subhalos.
      map, laplace, vi, mcmc, detection: the stage results (``None`` where not run).
      null_calibration: the detection's :class:`~tfstronglens.inference.NullCalibration`
        (``None`` unless ``null_simulations`` was given).
      timings: seconds per stage and in total.
      settings: the arguments of the run.
      model, data: what was fitted.
    """

    method: str
    param_names: list
    samples: np.ndarray
    summary: dict
    problems: list
    best_fit: dict
    subhalo_masses: dict
    map: object
    laplace: object
    vi: object
    mcmc: object
    detection: object
    timings: dict
    settings: dict
    model: LensModel
    data: np.ndarray
    null_calibration: object = None

    def __repr__(self):
        return (f"FitResult(method={self.method!r}, D={len(self.param_names)}, "
                f"draws={self.samples.shape[0]}x{self.samples.shape[1]}, "
                f"total={self.timings.get('total', float('nan')):.1f}s)")


def _constrained(model: LensModel, x) -> np.ndarray:
    """Unconstrained ``x [..., D]`` -> constrained values ``[..., D]`` in ``param_names`` order."""
    x = np.asarray(x)
    batch = x.shape[:-1]
    d = model.from_flat(tf.constant(x.reshape(-1, x.shape[-1]), model.dtype))
    parts = [np.asarray(d[b.name]).reshape(int(np.prod(batch, dtype=np.int64)), -1)
             for b in model.parameter_blocks]
    out = np.concatenate(parts, axis=-1)
    if out.shape[-1] != len(model.param_names):  # pragma: no cover - internal consistency
        raise RuntimeError("constrained parameters do not match param_names")
    return out.reshape(batch + (out.shape[-1],))


def _scalar_names(model: LensModel):
    """Names of the scalar parameters (event-shaped ones such as a pixelated source's
    image are kept in the samples but left out of the summary)."""
    event = [b.name for b in model.parameter_blocks if b.size != 1 or b.event_shape]
    return [n for n in model.param_names if not any(n.startswith(e + ".") for e in event)]


def _simple_summary(draws: np.ndarray, names, keep) -> dict:
    """mean, std, 16/50/84 percentiles of independent draws ``[n, D]``."""
    out = {}
    pct = np.percentile(draws, [16, 50, 84], axis=0)
    for i, name in enumerate(names):
        if name in keep:
            out[name] = {"mean": float(np.mean(draws[:, i])), "std": float(np.std(draws[:, i])),
                         "p16": float(pct[0, i]), "p50": float(pct[1, i]),
                         "p84": float(pct[2, i])}
    return out


def hmc_advice(option=str) -> str:
    """What to change when the HMC draws did not converge (:attr:`FitResult.problems`),
    naming :func:`fit_lens`'s arguments through ``option`` (the command line passes a
    function that returns its flags)."""
    return (f"warm up longer ({option('num_burnin')}: the step size and metric adapt "
            f"there), draw more ({option('num_results')}), or start the chains closer to the "
            f"posterior (more {option('map_steps')} or {option('vi_steps')})")


def _hmc_problems(mcmc, summary: dict) -> list:
    """Plain statements of why the HMC draws of ``mcmc`` (an :class:`MCMCResult`) did not
    converge, given their ``summary`` (per parameter ``r_hat`` and ``ess_bulk``): divergent
    transitions, R-hat undefined (NaN: chains that never moved) or above 1.01, bulk ESS
    below 100 per chain. Empty when nothing does."""
    problems = []
    diverging = np.asarray(mcmc.sample_stats["diverging"])
    n_div, n = int(diverging.sum()), int(diverging.size)
    if n_div:
        problems.append(f"{'all' if n_div == n else n_div} of the {n} HMC draws diverged")
    r_hat = {k: v["r_hat"] for k, v in summary.items()}
    undefined = [k for k, v in r_hat.items() if not np.isfinite(v)]
    if undefined:
        problems.append(f"R-hat is undefined (NaN) for {len(undefined)} of the {len(r_hat)} "
                        "parameters: the chains did not move")
    high = {k: v for k, v in r_hat.items() if np.isfinite(v) and v > _MAX_R_HAT}
    if high:
        worst = max(high, key=high.get)
        problems.append(f"R-hat is above {_MAX_R_HAT} for {len(high)} parameters (up to "
                        f"{high[worst]:.3g}, {worst}): the chains disagree")
    min_ess = _MIN_ESS_BULK_PER_CHAIN * int(mcmc.num_chains)
    ess = {k: v["ess_bulk"] for k, v in summary.items() if np.isfinite(v["ess_bulk"])}
    low = {k: v for k, v in ess.items() if v < min_ess}
    if low:
        worst = min(low, key=low.get)
        problems.append(f"the bulk ESS is below {min_ess} ({_MIN_ESS_BULK_PER_CHAIN} per "
                        f"chain) for {len(low)} parameters (down to {low[worst]:.0f}, "
                        f"{worst})")
    return problems


def _subhalo_mass_summary(model: LensModel, x, max_draws: int = 4000) -> dict:
    """Posterior summaries of the profile-robust subhalo masses
    (:meth:`LensModel.subhalo_masses`) over unconstrained draws ``x [n, D]`` (thinned to at
    most ``max_draws``)."""
    if not model.num_subhalos:
        return {}
    x = np.asarray(x)
    x = x[:: max(1, len(x) // max_draws)]
    derived = model.subhalo_masses(model.from_flat(tf.constant(x, model.dtype)))
    names = list(derived)
    table = np.stack([np.asarray(derived[n], np.float64) for n in names], axis=-1)
    return _simple_summary(table, names, set(names))


# Levenberg-Marquardt polishing of the MAP costs 2 D renders per start and iteration.
_MAX_LM_PARAMS = 128


def _smooth_likelihood_fit(model: LensModel, d, map_res, det_starts, det_steps,
                           map_learning_rate, seed, progress):
    """The maximum-likelihood fit of the model without subhalos (the detection's ``H0``),
    started at the MAP's lens and source: a few jittered starts converge much faster
    than starts from the prior."""
    m0 = model.replace(num_subhalos=0) if model.num_subhalos else model
    init0 = {k: v for k, v in map_res.params.items() if not k.startswith("subhalo.")}
    return find_map(m0, d, num_starts=max(1, min(8, det_starts)), num_steps=det_steps,
                    learning_rate=0.2 * map_learning_rate, seed=seed, init=init0,
                    init_jitter=0.02, objective="likelihood", progress=progress)


def _smooth_first_search(model: LensModel, d, seeds, *, num_starts, map_steps,
                         map_learning_rate, lm_steps, map_init, map_init_jitter, det_starts,
                         det_steps, det_lr, scan_grid, progress):
    """The MAP and the detection of a one-subhalo model, smooth model first (see
    :func:`fit_lens`'s ``scan_grid``). Returns ``(map_result, detection, seconds spent
    in the detection)``."""
    m0 = model.replace(num_subhalos=0)
    init0 = None if map_init is None else {k: v for k, v in map_init.items()
                                           if k in m0.parameters}
    # (only the best smooth mode matters here: the Levenberg-Marquardt polish of at
    # most the best 16 starts after Adam, not of all)
    map0 = find_map(m0, d, num_starts=num_starts, num_steps=map_steps,
                    learning_rate=map_learning_rate, seed=seeds[0], lm_steps=lm_steps,
                    lm_starts=min(16, num_starts, polished_starts(m0.num_params)),
                    init=init0 or None,
                    init_jitter=map_init_jitter if init0 else 0.0, progress=progress)
    t = time.perf_counter()
    fit0 = _smooth_likelihood_fit(model, d, map0, det_starts, max(1, det_steps // 2),
                                  map_learning_rate, seeds[4], progress)
    detection = detect_subhalo(model, d, num_starts=det_starts, num_steps=det_steps,
                               learning_rate=det_lr, seed=seeds[3], fit_without=fit0,
                               scan_grid=scan_grid, progress=progress)
    t_detection = time.perf_counter() - t
    # the posterior mode with the subhalo: from the detection's fits, and from the smooth
    # MAP with the lightest subhalo at the detection's position (where the prior may win)
    light = subhalo_point(model, map0.x, model.subhalo_mass_range[0], detection.center_x,
                          detection.center_y)
    fits = detection.fit_with
    best = np.argsort(-np.where(np.isfinite(fits.all_objective), fits.all_objective,
                                -np.inf), kind="stable")[:3]
    starts = np.concatenate([np.asarray(fits.all_x, np.float64)[best], light], 0)
    # (Levenberg-Marquardt alone when it runs: no compiled posterior gradient needed)
    map_res = find_map(model, d, num_starts=len(starts),
                       num_steps=0 if lm_steps else max(1, det_steps // 10),
                       learning_rate=0.25 * det_lr, seed=seeds[0], init=starts,
                       lm_steps=lm_steps, progress=progress)
    return map_res, detection, t_detection


def fit_lens(model: LensModel, data=None, method: str = "hmc", *, seed: int = 0,
             num_starts: int = 64, map_steps: int = 500, map_learning_rate: float = 0.05,
             map_polish_steps: int = 30,
             vi_surrogate: str = "full_rank", vi_steps: int = 500,
             vi_learning_rate: float = 0.01, num_samples: int = 2000, num_chains: int = 8,
             num_results: int = 500, num_burnin: int = 500, max_tree_depth: int = 8,
             target_accept: float | None = None, adapt_mass_matrix: str | None = "dense",
             hmc_kernel: str = "nuts", neutra: bool = False, detect: bool | None = None,
             detection_starts: int | None = None, detection_steps: int | None = None,
             detection_learning_rate: float | None = None, scan_grid: int | None = None,
             null_simulations: int = 0,
             checkpoint: str | None = None, progress: bool = True,
             hmc_jit_compile: bool | None = None, map_result=None, map_init=None,
             map_init_jitter: float = 0.1, init=None) -> FitResult:
    r"""Fit ``model`` to ``data``: MAP, then Laplace (``"map"``), VI (``"vi"``) or VI + NUTS
    (``"hmc"``), then optionally the subhalo detection test (see module docs).

    Args:
      model: a :class:`~tfstronglens.inference.LensModel`.
      data: the image ``[N, N]`` (e-/s per pixel; default: the model's data).
      method: ``"map"``, ``"vi"`` or ``"hmc"``.
      seed: integer seed of the whole run (reproducible).
      num_starts, map_steps, map_learning_rate: multi-start MAP (Adam in unconstrained
        space).
      map_polish_steps: then up to this many Levenberg-Marquardt iterations on the best
        starts (as many as keep an iteration within 2048 renders: all 64 of a 14-parameter
        model, 13 of a 77-parameter one; ``find_map``'s ``lm_starts``;
        :func:`~tfstronglens.inference.polish_levenberg_marquardt`; skipped for models
        with more than 128 parameters, e.g. pixelated sources, whose finite-difference
        Jacobian would cost ``2 D`` renders per start). 0 turns it off.
      vi_surrogate, vi_steps, vi_learning_rate: the VI stage (``"mean_field"``,
        ``"full_rank"`` or ``"iaf"``).
      num_samples: draws from the Laplace or VI posterior to summarise.
      num_chains, num_results, num_burnin, max_tree_depth, target_accept: the sampler
        (for ChEES ``max_tree_depth`` caps the trajectory at ``2**max_tree_depth - 1``
        leapfrog steps). ``target_accept`` defaults to 0.8 for NUTS (mean acceptance
        along the trajectory) and 0.651 for ChEES, whose step size is adapted on the
        *harmonic* mean over chains, dominated by the worst transitions (0.651 is the
        optimal HMC acceptance for Gaussian targets, Beskos et al. 2013; on the
        ``benchmarks/fit.py`` lens it gives a mean acceptance of 0.97 and 1.2x / 1.8x
        the minimum bulk / tail ESS per gradient of 0.8).
      adapt_mass_matrix: ``"dense"`` (default), ``"diag"`` or ``None``: learn the
        metric during burn-in in Stan's windows, starting from the VI covariance
        (:func:`~tfstronglens.inference.sample_hmc`); ``None`` keeps the VI covariance.
      hmc_kernel: ``"nuts"`` (default) or ``"chees"``: ChEES-HMC (jittered fixed-length
        trajectories whose length is adapted across chains; one step size shared by the
        chains), which suits many chains batched together (e.g. ``num_chains=32``) and
        compiles much faster than NUTS.
      neutra: NeuTra-HMC (Hoffman et al. 2019, arXiv:1903.03704): sample in the base
        space of the fitted VI surrogate, ``x = T(z)`` with ``T`` the surrogate's bijector
        (for ``vi_surrogate="iaf"`` a normalizing flow), i.e. the target
        ``log p~(T(z)) + log |det dT/dz|``, which is close to ``N(0, I)`` where the flow
        fits the posterior (also curved or skewed parts a metric cannot whiten). Chains
        start from base-space draws ``z ~ N(0, I)``; the metric starts at the identity and is
        adapted as usual; draws are mapped back through ``T`` (``mcmc.samples`` holds the
        ``x``; ``mcmc.base_samples`` the ``z``; ``mcmc.log_prob`` and ``mcmc.mass_matrix``
        refer to ``z``). The flow is kept fixed while sampling, so the chain targets the
        exact posterior whatever the flow's quality. Used by ``method="hmc"`` only.
      detect: run :func:`~tfstronglens.inference.detect_subhalo` (default: when the
        model has subhalos); detection_starts, detection_steps, detection_learning_rate:
        its maximum-likelihood fits (default: ``num_starts``, ``map_steps`` and
        ``0.4 map_learning_rate``: smaller steps keep the converged lens and source while
        the subhalo, started on a grid of positions, moves).
      scan_grid: for a model with one subhalo whose detection runs, the subhalo is
        searched *smooth first*: the MAP stage fits the model without the subhalo, the
        detection starts half its one-subhalo fits at the best cells of a linear-response
        scan of the likelihood gain on a ``scan_grid x scan_grid`` grid
        (:func:`~tfstronglens.inference.scan_subhalo`; ``detection.scan``), and the MAP of
        the model with the subhalo is then polished from those fits and from the smooth
        MAP with the lightest subhalo (the 3 best fits and that one, ``map_polish_steps``
        Levenberg-Marquardt iterations; ``detection_steps / 10`` Adam steps when that is
        0); the detection then defaults to ``min(8, num_starts)`` starts and
        ``min(200, map_steps)`` steps (half as many for its fit without the subhalo, which
        starts at the smooth MAP), and the smooth MAP polishes its best 16 starts.
        ``None`` (the default): the MAP stage fits the model with its subhalo from prior
        draws, and the detection starts on a regular grid. Measured
        (``benchmarks/README.md``): on a 100x100 cutout with a weak TNFW subhalo
        ``scan_grid=24, map_steps=300`` took 142-170 s instead of 1225 s with the same
        statistic; on the demo's strong, compact 1e10 M_sun point mass it missed the
        subhalo (Delta log L 30-32 at a wrong place, against 172-177 at the truth): the
        fit without it had absorbed part of its deflection into the lens (a distorted
        smooth mode from which adding the subhalo at the truth lowers the likelihood).
      null_simulations: when > 0 (and the detection runs), calibrate its test statistic
        by a parametric bootstrap of this many images drawn from the best fit without a
        subhalo, each searched as the data were
        (:func:`~tfstronglens.inference.calibrate_null`; costs as many detections):
        ``null_calibration``.
      checkpoint: ``.npz`` file for the NUTS state (resumes from it when present).
      progress: progress bars for each stage.
      hmc_jit_compile: compile the NUTS chunks with XLA (default: as the model,
        ``model.jit_compile``).
      map_result: a :class:`~tfstronglens.inference.MAPResult` of this model and data
        (e.g. ``.map`` of an earlier ``fit_lens``) to start from instead of running the
        MAP stage: the ``num_starts``, ``map_steps``, ``map_learning_rate`` and
        ``map_polish_steps`` arguments are then unused (``settings["map_reused"]`` is
        True and ``timings["map"]`` 0).
      map_init, map_init_jitter: starting values of the MAP (:func:`find_map`'s ``init``,
        e.g. a dict of constrained values from :func:`source_init_from_rim`) and the
        ``Normal(0, map_init_jitter)`` spread of the starts around them in unconstrained
        coordinates; default: prior draws.
      init: where the MAP starts come from when ``map_init`` is not given: ``None`` or
        ``"prior"`` (prior draws), ``"cnn"`` (draws of the amortized posterior of the
        shipped lens CNN for the model's main lens, SIE or EPL, for the lens and source
        position, :func:`~tfstronglens.inference.amortized_starts`; the other parameters
        from the prior), a shipped network's name (``"pretrained"``,
        ``"pretrained-epl"``), or a :class:`~tfstronglens.models.LensPosteriorNetwork` /
        its folder. Images of another size or pixel scale are put on the network's grid.
        Measured (``benchmarks/README.md``): on 20 held-out SIE lenses like the
        network's training set, CNN starts never ended in the mirrored ellipticity/shear
        mode (prior starts: 3 of 20); on ``benchmarks/fit.py``'s nearly round EPL lens
        with bright lens light they did on 2 of 4 noise realisations (prior starts: 0),
        because the network's ellipticity and shear draws there are broad around zero.
        Hence the default stays the prior.

    Returns:
      a :class:`FitResult`.
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, value in (("num_starts", num_starts), ("map_steps", map_steps),
                        ("vi_steps", vi_steps), ("num_samples", num_samples),
                        ("num_chains", num_chains), ("num_results", num_results)):
        positive_int(value, name)
    positive_int(num_burnin, "num_burnin", minimum=0)
    positive_int(map_polish_steps, "map_polish_steps", minimum=0)
    positive_int(null_simulations, "null_simulations", minimum=0)
    if scan_grid is not None:
        positive_int(scan_grid, "scan_grid", minimum=2)
    lm_steps = map_polish_steps if model.num_params <= _MAX_LM_PARAMS else 0
    if hmc_kernel not in self_tuning_samplers():
        raise ValueError(f"hmc_kernel must be one of {self_tuning_samplers()}, got {hmc_kernel!r}")
    if target_accept is None:
        target_accept = SAMPLERS[hmc_kernel].default_target_accept
    if not isinstance(neutra, (bool, np.bool_)):
        raise ValueError(f"neutra must be True or False, got {neutra!r}")
    if neutra and method == "hmc" and vi_surrogate != "iaf":
        raise ValueError(f"neutra=True needs vi_surrogate='iaf' (a flow to sample through), "
                         f"got vi_surrogate={vi_surrogate!r}")
    if map_result is not None and not (isinstance(map_result, MAPResult) and list(
            map_result.param_names) == list(model.param_names)):
        raise ValueError(f"map_result must be a MAPResult of this model (parameters "
                         f"{list(model.param_names)}), got {map_result!r}")
    objective = model.objective(data)  # the data are checked and bound once, here
    d = objective.data
    base = as_seed(seed)
    seeds = [tf.constant([int(base[0]) + 1000 * (i + 1), int(base[1])], tf.int32)
             for i in range(6)]
    t_init = None
    if init is not None and not (isinstance(init, str) and init == "prior"):
        t_init = time.perf_counter()
        if map_init is not None:
            raise ValueError("give either map_init or init, not both")
        from ..models.amortized import PRETRAINED_CNNS

        if (isinstance(init, str) and init not in AMORTIZED_INITS
                and init not in PRETRAINED_CNNS and not os.path.exists(init)):
            raise ValueError(f"init must be one of {AMORTIZED_INITS}, a shipped lens CNN "
                             f"{tuple(PRETRAINED_CNNS)}, a lens CNN or its folder, got {init!r}")
        map_init = amortized_starts(model, None if init == "cnn" else init, d,
                                    num_starts=num_starts, seed=int(base[0]))
        map_init_jitter = 0.0
        t_init = time.perf_counter() - t_init
    names = list(model.param_names)
    keep = set(_scalar_names(model))
    timings = {}
    t_start = time.perf_counter()

    if detect is None:
        detect = model.num_subhalos > 0
    smooth_first = (detect and scan_grid is not None and model.num_subhalos == 1
                    and map_result is None and (map_init is None or isinstance(map_init, dict)))
    # the scan puts the one-subhalo fits where the data ask for a subhalo: a few starts
    # (its best cells) and fewer steps do what a regular grid of num_starts did
    det_starts = detection_starts or (min(8, num_starts) if smooth_first else num_starts)
    det_steps = detection_steps or (min(200, map_steps) if smooth_first else map_steps)
    det_lr = detection_learning_rate or 0.4 * map_learning_rate
    detection = null_calibration = None
    t = time.perf_counter()
    if smooth_first:
        map_res, detection, t_detection = _smooth_first_search(
            model, d, seeds, num_starts=num_starts, map_steps=map_steps,
            map_learning_rate=map_learning_rate, lm_steps=lm_steps, map_init=map_init,
            map_init_jitter=map_init_jitter, det_starts=det_starts, det_steps=det_steps,
            det_lr=det_lr, scan_grid=scan_grid, progress=progress)
        timings["detection"] = t_detection
    elif map_result is None:
        map_res = find_map(model, d, num_starts=num_starts, num_steps=map_steps,
                           learning_rate=map_learning_rate, seed=seeds[0], lm_steps=lm_steps,
                           init=map_init, init_jitter=map_init_jitter if map_init is not None
                           else 0.0, progress=progress)
    else:
        map_res = map_result
    timings["map"] = time.perf_counter() - t - timings.get("detection", 0.0)
    if t_init is not None:
        timings["init"] = t_init
    best_fit = {k: float(v) for k, v in map_res.params.items() if np.ndim(v) == 0}
    laplace = vi_res = mcmc = None
    problems = []

    if method == "map":
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            laplace = laplace_approximation(model, map_res.x, d)
        rng = np.random.default_rng(int(base[1]))
        chol = np.linalg.cholesky(laplace.covariance + 1e-12 * np.eye(len(names)))
        x = laplace.mean + rng.standard_normal((num_samples, len(names))) @ chol.T
        draws = _constrained(model, x)
        x_draws = x
        summary = _simple_summary(draws, names, keep)
        samples = draws[:, None, :]
        timings["laplace"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        vi_res = fit_vi(model, d, surrogate=vi_surrogate, init=map_res, num_steps=vi_steps,
                        learning_rate=vi_learning_rate, seed=seeds[1],
                        num_samples=num_samples, progress=progress)
        timings["vi"] = time.perf_counter() - t
        x_vi = np.asarray(vi_res.samples_unconstrained)
        x_draws = x_vi
        if method == "vi":
            draws = _constrained(model, x_vi)
            summary = _simple_summary(draws, names, keep)
            samples = draws[:, None, :]
        else:
            t = time.perf_counter()
            if neutra:
                cov = np.eye(len(names))
                init = tf.random.stateless_normal([num_chains, len(names)], seeds[2] + 7,
                                                  dtype=model.dtype).numpy()
            else:
                cov = np.asarray(vi_res.covariance, np.float64)
                cov = 0.5 * (cov + cov.T)
                init = x_vi[:num_chains]
                if init.shape[0] < num_chains:
                    init = np.resize(x_vi, (num_chains, x_vi.shape[-1]))
            mcmc = sample_hmc(objective.target_log_prob, init.astype(x_vi.dtype),
                              num_results=num_results, num_burnin=num_burnin, kernel=hmc_kernel,
                              step_size=0.5, num_leapfrog_steps=4,
                              max_tree_depth=max_tree_depth, mass_matrix=cov,
                              target_accept=target_accept, seed=seeds[2],
                              adapt_mass_matrix=adapt_mass_matrix,
                              transform=vi_res.surrogate.bijector if neutra else None,
                              checkpoint=checkpoint, progress=progress,
                              jit_compile=(model.jit_compile if hmc_jit_compile is None
                                           else bool(hmc_jit_compile)))
            timings["hmc"] = time.perf_counter() - t
            samples = _constrained(model, mcmc.samples)
            x_draws = np.reshape(mcmc.samples, (-1, len(names)))
            stats = summarize(samples, names=names)
            summary = {}
            for name in names:
                if name not in keep:
                    continue
                s = stats[name]
                summary[name] = {"mean": s["mean"], "std": s["sd"], "p16": s["p16"],
                                 "p50": s["p50"], "p84": s["p84"], "r_hat": s["r_hat"],
                                 "ess_bulk": s["ess_bulk"], "ess_tail": s["ess_tail"]}
            problems = _hmc_problems(mcmc, summary)

    subhalo_masses = _subhalo_mass_summary(model, x_draws)

    if detect:
        if detection is None:
            t = time.perf_counter()
            fit0 = _smooth_likelihood_fit(model, d, map_res, det_starts, det_steps,
                                          map_learning_rate, seeds[4], progress)
            detection = detect_subhalo(
                model, d, num_starts=det_starts, num_steps=det_steps, learning_rate=det_lr,
                seed=seeds[3], fit_without=fit0, progress=progress)
            timings["detection"] = time.perf_counter() - t
        if null_simulations:
            null_calibration = calibrate_null(
                model, detection, null_simulations, seed=seeds[5], progress=progress,
                num_starts=det_starts, num_steps=det_steps, learning_rate=det_lr,
                scan_grid=scan_grid if smooth_first else None)
            timings["null_calibration"] = null_calibration.wall_time
    timings["total"] = time.perf_counter() - t_start
    settings = dict(method=method, seed=seed, num_starts=num_starts, map_steps=map_steps,
                    init=init if init is None or isinstance(init, str) else "network",
                    map_learning_rate=map_learning_rate, map_polish_steps=lm_steps, vi_surrogate=vi_surrogate,
                    vi_steps=vi_steps, vi_learning_rate=vi_learning_rate,
                    num_samples=num_samples, num_chains=num_chains, num_results=num_results,
                    num_burnin=num_burnin, max_tree_depth=max_tree_depth,
                    target_accept=target_accept, adapt_mass_matrix=adapt_mass_matrix,
                    hmc_kernel=hmc_kernel, neutra=bool(neutra), detect=bool(detect),
                    detection_starts=detection_starts, detection_steps=detection_steps,
                    detection_learning_rate=detection_learning_rate,
                    scan_grid=scan_grid, subhalo_search=("smooth first, scan" if smooth_first
                                                         else "with the subhalo, grid"
                                                         if detect else None),
                    null_simulations=int(null_simulations),
                    map_reused=map_result is not None)
    if problems:
        warnings.warn(f"fit_lens: the HMC draws did not converge: {'; '.join(problems)}. "
                      f"The posterior summary is unreliable; {hmc_advice()}",
                      ConvergenceWarning, stacklevel=2)
    return FitResult(method=method, param_names=names, samples=samples, summary=summary,
                     problems=problems, best_fit=best_fit, map=map_res, laplace=laplace,
                     vi=vi_res, mcmc=mcmc, detection=detection, timings=timings,
                     settings=settings, model=model, subhalo_masses=subhalo_masses,
                     data=np.asarray(d), null_calibration=null_calibration)


def detection_summary(det: SubhaloDetection, null_calibration=None) -> dict:
    """The JSON-ready ``subhalo_detection`` object of ``summary.json``, with the
    :class:`~tfstronglens.inference.NullCalibration` of its test statistic when given."""
    def num(v):
        return None if v is None else float(v)

    out = {
        "delta_log_likelihood": float(det.delta_log_likelihood),
        "test_statistic": float(det.test_statistic),
        "significance_sigma": float(det.significance_sigma),
        "p_value": float(det.p_value),
        "dof": int(det.dof),
        "boundary": bool(det.boundary),
        "mass_msun": float(det.mass),
        "mass_aperture_msun": float(det.mass_aperture),
        "aperture_arcsec": float(det.aperture),
        "mass_eff_msun": float(det.mass_eff),
        "r_pert_arcsec": float(det.r_pert),
        "center_x": float(det.center_x),
        "center_y": float(det.center_y),
        "log_bayes_factor_laplace": num(det.log_bayes_factor_laplace),
        "definition": ("delta_log_likelihood = max log L(one subhalo) - max log L(no "
                       "subhalo), both maximised by multi-start optimisation; "
                       "significance_sigma from Wilks' theorem with the stated dof "
                       "(chi-squared mixture at the mass boundary when boundary=true), "
                       "converted to a one-sided Gaussian sigma. mass_msun is M200c (TNFW, "
                       "NFW) or the total mass (PJAFFE, SIS, POINT_MASS) under the model's "
                       "profile assumptions, which the data do not constrain; "
                       "mass_aperture_msun is the projected mass inside aperture_arcsec of "
                       "the subhalo and mass_eff_msun the projected mass inside the "
                       "perturbation radius r_pert_arcsec (Minor et al. 2017): these two "
                       "barely depend on the assumed profile"),
    }
    if null_calibration is not None:
        out["null_calibration"] = null_calibration.to_dict()
    return out


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _source_image(model: LensModel, params: dict, n: int = 100):
    """The source-plane surface brightness of the best fit on an ``n x n`` grid of half the
    field of view, centred on the source centre; returns ``(image, extent)``."""
    _, source, _ = model.component_kwargs(params)
    cx = float(np.ravel(np.asarray(source[0].get("center_x", 0.0)))[0])
    cy = float(np.ravel(np.asarray(source[0].get("center_y", 0.0)))[0])
    half = 0.25 * model.num_pix * model.observation.pixel_scale
    xs = np.linspace(-half, half, n)
    xx, yy = np.meshgrid(xs + cx, xs + cy)
    dtype = model.dtype.as_numpy_dtype
    img = sum(np.asarray(prof.surface_brightness(tf.constant(xx[None], dtype),
                                                 tf.constant(yy[None], dtype), **kw))
              for prof, kw in zip(model.source_profiles, source))
    img = img.reshape(n, n)
    step = xs[1] - xs[0]
    extent = (cx - half - step / 2, cx + half + step / 2, cy - half - step / 2,
              cy + half + step / 2)
    return img, extent


def _summary_json(result: FitResult, extra_settings: dict | None = None,
                  truths: dict | None = None, sky: dict | None = None) -> dict:
    """The content of ``summary.json`` (see :func:`write_fit_outputs`), JSON-ready:
    non-finite numbers are None."""
    model = result.model
    summary = {
        "problems": list(result.problems),
        "parameters": result.summary,
        "best_fit": result.best_fit,
        "method": result.method,
        "settings": {**result.settings, **(extra_settings or {})},
        "timings": result.timings,
        "model": repr(model),
    }
    if result.mcmc is not None:
        m = result.mcmc
        summary["sampler"] = {
            "converged": not result.problems,
            "kernel": m.kernel, "num_chains": int(m.num_chains),
            "num_results": int(m.num_results),
            "acceptance_rate": [float(a) for a in np.ravel(m.acceptance_rate)],
            "num_divergences": [int(a) for a in np.ravel(m.num_divergences)],
            "step_size": [float(a) for a in np.ravel(m.step_size)],
            # (np.max: a NaN R-hat makes it NaN, null in the file; max() may skip it)
            "max_r_hat": float(np.max([v["r_hat"] for v in result.summary.values()])),
            "min_ess_bulk": float(np.min([v["ess_bulk"] for v in result.summary.values()])),
        }
    if result.subhalo_masses:
        summary["subhalo_masses"] = dict(
            result.subhalo_masses, aperture_arcsec=model.subhalo_aperture,
            definition=("mass_aperture: projected mass (M_sun) inside aperture_arcsec of the "
                        "subhalo's centre; mass_eff: projected mass (M_sun) inside the "
                        "perturbation radius r_pert (arcsec, Minor et al. 2017). Unlike "
                        "subhalo.k.mass (M200c or total mass under the model's profile "
                        "assumptions) they barely depend on the assumed profile"))
    if result.detection is not None:
        summary["subhalo_detection"] = detection_summary(result.detection,
                                                         result.null_calibration)
    if truths:
        summary["truths"] = {k: float(v) for k, v in truths.items()}
    if sky:
        summary["sky"] = sky
    return _json_safe(summary)


def write_fit_outputs(result: FitResult, out_dir, overwrite: bool = False,
                      extra_settings: dict | None = None, truths: dict | None = None,
                      sky: dict | None = None) -> dict:
    """Write the files of a fit into ``out_dir`` (which must exist).

    * ``summary.json``: ``problems`` (:attr:`FitResult.problems`: why the HMC draws did
      not converge; empty when they did), ``parameters`` (per scalar parameter:
      ``mean``, ``std``, ``p16``, ``p50``, ``p84``, and ``r_hat``, ``ess_bulk``,
      ``ess_tail`` for HMC), ``best_fit`` (MAP values), ``settings``,
      ``timings`` (seconds), ``sampler`` (HMC: ``converged``, i.e. no problems,
      acceptance, divergences, step sizes, the largest R-hat, null when any is NaN, and
      the smallest bulk ESS), ``subhalo_detection`` (when run; see
      :func:`detection_summary`), ``truths`` when given, ``sky`` when given (the sky
      positions and position angles of an image with a WCS:
      :func:`~tfstronglens.io.sky.sky_summary`);
    * ``samples.npz`` (constrained draws ``[draws, chains]`` per parameter name, HMC
      statistics as ``sample_stats/<name>``) and ``samples.nc`` (ArviZ netCDF, when ArviZ
      is installed);
    * ``fit.png``: data, best-fit model, normalised residuals ``(data - model) / sigma``
      and the reconstructed source; ``corner.png``: the posterior of the lens and subhalo
      parameters.

    Every file is written through a temporary name and renamed. Returns ``{kind: path}``.
    """
    from .. import plotting

    out_dir = os.fspath(out_dir)
    paths = {}
    model = result.model
    summary = _summary_json(result, extra_settings, truths, sky)
    path = os.path.join(out_dir, "summary.json")
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=2)
    paths["summary"] = path

    samples = {name: result.samples[..., i] for i, name in enumerate(result.param_names)}
    stats = None
    if result.mcmc is not None:
        stats = {k: np.asarray(v) for k, v in result.mcmc.sample_stats.items()}
    saved = save_samples(os.path.join(out_dir, "samples.npz"), samples, stats,
                         overwrite=overwrite)
    paths.update({k: v for k, v in saved.items() if v})

    data = np.asarray(result.data)
    best = model.render(result.map.params)
    best = np.asarray(best).reshape(data.shape)
    if model.noise_map is None:
        sigma = np.sqrt(np.asarray(model.observation._variance(tf.constant(best))))
    else:
        sigma = np.asarray(model.noise_map)
    resid = (data - best) / sigma
    src, src_extent = _source_image(model, result.map.params)
    paths["fit"] = plotting.save_fit_panels(
        os.path.join(out_dir, "fit.png"), data, best, resid, src,
        pixel_scale=model.observation.pixel_scale, source_extent=src_extent,
        overwrite=overwrite)
    corner_names = [n for n in result.param_names if n in result.summary
                    and not n.startswith("source.z.")][:14]
    idx = [result.param_names.index(n) for n in corner_names]
    flat = result.samples.reshape(-1, result.samples.shape[-1])[:, idx]
    tv = None
    if truths:
        tv = [truths.get(n) for n in corner_names]
    paths["corner"] = plotting.save_corner(os.path.join(out_dir, "corner.png"), flat,
                                           corner_names, truths=tv, overwrite=overwrite)
    return paths
