"""The chunked HMC driver: :func:`sample_hmc` on a generic unconstrained target.

:func:`sample_hmc` runs ``num_chains`` chains of a transition kernel from
:mod:`.kernels` (NUTS, ChEES-HMC, fixed-length HMC, or any registered
:class:`~.kernels.Sampler`) in XLA-compiled chunks of steps. Around the kernel it does what
every sampler needs: step-size adaptation by dual averaging during burn-in,
preconditioning by a covariance estimate (the "mass matrix", given, e.g. the VI posterior
covariance, or adapted in Stan's warm-up windows), NeuTra through a bijector, a progress
bar, atomic checkpoints that a rerun resumes from bit-exactly, ``tf.distribute``
replicas, and the diagnostics that tell whether to trust the draws (acceptance,
divergences, tree depths; R-hat and ESS in :mod:`.diagnostics`).

The target is any ``log_prob_fn(x) -> [num_chains]`` on ``x[num_chains, D]`` in
unconstrained space; for a lens model that is ``LensModel.unconstrained_log_posterior``.
Nothing here knows about lensing.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import numbers
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import resolve_dtype
from ..io._atomic import atomic_output, check_output_path
from . import diagnostics
from .kernels import get_sampler

__all__ = ["sample_hmc", "MCMCResult", "clear_compile_cache", "adaptation_windows"]

tfm = tfp.mcmc

_CHECKPOINT_VERSION = 2
_ADAPT_KINDS = (None, "diag", "dense")
# Compiled chunk runners, reused by later calls with the same target and static settings.
_COMPILE_CACHE: "collections.OrderedDict" = collections.OrderedDict()
_COMPILE_CACHE_SIZE = 8


def clear_compile_cache():
    """Forget the compiled chunk runners that :func:`sample_hmc` keeps for reuse."""
    _COMPILE_CACHE.clear()


@dataclasses.dataclass(frozen=True)
class MCMCResult:
    r"""Draws and diagnostics of :func:`sample_hmc`.

    Attributes:
      samples: ``[num_results, num_chains, D]`` draws of ``x`` (unconstrained space),
        numpy, in the dtype of the run.
      log_prob: ``[num_results, num_chains]`` the sampled target at each draw
        (``log_prob_fn``; with ``transform``, the base-space target).
      sample_stats: per-draw sampler statistics ``[num_results, num_chains]``, with
        ArviZ's names: ``lp`` (= ``log_prob``), ``acceptance_rate`` (mean Metropolis
        acceptance probability of the transition: over the trajectory for NUTS),
        ``diverging`` (bool), ``step_size`` (in whitened coordinates, see
        :func:`sample_hmc`), ``n_steps`` (leapfrog steps = gradient evaluations), and
        for NUTS ``tree_depth`` (``ceil(log2(n_steps + 1))``) and
        ``reached_max_treedepth``; for HMC and ChEES ``energy_error``
        (``H(end) - H(start)``), and for ChEES ``trajectory_length`` (the adapted
        maximum trajectory length, whitened units; each transition integrates a
        jittered fraction of it).
      trace: ``name -> [num_results, num_chains, ...]`` from ``trace_fn`` (empty if none).
      warmup_stats: the same statistics as ``sample_stats`` for the burn-in steps.
      step_size: ``[num_chains]`` final (adapted) step size (ChEES: the same for all
        chains of a replica).
      kernel: the sampler's name (``"nuts"``, ``"chees"``, ``"hmc"``, ...; :mod:`.kernels`).
      timing: seconds: ``total`` (this call), ``warmup``, ``sampling`` (steps run in
        this call), ``first_chunk`` (includes XLA compilation), ``compile_estimate``
        (first chunk minus the per-step time of the others, times its steps).
      resumed_from_step: global step read from the checkpoint (0 for a fresh run).
      mass_matrix: the covariance estimate the kept draws were preconditioned with
        (``[D]`` variances or ``[D, D]``; None without preconditioning): the one passed
        in, or the last one adapted during burn-in (``adapt_mass_matrix``).
      warmup_samples: ``[num_burnin, num_chains, D]`` burn-in draws (None when resumed
        from a checkpoint written by an older version).
      base_samples, warmup_base_samples: with ``transform`` (NeuTra), the draws of the
        base variable ``z`` (``samples = transform.forward(base_samples)``); else None.
    """

    samples: np.ndarray
    log_prob: np.ndarray
    sample_stats: dict
    trace: dict
    warmup_stats: dict
    step_size: np.ndarray
    kernel: str
    timing: dict
    resumed_from_step: int = 0
    mass_matrix: np.ndarray | None = None
    warmup_samples: np.ndarray | None = None
    base_samples: np.ndarray | None = None
    warmup_base_samples: np.ndarray | None = None

    @property
    def num_results(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_chains(self) -> int:
        return int(self.samples.shape[1])

    @property
    def acceptance_rate(self) -> np.ndarray:
        """``[num_chains]`` mean acceptance probability over the kept draws."""
        return self.sample_stats["acceptance_rate"].mean(axis=0)

    @property
    def num_divergences(self) -> np.ndarray:
        """``[num_chains]`` number of divergent transitions among the kept draws."""
        return self.sample_stats["diverging"].sum(axis=0)

    @property
    def num_gradient_evaluations(self) -> np.ndarray:
        """``[num_chains]`` leapfrog steps (gradient evaluations) of the kept draws."""
        return self.sample_stats["n_steps"].sum(axis=0)

    @property
    def mean_tree_depth(self):
        """``[num_chains]`` mean NUTS tree depth (None for HMC)."""
        if "tree_depth" not in self.sample_stats:
            return None
        return self.sample_stats["tree_depth"].mean(axis=0)

    def diagnostics(self) -> dict:
        """Run-level diagnostics in one dict (numpy values).

        ``acceptance_rate``, ``num_divergences``, ``step_size``, ``mean_tree_depth``
        (NUTS) and ``gradient_evaluations`` per chain; ``warmup_divergences`` (total);
        ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail`` over parameters (Vehtari et al.
        2021, :mod:`.diagnostics`); ``ess_bulk_per_second`` (``min_ess_bulk`` over the
        sampling time of this call, None when resumed from a finished checkpoint) and
        ``ess_bulk_per_gradient`` (over all chains' gradient evaluations).
        """
        ess_bulk = diagnostics.effective_sample_size(self.samples, method="bulk")
        ess_tail = diagnostics.effective_sample_size(self.samples, method="tail")
        rhat = diagnostics.potential_scale_reduction(self.samples)
        grads = self.num_gradient_evaluations
        sampling = self.timing.get("sampling") or 0.0
        warm_div = self.warmup_stats.get("diverging")
        return {
            "acceptance_rate": self.acceptance_rate,
            "num_divergences": self.num_divergences,
            "warmup_divergences": int(warm_div.sum()) if warm_div is not None else 0,
            "step_size": self.step_size,
            "mean_tree_depth": self.mean_tree_depth,
            "gradient_evaluations": grads,
            "max_r_hat": float(np.nanmax(rhat)),
            "min_ess_bulk": float(np.nanmin(ess_bulk)),
            "min_ess_tail": float(np.nanmin(ess_tail)),
            "ess_bulk_per_second": (float(np.nanmin(ess_bulk)) / sampling
                                    if sampling > 0 and self.resumed_from_step == 0 else None),
            "ess_bulk_per_gradient": float(np.nanmin(ess_bulk)) / max(float(grads.sum()), 1.0),
        }

    def summary(self, names=None) -> dict:
        """:func:`~tfstronglens.inference.diagnostics.summarize` of the draws."""
        return diagnostics.summarize(self.samples, names=names)

    def save(self, path, names=None, overwrite: bool = False) -> dict:
        """Write the draws and statistics with :func:`~.diagnostics.save_samples`.

        ``names`` (``D`` names) splits ``x`` into scalar variables; default one variable
        ``"x"`` of shape ``[D]``.
        """
        if names is None:
            post = {"x": self.samples}
        else:
            names = list(names)
            if len(names) != self.samples.shape[-1]:
                raise ValueError(
                    f"names must have {self.samples.shape[-1]} entries, got {len(names)}"
                )
            post = {n: self.samples[..., i] for i, n in enumerate(names)}
        post.update(self.trace)
        return diagnostics.save_samples(path, post, self.sample_stats, overwrite=overwrite)


# ------------------------------------------------------------------------------------
# argument checking
# ------------------------------------------------------------------------------------


def _int_arg(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _seed_arg(seed):
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
        return np.array([0, int(seed)], np.int32)
    arr = np.asarray(seed.numpy() if hasattr(seed, "numpy") else seed)
    if arr.shape != (2,) or arr.dtype.kind not in "iu":
        raise ValueError(f"seed must be an integer or a pair of integers, got {seed!r}")
    return arr.astype(np.int32)


def _scale_from_mass_matrix(mass_matrix, dim, np_dtype):
    """('none'|'diag'|'dense', scale) with x = scale * u (diag) or x = L u (dense)."""
    if mass_matrix is None:
        return "none", None
    m = np.asarray(
        mass_matrix.numpy() if hasattr(mass_matrix, "numpy") else mass_matrix, dtype=np.float64
    )
    if not np.all(np.isfinite(m)):
        raise ValueError("mass_matrix must be finite, got non-finite entries")
    if m.shape == (dim,):
        if np.any(m <= 0):
            raise ValueError(
                f"mass_matrix (diagonal variances) must be positive, got min {m.min()!r}"
            )
        return "diag", np.sqrt(m).astype(np_dtype)
    if m.shape == (dim, dim):
        if not np.allclose(m, m.T, rtol=1e-6, atol=1e-12 * np.abs(m).max()):
            raise ValueError("mass_matrix must be a symmetric [D, D] covariance matrix")
        try:
            chol = np.linalg.cholesky(0.5 * (m + m.T))
        except np.linalg.LinAlgError:
            raise ValueError("mass_matrix must be positive definite (Cholesky failed)") from None
        return "dense", chol.astype(np_dtype)
    raise ValueError(
        f"mass_matrix must have shape [{dim}] (variances) or [{dim}, {dim}] (covariance), "
        f"got {list(m.shape)}"
    )


def adaptation_windows(num_burnin: int, init_buffer: int = 75, term_buffer: int = 50,
                       base_window: int = 25):
    """Stan's warm-up schedule: ``[(start, end), ...]`` of the mass-matrix windows.

    Burn-in step ``g`` belongs to an initial fast interval ``[0, init_buffer)`` (step size
    only, the chains travel to the typical set), then slow windows of doubling length
    starting at ``base_window`` whose draws estimate the covariance, the last one
    stretched to ``num_burnin - term_buffer``, then a final fast interval in which only
    the step size adapts to the last metric. When ``num_burnin`` is too short for the
    default buffers they become 15% / 75% / 10% of it (as Stan does); fewer than 20
    burn-in steps give no window.
    """
    n = int(num_burnin)
    if n < 20:
        return []
    if init_buffer + term_buffer + base_window > n:
        init_buffer = int(0.15 * n)
        term_buffer = int(0.1 * n)
        base_window = n - init_buffer - term_buffer
    windows = []
    start, size = init_buffer, base_window
    last = n - term_buffer
    while start < last:
        end = start + size
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def _estimate_covariance(xw, kind):
    """Regularised covariance of window draws ``xw[n, C, D]`` pooled over the chains.

    Stan's regularisation, ``N / (N + 5) Sigma + 5 / (N + 5) 1e-3 diag(Sigma)`` with
    ``N = n C`` pooled draws, but relative to each parameter's variance rather than
    ``1e-3`` absolute (unconstrained lens parameters differ in scale by orders of
    magnitude); the diagonal kind keeps only the variances. (Shrinking towards the
    diagonal with a larger weight would be wrong for strongly correlated posteriors: it
    adds variance along the thin directions.) A floor of ``1e-10`` times the mean
    variance keeps it positive definite. Pooling includes the spread between chains, so
    chains that have not yet met give a wider, safer metric.
    """
    flat = np.asarray(xw, np.float64).reshape(-1, xw.shape[-1])
    num, dim = flat.shape
    cov = np.atleast_2d(np.cov(flat, rowvar=False))
    var = np.diag(cov).copy()
    floor = 1e-10 * max(float(np.mean(var)), np.finfo(np.float64).tiny)
    w = num / (num + 5.0)
    if kind == "diag":
        return w * np.maximum(var, 0.0) + (1.0 - w) * 1e-3 * var + floor
    cov = w * cov + (1.0 - w) * 1e-3 * np.diag(var)
    return cov + floor * np.eye(dim)


# ------------------------------------------------------------------------------------
# the compiled chunk
# ------------------------------------------------------------------------------------


def _make_chunk_runner(log_prob_fn, trace_fn, sampler, transform, chunk_size, mode,
                       jit_compile):
    """A tf.function running up to ``chunk_size`` transitions from a given adaptation state.

    Every argument that may change between calls of :func:`sample_hmc` with the same
    target (initial step size, adaptation length, target acceptance, preconditioner,
    number of steps in this chunk, seed) is a tensor argument, so that one compilation
    serves warm-up, sampling, the last short chunk, resumed runs and repeated runs.
    """

    def to_z(u, scale):
        if mode == "none":
            return u
        if mode == "diag":
            return u * scale
        return tf.linalg.matvec(scale, u)

    def run(u, error_sum, log_averaging_step, new_step_size, init_step_size, sampler_state,
            step0, n_steps, seed, scale, adapt_start, num_adaptation_steps, target_accept):
        dtype = u.dtype

        if transform is None:
            def target(v):
                return log_prob_fn(to_z(v, scale))
        else:
            def target(v):
                z = to_z(v, scale)
                return (log_prob_fn(transform.forward(z))
                        + transform.forward_log_det_jacobian(z, event_ndims=1))

        if sampler.shares_step_size:  # one step size per replica: scalars here
            error_sum, log_averaging_step, new_step_size, init_step_size = (
                tf.reshape(t, []) for t in (error_sum, log_averaging_step, new_step_size,
                                            init_step_size))
        # Step-size adaptation restarts at ``adapt_start`` (0, or the end of the last
        # mass-matrix window) and ends with the burn-in.
        window_steps = num_adaptation_steps - adapt_start
        adaptive = tfm.DualAveragingStepSizeAdaptation(
            sampler.kernel(target, init_step_size, window_steps),
            num_adaptation_steps=window_steps, target_accept_prob=target_accept,
            reduce_fn=sampler.reduce_fn)
        # Fresh results for the current state (one gradient), then the carried
        # adaptation state: step counter, error sum, averaged and current step size, and
        # the sampler's own.
        kr = adaptive.bootstrap_results(u)
        kr = kr._replace(step=step0 - adapt_start, error_sum=[error_sum],
                         log_averaging_step=[log_averaging_step], new_step_size=new_step_size)
        if sampler.state_names:
            kr = kr._replace(inner_results=sampler.restore_state(
                kr.inner_results, tf.reshape(sampler_state, [len(sampler.state_names)]),
                step0 - adapt_start))

        def record(v, kr):
            rec, lar, ss = sampler.statistics(kr.inner_results, dtype)
            rec = dict(rec)
            rec["acceptance_rate"] = tf.exp(tf.minimum(tf.where(tf.math.is_nan(lar),
                                                                tf.constant(-np.inf, dtype),
                                                                lar), 0.0))
            rec["step_size"] = tf.broadcast_to(tf.reshape(ss, [-1]), tf.shape(rec["lp"]))
            z = to_z(v, scale)
            x = z if transform is None else transform.forward(z)
            rec["x"] = x
            if transform is not None:
                rec["z"] = z
            if trace_fn is not None:
                for k, val in trace_fn(x).items():
                    rec[f"trace/{k}"] = tf.convert_to_tensor(val)
            return rec

        example = record(u, kr)  # bootstrap results have one_step's structure and shapes
        buffers = {k: tf.zeros([chunk_size] + v.shape.as_list(), v.dtype)
                   for k, v in example.items()}

        def body(i, v, kr, bufs):
            s = tf.random.experimental.stateless_fold_in(seed, step0 + i)
            v, kr = adaptive.one_step(v, kr, seed=s)
            rec = record(v, kr)
            bufs = {k: tf.tensor_scatter_nd_update(b, [[i]], rec[k][None])
                    for k, b in bufs.items()}
            return i + 1, v, kr, bufs

        _, u, kr, buffers = tf.while_loop(
            lambda i, *_: i < n_steps, body, (tf.constant(0, tf.int32), u, kr, buffers),
            maximum_iterations=chunk_size)
        state_out = sampler.export_state(kr.inner_results)
        state_out = sampler_state if state_out is None else state_out[None]
        adapt_out = (kr.error_sum[0], kr.log_averaging_step[0], kr.new_step_size)
        if sampler.shares_step_size:
            adapt_out = tuple(tf.reshape(t, [1]) for t in adapt_out)
        return (u,) + adapt_out + (state_out, buffers)

    return tf.function(run, jit_compile=jit_compile, reduce_retracing=False)


def _get_runner(log_prob_fn, trace_fn, sampler, transform, chunk_size, mode, jit_compile,
                reuse):
    key = (log_prob_fn, trace_fn, sampler, transform, chunk_size, mode, bool(jit_compile))
    if reuse:
        try:
            runner = _COMPILE_CACHE.get(key)
        except TypeError:  # an unhashable callable: no reuse
            reuse = False
            runner = None
        if runner is not None:
            _COMPILE_CACHE.move_to_end(key)
            return runner
    runner = _make_chunk_runner(log_prob_fn, trace_fn, sampler, transform, chunk_size, mode,
                                jit_compile)
    if reuse:
        _COMPILE_CACHE[key] = runner
        while len(_COMPILE_CACHE) > _COMPILE_CACHE_SIZE:
            _COMPILE_CACHE.popitem(last=False)
    return runner


def _chunk_caller(runner, strategy, replicas, seed, num_burnin, target_accept, dtype):
    """``run_chunk(carry, step0, n) -> (carry, buffers)``: one compiled chunk on the host's
    numpy carry, split over the strategy's replicas (chains, or one row per replica for
    the per-replica step size and sampler state) and gathered back."""
    seed_t = tf.constant(seed)

    def run_chunk(carry, step0, n):
        args = (carry["u"], carry["error_sum"], carry["log_averaging_step"],
                carry["new_step_size"], carry["init_step_size"], carry["sampler_state"])
        consts = (tf.constant(carry["scale"]),
                  tf.constant(int(carry["adapt_start"]), tf.int32),
                  tf.constant(num_burnin, tf.int32), tf.constant(target_accept, dtype))
        step0_t, n_t = tf.constant(step0, tf.int32), tf.constant(n, tf.int32)
        if strategy is None:
            out = runner(*[tf.constant(a) for a in args], step0_t, n_t,
                         tf.random.experimental.stateless_fold_in(seed_t, 0), *consts)
            outs = [tf.nest.map_structure(lambda t: t.numpy(), out)]
        else:
            def dist(arr):
                per = arr.shape[0] // replicas  # chains, or 1 row per replica

                return strategy.experimental_distribute_values_from_function(
                    lambda ctx: tf.constant(arr[ctx.replica_id_in_sync_group * per:
                                                (ctx.replica_id_in_sync_group + 1) * per]))

            seeds = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.random.experimental.stateless_fold_in(
                    seed_t, ctx.replica_id_in_sync_group))
            out = strategy.run(runner, args=tuple(dist(a) for a in args)
                               + (step0_t, n_t, seeds) + consts)
            locals_ = [strategy.experimental_local_results(o) for o in tf.nest.flatten(out)]
            outs = [tf.nest.pack_sequence_as(out, [loc[r].numpy() for loc in locals_])
                    for r in range(replicas)]
        new_carry = dict(carry)
        for i, k in enumerate(("u", "error_sum", "log_averaging_step", "new_step_size",
                               "sampler_state")):
            new_carry[k] = np.concatenate([o[i] for o in outs], 0)
        bufs = {k: np.concatenate([o[5][k] for o in outs], 1)[:n] for k in outs[0][5]}
        return new_carry, bufs

    return run_chunk


# ------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------


def _save_checkpoint(path, config, step, carry, host, warm):
    arrays = {
        "config": np.array(json.dumps(config, sort_keys=True)),
        "step": np.array(step, np.int64),
    }
    arrays.update({f"carry/{k}": v for k, v in carry.items()})
    arrays.update({f"draws/{k}": v for k, v in host.items()})
    arrays.update({f"warmup/{k}": v for k, v in warm.items()})
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_checkpoint(path, config, sampler):
    with np.load(path, allow_pickle=False) as f:
        stored = json.loads(str(f["config"]))
        if stored != config:
            diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            detail = ", ".join(f"{k}: {stored.get(k)!r} (checkpoint) != {config.get(k)!r}"
                               for k in diff)
            raise ValueError(
                f"checkpoint {path!r} was written by a different run ({detail}); pass another "
                "checkpoint path or delete it"
            )
        step = int(f["step"])
        carry = {k[6:]: f[k] for k in f.files if k.startswith("carry/")}
        host = {k[6:]: f[k] for k in f.files if k.startswith("draws/")}
        warm = {k[7:]: f[k] for k in f.files if k.startswith("warmup/")}
    if "sampler_state" not in carry:  # written before samplers were classes
        old = carry.pop("chees_state", np.zeros([config["replicas"], 3]))
        carry["sampler_state"] = np.asarray(old)[:, :len(sampler.state_names)]
    return step, carry, host, warm


# ------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------


def sample_hmc(log_prob_fn, init, num_results: int = 1000, num_burnin: int = 1000,
               kernel="nuts", step_size=0.1, num_leapfrog_steps: int = 10,
               max_tree_depth: int = 10, mass_matrix=None, target_accept: float = 0.8,
               seed=None, jit_compile: bool = True, chunk_size: int = 100,
               progress: bool = True, checkpoint=None, trace_fn=None, strategy=None,
               callback=None, dtype=None, reuse_compiled: bool = True,
               adapt_mass_matrix: str | None = None, transform=None) -> MCMCResult:
    r"""Sample ``exp(log_prob_fn)`` with NUTS, ChEES-HMC, HMC (or any registered
    :class:`~.kernels.Sampler`), in compiled chunks, with checkpoints.

    #### Mathematical details

    Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) augments ``x`` with a momentum
    ``p ~ N(0, M)`` and follows ``H(x, p) = -log pi(x) + p^T M^{-1} p / 2`` with the
    leapfrog integrator (step size ``eps``). The transition kernels are in
    :mod:`.kernels`: ``kernel="nuts"`` (default; Hoffman & Gelman 2014, multinomial
    variant of Betancourt 2017: the trajectory doubles until it makes a U-turn or reaches
    ``2**max_tree_depth - 1`` steps), ``"hmc"`` (``num_leapfrog_steps`` steps then a
    Metropolis test on ``exp(-Delta H)``) and ``"chees"`` (ChEES-HMC, Hoffman, Radul &
    Sountsov 2021: jittered trajectory length adapted on the ChEES criterion, one step
    size and trajectory length shared by the chains of a replica, so no chain waits for
    another's deeper tree; ``step_size * num_leapfrog_steps`` is the initial trajectory
    length; use tens of chains).

    **Preconditioning.** ``mass_matrix`` is a *covariance* estimate ``Sigma`` of the
    posterior (the inverse of HMC's mass matrix ``M``; e.g. the VI or Laplace covariance),
    either diagonal (``[D]`` variances) or dense (``[D, D]``). With ``Sigma = L L^T``
    (Cholesky; ``L = diag(sqrt(Sigma_ii))`` for the diagonal), the sampler runs on the
    whitened coordinates ``u``, ``x = L u`` (explicit reparametrisation; the Jacobian
    ``log|det L|`` is a constant and is left out), which is identical to HMC on ``x``
    with ``M = Sigma^{-1}``: a Gaussian posterior of covariance ``Sigma`` becomes a unit
    Gaussian in ``u``, so one step size fits every direction. (A shift ``x = mu + L u`` is
    not needed: HMC is translation-equivariant.) Step sizes are in ``u`` units.

    **NeuTra** (Hoffman et al. 2019, arXiv:1903.03704). With ``transform`` (a
    ``tfp.bijectors.Bijector`` on ``[D]`` vectors, e.g. a VI normalizing flow) the
    chains run on ``z`` with target ``log_prob_fn(f(z)) + log|det df/dz|`` and
    ``x = f(z)``: a flow fitted to the posterior makes the target nearly a unit
    Gaussian. ``samples`` and ``trace_fn`` see ``x``; ``base_samples`` holds ``z``;
    ``log_prob`` and ``mass_matrix`` are those of the ``z`` target.

    **Step-size adaptation.** During the ``num_burnin`` burn-in steps
    ``tfp.mcmc.DualAveragingStepSizeAdaptation`` (Nesterov dual averaging as in Stan,
    Hoffman & Gelman 2014 Sec. 3.2) adapts one step size per chain (per replica for
    ChEES, on the harmonic mean of the chains' acceptance) towards mean acceptance
    probability ``target_accept``; at the end of burn-in each step size is fixed to its
    averaged iterate, so the kept draws come from a fixed Markov kernel (for ChEES, the
    trajectory length too). Burn-in draws are discarded (their statistics are kept in
    ``warmup_stats``).

    **Mass-matrix adaptation.** With ``adapt_mass_matrix="dense"`` (or ``"diag"``) the
    covariance ``Sigma`` is also learned during burn-in, following Stan's windowed
    scheme (:func:`adaptation_windows`): after each slow window the draws of that window,
    pooled over all chains, give a regularised covariance estimate
    (:func:`_estimate_covariance`), the chains continue in the new whitened coordinates
    (same ``x``), and the step-size adaptation restarts from the current step size. The
    ``mass_matrix`` argument, if given, is the metric of the first window. The kept
    draws use the last estimate (``MCMCResult.mass_matrix``).

    **Divergences.** A transition whose energy error ``|Delta H|`` exceeds 1000 (NUTS:
    ``has_divergence``, for HMC and ChEES the same threshold on ``-log_accept_ratio``)
    is flagged ``diverging``: the integrator left the typical set, which signals
    curvature the step size cannot resolve (e.g. the neck of Neal's funnel) and biased
    draws there.

    #### Chunks, progress, checkpoints, devices

    The ``num_burnin + num_results`` transitions run as a loop of XLA-compiled chunks of
    at most ``chunk_size`` steps (one compilation serves all chunks: the chunk length is
    a tensor). Between chunks the host updates a ``tqdm`` progress bar (plain text when
    stderr is not a terminal), calls ``callback(info)``, and, with ``checkpoint=path``,
    writes ``path`` (``.npz``, atomically) with the chain state, the adaptation state and
    the draws so far. Calling ``sample_hmc`` again with the same arguments resumes from
    that file (a finished run is read back without sampling); different settings raise
    ``ValueError``. Step ``g`` of the run uses the seed ``fold_in(seed, g)`` and every
    chunk restarts the kernel from the carried state, so a resumed run continues exactly
    like an uninterrupted one, and results do not depend on ``chunk_size``.

    Everything is static-shaped, so the same code runs on CPU, GPU and TPU. With
    ``strategy`` (a ``tf.distribute.Strategy``) the chains are split evenly across its
    replicas (``num_chains`` must be a multiple of ``num_replicas_in_sync``); each replica
    runs its chains with its own seed ``fold_in(seed, replica_id)`` and step sizes (for
    ChEES: its own shared step size and trajectory length), with no communication
    between replicas. One replica (the default strategy) gives the same
    draws as ``strategy=None``.

    Args:
      log_prob_fn: callable ``x[num_chains, D] -> [num_chains]``, the log density (up to
        a constant) in unconstrained space; differentiable and XLA-compilable.
      init: ``[num_chains, D]`` initial states (e.g. MAP or VI draws), finite with finite
        ``log_prob_fn``; with ``transform``, states of ``z``. Ignored when resuming from
        ``checkpoint``.
      num_results: kept draws per chain (>= 1).
      num_burnin: burn-in (step-size adaptation) steps per chain (>= 0).
      kernel: a name in :data:`~.kernels.SAMPLERS` (``"nuts"``, default; ``"chees"``;
        ``"hmc"``) or a :class:`~.kernels.Sampler` instance.
      step_size: initial step size (whitened units), a positive scalar or ``[num_chains]``
        (a scalar for samplers that share it, such as ChEES).
      num_leapfrog_steps: leapfrog steps per HMC transition (``kernel="hmc"``); for
        ChEES the initial trajectory length is ``step_size * num_leapfrog_steps``.
      max_tree_depth: NUTS maximum tree depth (at most ``2**depth - 1`` leapfrog steps);
        for ChEES, the cap ``2**depth - 1`` on the leapfrog steps of a transition.
      mass_matrix: ``None``, ``[D]`` variances or a ``[D, D]`` covariance (see above).
      adapt_mass_matrix: ``None`` (keep ``mass_matrix``), ``"diag"`` or ``"dense"``:
        learn the covariance during burn-in (see above).
      target_accept: target mean acceptance probability of the adaptation, in (0, 1).
      seed: int or pair of ints (``None``: random).
      jit_compile: compile the chunks with XLA (default); ``False`` runs a plain graph.
      chunk_size: steps per compiled chunk (progress/checkpoint granularity).
      progress: show a tqdm progress bar on stderr.
      checkpoint: optional ``.npz`` path to save to after each chunk and resume from.
      trace_fn: optional callable ``x[num_chains, D] -> dict`` of tensors
        ``[num_chains, ...]`` recorded at each kept draw (e.g. constrained parameters).
      strategy: optional ``tf.distribute.Strategy`` to spread chains over devices.
      callback: optional callable receiving a dict (``step``, ``total``, ``phase``,
        ``step_size``, ``divergences``, ``elapsed``) after each chunk.
      dtype: float32 (default) or float64; ``init`` is cast to it.
      reuse_compiled: reuse a compiled chunk from an earlier call with the same
        ``log_prob_fn``/``trace_fn``/``transform`` objects and static settings (sampler
        and its settings, ``chunk_size``, preconditioner kind, ``jit_compile``). A
        ``log_prob_fn`` whose result depends on mutable Python state captured at trace
        time needs ``reuse_compiled=False``.
      transform: optional bijector for NeuTra (see above).

    Returns:
      An :class:`MCMCResult`.

    #### Example

    ```python
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    prec = tf.constant(np.linalg.inv(cov), tf.float32)
    log_prob = lambda x: -0.5 * tf.reduce_sum(x * tf.linalg.matvec(prec, x), -1)
    result = sample_hmc(log_prob, tf.zeros([4, 2]), num_results=500, num_burnin=300, seed=1)
    result.samples.shape                                   # (500, 4, 2)
    diagnostics.potential_scale_reduction(result.samples)  # ~[1.00, 1.00]
    result.num_divergences                                 # [0, 0, 0, 0]
    ```
    """
    if not callable(log_prob_fn):
        raise ValueError(f"log_prob_fn must be callable, got {log_prob_fn!r}")
    sampler = get_sampler(kernel, num_leapfrog_steps, max_tree_depth)
    num_results = _int_arg(num_results, "num_results", 1)
    num_burnin = _int_arg(num_burnin, "num_burnin", 0)
    chunk_size = _int_arg(chunk_size, "chunk_size", 1)
    if isinstance(target_accept, bool) or not isinstance(target_accept, numbers.Real) or not (
            0.0 < float(target_accept) < 1.0):
        raise ValueError(f"target_accept must be a number in (0, 1), got {target_accept!r}")
    for name, fn in (("trace_fn", trace_fn), ("callback", callback)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable or None, got {fn!r}")
    if transform is not None and not isinstance(transform, tfp.bijectors.Bijector):
        raise ValueError(f"transform must be a tfp.bijectors.Bijector or None, got {transform!r}")
    dtype = resolve_dtype(dtype)
    np_dtype = dtype.as_numpy_dtype
    seed_arr = _seed_arg(seed)
    init_arr = _init_arg(init, np_dtype)
    num_chains, dim = init_arr.shape
    replicas = _replicas(strategy, num_chains)
    init_ss = _step_size_arg(step_size, num_chains, replicas, sampler, np_dtype)

    mode, scale = _scale_from_mass_matrix(mass_matrix, dim, np_dtype)
    if adapt_mass_matrix not in _ADAPT_KINDS:
        raise ValueError(
            f"adapt_mass_matrix must be one of {_ADAPT_KINDS}, got {adapt_mass_matrix!r}")
    windows = adaptation_windows(num_burnin) if adapt_mass_matrix else []
    if windows:
        if mode == "none":
            mode = adapt_mass_matrix
            scale = (np.ones([dim], np_dtype) if mode == "diag" else np.eye(dim, dtype=np_dtype))
        elif mode == "diag" and adapt_mass_matrix == "dense":
            mode, scale = "dense", np.diag(scale).astype(np_dtype)

    if checkpoint is not None:
        checkpoint = check_output_path(checkpoint, overwrite=True)
    config = {
        "version": _CHECKPOINT_VERSION, "kernel": sampler.name, "num_results": num_results,
        "num_burnin": num_burnin, "num_chains": int(num_chains), "dim": int(dim),
        "seed": seed_arr.tolist(), "dtype": dtype.name, "target_accept": float(target_accept),
        "step_size": [float(v) for v in init_ss.ravel()], "replicas": replicas,
        **sampler.settings,
        "mass_matrix": mode, "adapt_mass_matrix": adapt_mass_matrix,
        "mass_matrix_digest": None if scale is None else hashlib.sha1(
            np.ascontiguousarray(scale).tobytes()).hexdigest(),
    }
    if transform is not None:
        config["transform"] = transform.name

    if checkpoint is not None and os.path.exists(checkpoint):
        step_done, carry, host, warm = _load_checkpoint(checkpoint, config, sampler)
    else:
        _check_initial_log_prob(log_prob_fn, init_arr, transform)
        state0 = np.tile(sampler.initial_state(float(init_ss.ravel()[0])), (replicas, 1))
        carry = _initial_carry(init_arr, mode, scale, init_ss, state0.astype(np_dtype))
        step_done, host, warm = 0, None, None

    runner = _get_runner(log_prob_fn, trace_fn, sampler, transform, chunk_size, mode,
                         jit_compile, reuse_compiled)
    run_chunk = _chunk_caller(runner, strategy, replicas, seed_arr, num_burnin,
                              target_accept, dtype)
    carry, host, warm, timing = _run_chunks(
        run_chunk, carry, step_done, host, warm, num_burnin=num_burnin,
        num_results=num_results, chunk_size=chunk_size, windows=windows,
        adapt_kind=adapt_mass_matrix, mode=mode, sampler=sampler, np_dtype=np_dtype,
        checkpoint=checkpoint, config=config, progress=progress, callback=callback,
        desc=f"{sampler.name.upper()} {num_chains} chains")
    return _result(carry, host, warm, timing, sampler, mode, num_chains, step_done)


def _init_arg(init, np_dtype):
    init_arr = np.asarray(init.numpy() if hasattr(init, "numpy") else init)
    if init_arr.ndim != 2 or init_arr.shape[0] < 1 or init_arr.shape[1] < 1:
        raise ValueError(
            f"init must have shape [num_chains, D], got shape {list(init_arr.shape)}")
    if init_arr.dtype.kind not in "fiu" or not np.all(np.isfinite(init_arr)):
        raise ValueError("init must be a finite real array")
    return init_arr.astype(np_dtype)


def _replicas(strategy, num_chains):
    if strategy is None:
        return 1
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(f"strategy must be a tf.distribute.Strategy, got {strategy!r}")
    replicas = int(strategy.num_replicas_in_sync)
    if num_chains % replicas:
        raise ValueError(
            f"num_chains={num_chains} (init.shape[0]) must be a multiple of the "
            f"strategy's {replicas} replicas")
    return replicas


def _step_size_arg(step_size, num_chains, replicas, sampler, np_dtype):
    """Initial step sizes: ``[C, 1]`` (one per chain) or ``[replicas]`` (shared)."""
    ss = np.asarray(step_size.numpy() if hasattr(step_size, "numpy") else step_size,
                    dtype=np.float64)
    if ss.ndim == 0:
        ss = np.full([num_chains], float(ss))
    if ss.shape != (num_chains,) or not np.all(np.isfinite(ss)) or np.any(ss <= 0):
        raise ValueError(
            f"step_size must be a positive scalar or [num_chains={num_chains}] array, got "
            f"{step_size!r}")
    if sampler.shares_step_size:
        if not np.all(ss == ss[0]):
            raise ValueError(
                f"step_size must be a scalar for kernel={sampler.name!r} (one step size "
                f"shared by the chains), got {step_size!r}")
        return np.full([replicas], ss[0], np_dtype)
    return ss.astype(np_dtype)[:, None]


def _check_initial_log_prob(log_prob_fn, init_arr, transform):
    num_chains = init_arr.shape[0]
    x0 = tf.constant(init_arr)
    if transform is not None:
        x0 = transform.forward(x0)
    lp0 = log_prob_fn(x0)
    lp0 = np.asarray(lp0.numpy() if hasattr(lp0, "numpy") else lp0)
    if lp0.shape != (num_chains,):
        raise ValueError(
            f"log_prob_fn(init) must have shape [num_chains={num_chains}], got "
            f"{list(lp0.shape)}")
    if not np.all(np.isfinite(lp0)):
        bad = int(np.flatnonzero(~np.isfinite(lp0))[0])
        raise ValueError(
            f"log_prob_fn(init) is not finite for chain {bad} (value {lp0[bad]!r}); "
            "start the chains inside the support")


def _initial_carry(init_arr, mode, scale, init_ss, sampler_state):
    """The host state of a fresh run: whitened chains, adaptation state, preconditioner."""
    np_dtype = init_arr.dtype
    if mode == "none":
        u0 = init_arr
    elif mode == "diag":
        u0 = init_arr / scale
    else:
        from scipy.linalg import solve_triangular

        u0 = solve_triangular(scale.astype(np.float64), init_arr.T.astype(np.float64),
                              lower=True).T.astype(np_dtype)
    return {
        "u": np.asarray(u0, np_dtype),
        "error_sum": np.zeros(init_ss.shape[:1], np_dtype),
        "log_averaging_step": np.zeros_like(init_ss),
        "new_step_size": init_ss,
        "init_step_size": init_ss,
        "sampler_state": sampler_state,
        "adapt_start": np.array(0, np.int64),
        "scale": np.zeros([1], np_dtype) if scale is None else np.asarray(scale, np_dtype),
    }


def _run_chunks(run_chunk, carry, step_done, host, warm, *, num_burnin, num_results,
                chunk_size, windows, adapt_kind, mode, sampler, np_dtype, checkpoint, config,
                progress, callback, desc):
    """The host loop: chunks up to each window end, burn-in end and the last draw; the
    metric update after each window; checkpoint, progress bar and callback per chunk.
    Returns ``(carry, host draws, warm-up draws, timing)``."""
    from tqdm.auto import tqdm

    total = num_burnin + num_results
    bar = tqdm(total=total, initial=step_done, disable=not progress, file=sys.stderr,
               desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)
    t_start = time.perf_counter()
    timing = {"warmup": 0.0, "sampling": 0.0, "first_chunk": None}
    chunk_times = []
    try:
        g = step_done
        ends = sorted({e for _, e in windows} | {num_burnin, total})
        while g < total:
            boundary = min(e for e in ends if e > g)
            n = min(chunk_size, boundary - g)
            t0 = time.perf_counter()
            carry, bufs = run_chunk(carry, g, n)
            dt = time.perf_counter() - t0
            chunk_times.append((dt, n))
            if timing["first_chunk"] is None:
                timing["first_chunk"] = dt
            timing["warmup" if g < num_burnin else "sampling"] += dt
            if host is None:
                host = {k: np.zeros((num_results,) + v.shape[1:], v.dtype)
                        for k, v in bufs.items()}
                warm = {k: np.zeros((num_burnin,) + v.shape[1:], v.dtype)
                        for k, v in bufs.items() if not k.startswith("trace/")}
            if g < num_burnin:
                for k in warm:
                    warm[k][g:g + n] = bufs[k]
            else:
                for k in host:
                    host[k][g - num_burnin:g - num_burnin + n] = bufs[k]
            g += n
            for start, end in windows:
                if g == end:
                    carry = _next_metric(carry, warm["z" if "z" in warm else "x"][start:end],
                                         adapt_kind, mode, end, np_dtype, sampler)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, config, g, carry, host, warm)
            phase = "warmup" if g <= num_burnin and num_burnin > 0 else "sampling"
            src = warm if phase == "warmup" else host
            hi = g if phase == "warmup" else g - num_burnin
            divs = int(src["diverging"][:hi].sum())
            step_now = carry["new_step_size"].ravel()
            bar.set_postfix(phase=phase, eps=f"{float(np.median(step_now)):.3g}",
                            div=divs, refresh=False)
            bar.update(n)
            if callback is not None:
                callback({"step": g, "total": total, "phase": phase,
                          "step_size": step_now.copy(), "divergences": divs,
                          "elapsed": time.perf_counter() - t_start})
    finally:
        bar.close()

    if host is None:  # pragma: no cover - num_results >= 1 guarantees one chunk
        raise RuntimeError("no draws were produced")
    timing["total"] = time.perf_counter() - t_start
    if len(chunk_times) > 1:
        rest = sum(t for t, _ in chunk_times[1:]) / sum(n for _, n in chunk_times[1:])
        timing["compile_estimate"] = max(chunk_times[0][0] - rest * chunk_times[0][1], 0.0)
    else:
        timing["compile_estimate"] = None
    return carry, host, warm, timing


def _result(carry, host, warm, timing, sampler, mode, num_chains, resumed_from):
    stats = {k: host[k] for k in host if k not in ("x", "z") and not k.startswith("trace/")}
    warm = dict(warm or {})
    warm_x = warm.pop("x", None)
    warm_z = warm.pop("z", None)
    stats["diverging"] = stats["diverging"].astype(bool)
    if "reached_max_treedepth" in stats:
        stats["reached_max_treedepth"] = stats["reached_max_treedepth"].astype(bool)
    if "diverging" in warm:
        warm["diverging"] = warm["diverging"].astype(bool)
    step_size = np.asarray(carry["new_step_size"]).ravel()
    return MCMCResult(
        samples=host["x"],
        log_prob=host["lp"],
        sample_stats=stats,
        trace={k[6:]: v for k, v in host.items() if k.startswith("trace/")},
        warmup_stats=warm,
        step_size=np.repeat(step_size, num_chains // step_size.shape[0]),
        kernel=sampler.name,
        timing=timing,
        resumed_from_step=int(resumed_from),
        mass_matrix=_metric_from_scale(mode, carry["scale"]),
        warmup_samples=warm_x,
        base_samples=host.get("z"),
        warmup_base_samples=warm_z,
    )


def _metric_from_scale(mode, scale):
    """The covariance ``Sigma`` of a whitening ``scale`` (see ``_scale_from_mass_matrix``)."""
    if mode == "none":
        return None
    s = np.asarray(scale, np.float64)
    return s ** 2 if mode == "diag" else s @ s.T


def _next_metric(carry, xw, kind, mode, end, np_dtype, sampler):
    """Carry for the next warm-up window: new metric from the window draws ``xw``, the
    chains' ``u`` moved to its whitened coordinates, step-size adaptation restarted."""
    from scipy.linalg import solve_triangular

    cov = _estimate_covariance(xw, kind)
    old = np.asarray(carry["scale"], np.float64)
    u = np.asarray(carry["u"], np.float64)
    x = u * old if mode == "diag" else u @ old.T
    try:
        if mode == "diag":
            new = np.sqrt(cov)
            u_new = x / new
        else:
            new = np.linalg.cholesky(np.diag(cov) if cov.ndim == 1 else cov)
            u_new = solve_triangular(new, x.T, lower=True).T
    except np.linalg.LinAlgError:
        return dict(carry, adapt_start=np.array(end, np.int64))  # keep the old metric
    if not (np.all(np.isfinite(new)) and np.all(np.isfinite(u_new))):
        return dict(carry, adapt_start=np.array(end, np.int64))
    # Restart dual averaging from the averaged step size of the last window (the current
    # iterate is noisier); it is also the new shrinkage target's reference.
    eps = np.exp(np.asarray(carry["log_averaging_step"], np.float64))
    eps = np.where(np.isfinite(eps) & (eps > 0) & (np.asarray(carry["log_averaging_step"]) != 0),
                   eps, np.asarray(carry["new_step_size"], np.float64))
    eps = eps.astype(np_dtype)
    out = dict(carry)
    out.update({
        "u": u_new.astype(np_dtype),
        "scale": new.astype(np_dtype),
        "error_sum": np.zeros_like(carry["error_sum"]),
        "log_averaging_step": np.zeros_like(carry["log_averaging_step"]),
        "new_step_size": eps,
        "init_step_size": eps,
        "adapt_start": np.array(end, np.int64),
        "sampler_state": sampler.state_for_new_metric(carry["sampler_state"]),
    })
    return out
