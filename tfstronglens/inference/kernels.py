"""Markov transition kernels for :func:`~tfstronglens.inference.sample_hmc`.

One class per sampler; each builds its kernel from ``tfp.mcmc`` parts and says what it
records. Everything a sampler does not need to know lives in the chunked driver
(:mod:`.mcmc`): step-size adaptation by dual averaging (wrapped around the kernel built
here), the preconditioner (the sampler sees whitened coordinates ``u``), warm-up
windows for the mass matrix, XLA chunks, checkpoints and resume, progress,
``tf.distribute`` replicas and the result object.

Adding a sampler is writing one subclass of :class:`Sampler` with a ``name``: it
registers itself in :data:`SAMPLERS`, and ``sample_hmc(kernel=name)`` runs it.

Carried state
-------------
The driver restarts the kernel from ``bootstrap_results`` at every chunk and restores
the adaptation state it carried over from the last one, so that a chunked, resumed or
distributed run is bit-identical to an uninterrupted one. The dual-averaging state
(one step size per chain, or per replica for samplers with ``shares_step_size``) is
carried by the driver; a sampler with state of its own names it in ``state_names`` and
implements :meth:`Sampler.restore_state` / :meth:`Sampler.export_state` (ChEES carries
its trajectory length). The state is a float vector per replica, checkpointed as
``sampler_state``.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["Sampler", "NUTS", "HMC", "ChEES", "SAMPLERS", "get_sampler",
           "self_tuning_samplers", "hmc_statistics", "MAX_ENERGY_ERROR"]

tfm = tfp.mcmc

SAMPLERS: dict = {}
"""Registered samplers, ``name -> class`` (filled by subclassing :class:`Sampler`)."""

MAX_ENERGY_ERROR = 1000.0
"""Energy error ``|H(end) - H(start)|`` above which a transition counts as divergent
(NUTS's ``max_energy_diff``, Stan's value; HMC and ChEES use the same threshold)."""


def get_sampler(kernel, num_leapfrog_steps: int = 10, max_tree_depth: int = 10) -> "Sampler":
    """A :class:`Sampler` from a registered name (``"nuts"``, ``"hmc"``, ``"chees"``, ...)
    or an instance (returned as it is)."""
    if isinstance(kernel, Sampler):
        return kernel
    if not isinstance(kernel, str) or kernel not in SAMPLERS:
        raise ValueError(f"kernel must be one of {tuple(SAMPLERS)} or a Sampler, got {kernel!r}")
    return SAMPLERS[kernel](num_leapfrog_steps=num_leapfrog_steps,
                            max_tree_depth=max_tree_depth)


def self_tuning_samplers() -> tuple:
    """Names of the registered samplers that choose their trajectory lengths themselves
    (``tunes_trajectory``): the ones a pipeline can run without a hand-set
    ``num_leapfrog_steps`` (``fit_lens(hmc_kernel=...)``, ``fit --hmc-kernel``)."""
    return tuple(name for name, cls in SAMPLERS.items() if cls.tunes_trajectory)


def _int_setting(value, name, minimum, maximum=None):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


class Sampler:
    """A Hamiltonian transition kernel with its static settings.

    Subclasses set the class attributes

    * ``name``: the registry key (``sample_hmc(kernel=name)``);
    * ``shares_step_size``: one step size for all chains of a replica (adapted on
      ``reduce_fn`` of their acceptance probabilities) instead of one per chain;
    * ``reduce_fn``: how dual averaging pools the chains' log acceptance ratios;
    * ``tunes_trajectory``: the sampler chooses its trajectory lengths itself (NUTS,
      ChEES), so a pipeline can run it without a hand-set ``num_leapfrog_steps``;
    * ``default_target_accept``: the acceptance probability its step size is tuned to by
      default (``fit_lens``);
    * ``state_names``: its own carried adaptation state (see the module docstring);
    * ``settings_used``: which of ``num_leapfrog_steps``/``max_tree_depth`` it reads
      (the others are recorded as ``None`` in checkpoints, so they may differ on resume);

    and implement :meth:`kernel` and :meth:`statistics`.

    Args:
      num_leapfrog_steps: leapfrog steps per transition (fixed-length HMC), or the
        initial trajectory length in steps (ChEES).
      max_tree_depth: NUTS's maximum tree depth (``2**depth - 1`` leapfrog steps at
        most); ChEES's cap on the leapfrog steps of a transition, the same number.
    """

    name: str = ""
    shares_step_size: bool = False
    reduce_fn = staticmethod(tfp.math.reduce_logmeanexp)
    tunes_trajectory: bool = False
    default_target_accept: float = 0.8
    state_names: tuple = ()
    settings_used: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            SAMPLERS[cls.name] = cls

    def __init__(self, num_leapfrog_steps: int = 10, max_tree_depth: int = 10):
        self.num_leapfrog_steps = _int_setting(num_leapfrog_steps, "num_leapfrog_steps", 1)
        self.max_tree_depth = _int_setting(max_tree_depth, "max_tree_depth", 1, 30)

    @property
    def settings(self) -> dict:
        """The static settings this sampler reads (``None`` for the others): part of the
        checkpoint's identity and of the compiled chunk's cache key."""
        return {k: (getattr(self, k) if k in self.settings_used else None)
                for k in ("num_leapfrog_steps", "max_tree_depth")}

    def __eq__(self, other):
        return type(self) is type(other) and self.settings == other.settings

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.settings.items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.settings.items() if v is not None)
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- the kernel
    def kernel(self, target_log_prob_fn, step_size, num_adaptation_steps):
        """The ``tfp.mcmc`` kernel on whitened coordinates, before step-size adaptation.

        ``step_size`` is ``[C, 1]`` (one per chain) or a scalar (``shares_step_size``);
        ``num_adaptation_steps`` (a scalar tensor) is the number of steps left in the
        current adaptation window, for samplers that adapt more than the step size.
        """
        raise NotImplementedError

    def statistics(self, results, dtype):
        """Per-draw statistics from the kernel results (inside the dual-averaging wrapper).

        Returns ``(stats, log_accept_ratio, step_size)``: ``stats`` a dict of
        ``[C]`` tensors that holds at least ``lp`` (the target at the new state),
        ``diverging`` and ``n_steps`` (leapfrog steps, as ``dtype``); the driver adds
        ``acceptance_rate`` and ``step_size`` from the other two.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- carried state
    def initial_state(self, step_size: float) -> np.ndarray:
        """``[len(state_names)]`` values of the carried state at the first step."""
        return np.zeros([len(self.state_names)], np.float64)

    def restore_state(self, results, state, step):
        """``results`` with the carried ``state`` (``[len(state_names)]``) put back;
        ``step`` is the step counter of the current adaptation window."""
        return results

    def export_state(self, results):
        """``[len(state_names)]`` carried state after a chunk (None: nothing to carry)."""
        return None

    def state_for_new_metric(self, state: np.ndarray) -> np.ndarray:
        """The carried state ``[replicas, len(state_names)]`` (numpy) to continue with
        when the warm-up switches to a new mass matrix (default: unchanged)."""
        return state


