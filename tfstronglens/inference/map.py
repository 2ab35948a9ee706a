r"""Maximum a posteriori (and maximum likelihood) fits by batched multi-start optimisation.

#### Method

``num_starts`` starting points are drawn from the prior (or built around a given
``init``) and mapped to the unconstrained space ``R^D`` of
:class:`~tfstronglens.inference.LensModel`; all starts form one tensor ``[S, D]`` and are
optimised together by Adam (Kingma & Ba 2015) on

    loss(x) = -log p~(x | data)      (objective="posterior": prior + likelihood + log|J|)
    loss(x) = -log L(data | theta(x)) (objective="likelihood": maximum likelihood),

with a learning rate decaying exponentially from ``learning_rate`` to
``learning_rate * lr_decay`` over ``num_steps``. Each start keeps the best point it
visited; the best start overall is the estimate. Optionally all final points are then
polished together by L-BFGS (``tfp.optimizer.lbfgs_minimize``, batched), keeping a polished
point only where it improves the objective.

Note that the posterior mode in unconstrained coordinates (with ``log|J|``) differs from
the mode of the constrained density; both are reported through ``log_posterior``.

#### Compilation and speed

The expensive part is the XLA compilation of the model's value-and-gradient (tens of
seconds on a CPU). By default (``steps_per_call=1``) each Adam step calls the model's
compiled :meth:`LensModel.value_and_gradient`, so that one compilation (per batch size)
is shared with VI, the Laplace approximation, detection and any later fit; the per-step
Python overhead is well below a millisecond. ``steps_per_call=k > 1`` instead compiles a
``tf.while_loop`` of ``k`` Adam steps into one XLA program (one more compilation; a
little faster per step, most useful on accelerators). A tqdm progress bar is updated
between calls.
"""

from __future__ import annotations

import math
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from ._util import adam_update, as_seed, positive_float, positive_int, progress_bar
from .model import LensModel

__all__ = ["find_map", "MAPResult", "initial_points"]