class NUTS(Sampler):
    """The No-U-Turn sampler (Hoffman & Gelman 2014; multinomial variant, Betancourt
    2017): the trajectory doubles until it makes a U-turn or reaches
    ``2**max_tree_depth - 1`` leapfrog steps. One step size per chain.

    Records ``tree_depth`` (``ceil(log2(n_steps + 1))``) and ``reached_max_treedepth``.
    """

    name = "nuts"
    tunes_trajectory = True
    settings_used = ("max_tree_depth",)

    def kernel(self, target_log_prob_fn, step_size, num_adaptation_steps):
        return tfm.NoUTurnSampler(target_log_prob_fn, step_size=step_size,
                                  max_tree_depth=self.max_tree_depth,
                                  max_energy_diff=MAX_ENERGY_ERROR)

    def statistics(self, results, dtype):
        n = tf.cast(results.leapfrogs_taken, dtype)
        stats = {
            "lp": results.target_log_prob,
            "diverging": results.has_divergence,
            "n_steps": n,
            "tree_depth": tf.math.ceil(tf.math.log(n + 1.0) / np.log(2.0) - 1e-3),
            "reached_max_treedepth": results.reach_max_depth,
        }
        return stats, results.log_accept_ratio, results.step_size


def hmc_statistics(results, num_steps, dtype):
    """:meth:`Sampler.statistics` of a ``tfm.HamiltonianMonteCarlo`` transition with
    ``num_steps`` leapfrog steps, for samplers built on it (``energy_error`` is
    ``H(end) - H(start)``; divergent above :data:`MAX_ENERGY_ERROR`)."""
    lp = results.accepted_results.target_log_prob
    lar = results.log_accept_ratio
    energy_error = -lar
    stats = {
        "lp": lp,
        "diverging": ~(tf.math.abs(energy_error) < MAX_ENERGY_ERROR),
        "n_steps": tf.fill(tf.shape(lp), tf.cast(num_steps, dtype)),
        "energy_error": energy_error,
    }
    return stats, lar, results.accepted_results.step_size


class HMC(Sampler):
    """Hamiltonian Monte Carlo with a fixed ``num_leapfrog_steps`` per transition (Duane
    et al. 1987; Neal 2011). One step size per chain. Records ``energy_error``."""

    name = "hmc"
    settings_used = ("num_leapfrog_steps",)

    def kernel(self, target_log_prob_fn, step_size, num_adaptation_steps):
        return tfm.HamiltonianMonteCarlo(target_log_prob_fn, step_size=step_size,
                                         num_leapfrog_steps=self.num_leapfrog_steps)

    def statistics(self, results, dtype):
        return hmc_statistics(results, self.num_leapfrog_steps, dtype)


class ChEES(Sampler):
    """ChEES-HMC (Hoffman, Radul & Sountsov 2021, AISTATS).

    HMC with ``ceil(h_n T / eps)`` leapfrog steps at transition ``n`` (``h_n`` a Halton
    sequence in (0, 1]), whose trajectory length ``T`` is adapted during burn-in by
    stochastic gradient ascent on the ChEES criterion
    ``E[(|x' - mean|^2 - |x - mean|^2)^2]`` (mean across chains, weighted by acceptance)
    with ``tfp.experimental.mcmc.GradientBasedTrajectoryLengthAdaptation``. All chains
    of a replica share the step size (adapted on the harmonic mean of their acceptance
    probabilities) and ``T``, so each transition costs every chain the same number of
    gradients. ``num_leapfrog_steps * step_size`` is the initial ``T``; at most
    ``2**max_tree_depth - 1`` leapfrog steps per transition. Use tens of chains.

    Carried state: ``T`` (whitened units), its running average and the RMSProp
    normaliser of its gradient. Records ``energy_error`` and ``trajectory_length``.
    """

    name = "chees"
    shares_step_size = True
    reduce_fn = staticmethod(tfp.math.reduce_log_harmonic_mean_exp)
    tunes_trajectory = True
    default_target_accept = 0.651
    state_names = ("max_trajectory_length", "averaged_max_trajectory_length",
                   "averaged_sq_grad")
    settings_used = ("num_leapfrog_steps", "max_tree_depth")

    def kernel(self, target_log_prob_fn, step_size, num_adaptation_steps):
        hmc = tfm.HamiltonianMonteCarlo(target_log_prob_fn, step_size=step_size,
                                        num_leapfrog_steps=1)
        return tfp.experimental.mcmc.GradientBasedTrajectoryLengthAdaptation(
            hmc, num_adaptation_steps=num_adaptation_steps,
            max_leapfrog_steps=2 ** self.max_tree_depth - 1)

    def statistics(self, results, dtype):
        inner = results.inner_results
        stats, lar, step_size = hmc_statistics(
            inner, inner.accepted_results.num_leapfrog_steps, dtype)
        stats["trajectory_length"] = tf.fill(tf.shape(stats["lp"]),
                                             results.max_trajectory_length)
        return stats, lar, step_size

    def initial_state(self, step_size: float) -> np.ndarray:
        return np.array([step_size * self.num_leapfrog_steps, 0.0, 0.0])

    def restore_state(self, results, state, step):
        return results._replace(max_trajectory_length=state[0],
                                averaged_max_trajectory_length=state[1],
                                averaged_sq_grad=state[2], step=step)

    def export_state(self, results):
        return tf.stack([results.max_trajectory_length,
                         results.averaged_max_trajectory_length, results.averaged_sq_grad])

    def state_for_new_metric(self, state: np.ndarray) -> np.ndarray:
        """Keep the trajectory length, restart its running averages."""
        state = np.array(state, copy=True)
        state[:, 1:] = 0
        return state