class MAPResult:
    """The result of :func:`find_map`.

    Attributes:
      params: dict name -> best constrained value (scalar tensors; event-shaped for a
        pixelated source).
      x: best point in unconstrained space, ``[D]``.
      objective: the best objective value (``log p~`` or ``log L``).
      log_likelihood, log_posterior: at the best point (``log_posterior`` is the
        constrained-space ``log prior + log L``, without ``log|J|``).
      all_x: ``[S, D]`` best point of every start; ``all_params``: dict of ``[S, ...]``;
        ``all_objective``: ``[S]`` (``-inf`` for starts that never had a finite value).
      loss_history: numpy ``[num_steps, S]``, the loss ``-objective`` at every step.
      param_names, num_starts, num_steps, wall_time (seconds), objective_name.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def summary(self) -> dict:
        """Best-fit values as Python floats (scalar parameters) by name."""
        return {k: float(v) for k, v in self.params.items() if np.ndim(v) == 0}

    def __repr__(self):
        return (f"MAPResult(objective={self.objective_name}, value={self.objective:.6g}, "
                f"num_starts={self.num_starts}, num_steps={self.num_steps}, "
                f"wall_time={self.wall_time:.3g}s)")


def initial_points(model: LensModel, num_starts: int, seed=None, init=None,
                   init_jitter: float = 0.0):
    """``[num_starts, D]`` unconstrained starting points.

    ``init``: ``None`` (prior draws); a dict of constrained values for some or all
    parameters (scalars, or ``[num_starts]`` arrays), the other parameters drawn from the
    prior; a :class:`MAPResult` (its best point); or an array ``[D]`` / ``[S, D]`` of
    unconstrained points. ``init_jitter`` adds ``Normal(0, init_jitter)`` noise in
    unconstrained space to the given (non-prior) coordinates.
    """
    s_prior, s_jit = tfp.random.split_seed(as_seed(seed), 2)
    D = model.num_params
    if init is None:
        return model.sample_unconstrained_prior(num_starts, s_prior)
    if isinstance(init, MAPResult):
        init = init.x
    if isinstance(init, dict):
        draws = dict(model.sample_prior(num_starts, s_prior))
        unknown = sorted(set(init) - set(model.parameters))
        if unknown:
            raise ValueError(f"init has unknown parameter name(s) {unknown}; the model's are "
                             f"{model.parameters}")
        given = np.zeros(D, bool)
        offsets = np.cumsum([0] + [p.size for p in model._params])
        for i, p in enumerate(model._params):
            if p.name in init:
                v = tf.cast(init[p.name], model.dtype)
                draws[p.name] = tf.broadcast_to(v, [num_starts] + list(p.event_shape))
                given[offsets[i]:offsets[i + 1]] = True
        x = model.to_flat(draws)
        bad = ~np.all(np.isfinite(np.asarray(x)), axis=0)
        if bad.any():
            names = [n for n, b in zip(model.param_names, bad) if b]
            raise ValueError(
                f"init value(s) of {names} lie on or outside the prior's support (their "
                "unconstrained coordinates are not finite); start inside the prior range")
        if init_jitter:
            noise = tf.random.stateless_normal(x.shape, s_jit, dtype=model.dtype)
            x = x + tf.where(tf.constant(given), init_jitter * noise, tf.zeros_like(noise))
        return x
    x = tf.convert_to_tensor(np.asarray(init, dtype=model.dtype.as_numpy_dtype))
    if x.shape.rank == 1:
        x = tf.broadcast_to(x, [num_starts, D])
    if x.shape.rank != 2 or x.shape[-1] != D:
        raise ValueError(f"init must be a dict, a MAPResult or an array [D] / [S, D] with "
                         f"D = {D}, got shape {x.shape.as_list()}")
    if init_jitter:
        x = x + init_jitter * tf.random.stateless_normal(x.shape, s_jit, dtype=model.dtype)
    return x


def _adam_chunk_fn(model, objective, k):
    """A compiled function running ``k`` Adam steps (while_loop) on all starts."""

    def run(x, m, v, t0, best_x, best_val, data, lr0, decay_rate):
        def body(i, x, m, v, best_x, best_val, hist):
            with tf.GradientTape() as tape:
                tape.watch(x)
                val = model._unconstrained_impl(x, data, objective)
            g = tape.gradient(val, x)
            x, m, v, best_x, best_val = _step(x, m, v, t0 + tf.cast(i, x.dtype) + 1.0, val, g,
                                              best_x, best_val, lr0, decay_rate)
            return i + 1, x, m, v, best_x, best_val, hist.write(i, -val)

        hist = tf.TensorArray(x.dtype, size=k)
        _, x, m, v, best_x, best_val, hist = tf.while_loop(
            lambda i, *_: i < k, body, (tf.constant(0), x, m, v, best_x, best_val, hist))
        return x, m, v, best_x, best_val, hist.stack()

    return tf.function(run, jit_compile=True, autograph=False)


def _step(x, m, v, t, val, g, best_x, best_val, lr0, decay_rate):
    """Adam ascent step on ``val`` with NaN guards and best-point tracking."""
    finite = tf.math.is_finite(val) & tf.reduce_all(tf.math.is_finite(g), axis=-1)
    improved = finite & (val > best_val)
    best_x = tf.where(improved[:, None], x, best_x)
    best_val = tf.where(improved, val, best_val)
    g = tf.where(finite[:, None], g, tf.zeros_like(g))
    lr = lr0 * tf.exp(-decay_rate * (t - 1.0))
    x_new, m_new, v_new = adam_update(x, -g, m, v, t, lr)
    # a start whose value/gradient is not finite goes back to its best point
    x_new = tf.where(finite[:, None], x_new, best_x)
    return x_new, m_new, v_new, best_x, best_val


_step_jit = tf.function(_step, jit_compile=True, autograph=False)


def find_map(model: LensModel, data=None, num_starts: int = 100, num_steps: int = 1000,
             learning_rate: float = 0.05, seed=None, init=None, init_jitter: float = 0.0,
             objective: str = "posterior", lr_decay: float = 0.1, lbfgs_steps: int = 0,
             steps_per_call: int = 1, progress: bool = True) -> MAPResult:
    r"""Multi-start MAP (or maximum-likelihood) fit of a :class:`LensModel` (see module docs).

    Args:
      model: the :class:`LensModel`.
      data: the image ``[N, N]`` (default: the model's data).
      num_starts: number of starts ``S`` optimised together (batched).
      num_steps: Adam steps (>= 1).
      learning_rate: initial Adam step size in unconstrained units.
      seed: int or stateless seed for the starting points.
      init, init_jitter: starting points (see :func:`initial_points`).
      objective: ``"posterior"`` (default) or ``"likelihood"``.
      lr_decay: final learning rate as a fraction of the initial one (exponential decay).
      lbfgs_steps: if > 0, polish all final points with this many L-BFGS iterations.
      steps_per_call: Adam steps per compiled call (1: reuse the model's compiled
        gradient; > 1: compile a loop of that many steps).
      progress: show a tqdm progress bar.

    Returns:
      a :class:`MAPResult`.

    #### Example

    >>> res = find_map(model, data, num_starts=100, num_steps=500, seed=1)
    >>> res.params["lens.0.theta_E"], res.log_posterior
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    model._check_objective(objective)
    S = positive_int(num_starts, "num_starts")
    n_steps = positive_int(num_steps, "num_steps")
    lr0 = positive_float(learning_rate, "learning_rate")
    decay = positive_float(lr_decay, "lr_decay")
    if decay > 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    k = positive_int(steps_per_call, "steps_per_call")
    n_lbfgs = positive_int(lbfgs_steps, "lbfgs_steps", minimum=0)
    d = model._get_data(data)
    dt = model.dtype
    start = time.perf_counter()
    x = initial_points(model, S, seed, init, init_jitter)
    m = tf.zeros_like(x)
    v = tf.zeros_like(x)
    best_x = x
    best_val = tf.fill([S], tf.constant(-np.inf, dt))
    decay_rate = tf.constant(-math.log(decay) / max(n_steps - 1, 1), dt)
    lr_t = tf.constant(lr0, dt)
    history = []
    bar = progress_bar(n_steps, "MAP" if objective == "posterior" else "ML", progress)
    chunk = _adam_chunk_fn(model, objective, k) if k > 1 else None
    t = 0
    while t < n_steps:
        if chunk is not None and n_steps - t >= k:
            x, m, v, best_x, best_val, hist = chunk(x, m, v, tf.constant(float(t), dt), best_x,
                                                    best_val, d, lr_t, decay_rate)
            history.append(hist.numpy())
            t += k
            bar.update(k)
        else:
            val, g = model._value_and_grad_2d(x, d, objective)
            x, m, v, best_x, best_val = _step_jit(x, m, v, tf.constant(t + 1.0, dt), val, g,
                                                  best_x, best_val, lr_t, decay_rate)
            history.append(-val.numpy()[None])
            t += 1
            bar.update(1)
        if progress and (t % 50 == 0 or t == n_steps):
            bar.set_postfix_str(f"best {float(tf.reduce_max(best_val)):.6g}")
    bar.close()
    # the last point too
    val, _ = model._value_and_grad_2d(x, d, objective)   # (shares the compiled gradient)
    improved = tf.math.is_finite(val) & (val > best_val)
    best_x = tf.where(improved[:, None], x, best_x)
    best_val = tf.where(improved, val, best_val)
    if n_lbfgs:
        best_x, best_val = _lbfgs_polish(model, best_x, best_val, d, objective, n_lbfgs)
    i_best = int(tf.argmax(tf.where(tf.math.is_finite(best_val), best_val,
                                    tf.fill([S], tf.constant(-np.inf, dt)))))
    x_best = best_x[i_best]
    all_params = model.from_flat(best_x)
    params = {k_: v_[i_best] for k_, v_ in all_params.items()}
    one = {k_: v_[None] for k_, v_ in params.items()}
    ll = float(model.log_likelihood(one, d)[0])
    lp = float(model.log_posterior(one, d)[0])
    return MAPResult(params=params, x=x_best, objective=float(best_val[i_best]),
                     objective_name=objective, log_likelihood=ll, log_posterior=lp,
                     all_x=best_x, all_params=all_params, all_objective=best_val,
                     loss_history=np.concatenate(history, axis=0), param_names=model.param_names,
                     num_starts=S, num_steps=n_steps, best_index=i_best,
                     wall_time=time.perf_counter() - start)


def _lbfgs_polish(model, x0, val0, data, objective, max_iterations):
    """Batched L-BFGS from every point; keep a polished point only where it is better."""

    def vg(x):
        val, g = model._value_and_grad_2d(x, data, objective)
        ok = tf.math.is_finite(val) & tf.reduce_all(tf.math.is_finite(g), axis=-1)
        big = tf.constant(1e30, val.dtype)
        return (tf.where(ok, -val, big), tf.where(ok[:, None], -g, tf.zeros_like(g)))

    start = tf.where(tf.math.is_finite(val0)[:, None], x0, tf.zeros_like(x0))
    res = tfp.optimizer.lbfgs_minimize(vg, initial_position=start,
                                       max_iterations=max_iterations, tolerance=1e-8,
                                       x_tolerance=0.0, f_relative_tolerance=1e-9,
                                       stopping_condition=tfp.optimizer.converged_all)
    val, _ = model._value_and_grad_2d(res.position, data, objective)
    better = tf.math.is_finite(val) & (val > val0)
    return (tf.where(better[:, None], res.position, x0), tf.where(better, val, val0))
