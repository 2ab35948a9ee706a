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
polished together by Levenberg-Marquardt (``lm_steps``, :func:`polish_levenberg_marquardt`:
Gauss-Newton curvature of the chi^2 plus the exact Hessian of the prior, converging in
a few tens of iterations where Adam needs thousands) or by L-BFGS
(``tfp.optimizer.lbfgs_minimize``, batched; its line search often stalls on the
float32 objective), keeping a polished point only where it improves the objective.

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

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from ._util import adam_update, as_seed, positive_float, positive_int, progress_bar
from .model import LensModel, run_in_batches

__all__ = ["find_map", "MAPResult", "initial_points", "polish_levenberg_marquardt",
           "render_batched", "render_jacobian"]

# Default size of the Levenberg-Marquardt polish: renders per iteration (2 D per start).
_LM_RENDERS_PER_ITERATION = 2048


@dataclasses.dataclass(frozen=True, repr=False)
class MAPResult:
    """The result of :func:`find_map`.

    Attributes:
      params: dict name -> best constrained value (scalar tensors; event-shaped for a
        pixelated source).
      x: best point in unconstrained space, ``[D]``.
      objective: the best objective value (``log p~`` or ``log L``).
      objective_name: ``"posterior"`` or ``"likelihood"``.
      log_likelihood, log_posterior: at the best point (``log_posterior`` is the
        constrained-space ``log prior + log L``, without ``log|J|``).
      all_x: ``[S, D]`` best point of every start; ``all_params``: dict of ``[S, ...]``;
        ``all_objective``: ``[S]`` (``-inf`` for starts that never had a finite value).
      loss_history: numpy ``[num_steps, S]``, the loss ``-objective`` at every step.
      param_names, num_starts, num_steps; best_index: the start of ``x``; wall_time
      (seconds).
    """

    params: dict
    x: tf.Tensor
    objective: float
    objective_name: str
    log_likelihood: float
    log_posterior: float
    all_x: tf.Tensor
    all_params: dict
    all_objective: tf.Tensor
    loss_history: np.ndarray
    param_names: list
    num_starts: int
    num_steps: int
    best_index: int
    wall_time: float

    def summary(self) -> dict:
        """Best-fit values as Python floats (scalar parameters) by name."""
        return {k: float(v) for k, v in self.params.items() if np.ndim(v) == 0}

    def __repr__(self):
        return (f"MAPResult(objective={self.objective_name}, value={self.objective:.6g}, "
                f"num_starts={self.num_starts}, num_steps={self.num_steps}, "
                f"wall_time={self.wall_time:.3g}s)")


def polished_starts(num_params: int) -> int:
    """How many starts :func:`find_map` polishes by default with Levenberg-Marquardt: as
    many as keep one iteration within ``2048`` renders (``2 D`` per start), at least one
    (all 32 starts of a 22-parameter model; 13 of a 77-parameter one)."""
    return max(1, _LM_RENDERS_PER_ITERATION // (2 * positive_int(num_params, "num_params")))


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
        for block in model.parameter_blocks:
            if block.name in init:
                v = tf.cast(init[block.name], model.dtype)
                draws[block.name] = tf.broadcast_to(v, [num_starts] + list(block.event_shape))
                given[block.offset:block.offset + block.size] = True
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
                val = model.log_density(x, data, objective)
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
             lm_steps: int = 0, lm_starts: int | None = None, steps_per_call: int = 1,
             progress: bool = True) -> MAPResult:
    r"""Multi-start MAP (or maximum-likelihood) fit of a :class:`LensModel` (see module docs).

    Args:
      model: the :class:`LensModel`.
      data: the image ``[N, N]`` (default: the model's data).
      num_starts: number of starts ``S`` optimised together (batched).
      num_steps: Adam steps (0: none, the starts are only polished: needs ``lm_steps`` or
        ``lbfgs_steps``; e.g. to polish the converged fits of a related objective).
      learning_rate: initial Adam step size in unconstrained units.
      seed: int or stateless seed for the starting points.
      init, init_jitter: starting points (see :func:`initial_points`).
      objective: ``"posterior"`` (default) or ``"likelihood"``.
      lr_decay: final learning rate as a fraction of the initial one (exponential decay).
      lbfgs_steps: if > 0, polish all final points with this many L-BFGS iterations.
      lm_steps: if > 0, polish all final points with up to this many Levenberg-Marquardt
        iterations (:func:`polish_levenberg_marquardt`; recommended, e.g. 30: Adam leaves
        most starts far from their mode on the narrow ridges of bright lenses).
      lm_starts: polish only the best ``lm_starts`` starts (after Adam); default: as many
        as keep one iteration within ``2048`` renders (``2 D`` per start), at least one
        (all 32 starts of a 22-parameter model; 13 of a 77-parameter one).
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
    obj = model.objective(data, objective)
    S = positive_int(num_starts, "num_starts")
    n_steps = positive_int(num_steps, "num_steps", minimum=0)
    lr0 = positive_float(learning_rate, "learning_rate")
    decay = positive_float(lr_decay, "lr_decay")
    if decay > 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    k = positive_int(steps_per_call, "steps_per_call")
    n_lbfgs = positive_int(lbfgs_steps, "lbfgs_steps", minimum=0)
    n_lm = positive_int(lm_steps, "lm_steps", minimum=0)
    if n_steps == 0 and not (n_lm or n_lbfgs):
        raise ValueError("num_steps=0 (no Adam steps) needs lm_steps > 0 or lbfgs_steps > 0: "
                         "there would be nothing to optimise")
    if lm_starts is None:
        n_lm_starts = min(S, polished_starts(model.num_params))
    else:
        n_lm_starts = min(S, positive_int(lm_starts, "lm_starts"))
    d = obj.data
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
            val, g = obj.value_and_gradient(x)
            x, m, v, best_x, best_val = _step_jit(x, m, v, tf.constant(t + 1.0, dt), val, g,
                                                  best_x, best_val, lr_t, decay_rate)
            history.append(-val.numpy()[None])
            t += 1
            bar.update(1)
        if progress and (t % 50 == 0 or t == n_steps):
            bar.set_postfix_str(f"best {float(tf.reduce_max(best_val)):.6g}")
    bar.close()
    # the last point too
    if n_steps:
        val, _ = obj.value_and_gradient(x)   # (shares the compiled gradient)
    elif n_lbfgs or S > n_lm_starts:  # the polish needs the starts' values (ranks them)
        val = tf.convert_to_tensor(obj.value(x))
    else:  # every start is polished and gets its value there: no compiled value needed
        val = best_val
    improved = tf.math.is_finite(val) & (val > best_val)
    best_x = tf.where(improved[:, None], x, best_x)
    best_val = tf.where(improved, val, best_val)
    if n_lbfgs:
        best_x, best_val = _lbfgs_polish(obj, best_x, best_val, n_lbfgs)
    if n_lm:
        vals = best_val.numpy()
        order = np.argsort(-np.where(np.isfinite(vals), vals, -np.inf), kind="stable")
        top = np.sort(order[:n_lm_starts])
        xs, new_vals = polish_levenberg_marquardt(model, tf.gather(best_x, top), d,
                                                  objective, n_lm, progress=progress)
        all_x = best_x.numpy()
        all_x[top] = xs
        vals = vals.copy()
        vals[top] = new_vals
        best_x = tf.constant(all_x, dt)
        best_val = tf.constant(vals, dt)
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
                     loss_history=(np.concatenate(history, axis=0) if history
                                   else np.zeros((0, S))), param_names=model.param_names,
                     num_starts=S, num_steps=n_steps, best_index=i_best,
                     wall_time=time.perf_counter() - start)


def _lbfgs_polish(obj, x0, val0, max_iterations):
    """Batched L-BFGS from every point; keep a polished point only where it is better."""

    def vg(x):
        val, g = obj.value_and_gradient(x)
        ok = tf.math.is_finite(val) & tf.reduce_all(tf.math.is_finite(g), axis=-1)
        big = tf.constant(1e30, val.dtype)
        return (tf.where(ok, -val, big), tf.where(ok[:, None], -g, tf.zeros_like(g)))

    start = tf.where(tf.math.is_finite(val0)[:, None], x0, tf.zeros_like(x0))
    res = tfp.optimizer.lbfgs_minimize(vg, initial_position=start,
                                       max_iterations=max_iterations, tolerance=1e-8,
                                       x_tolerance=0.0, f_relative_tolerance=1e-9,
                                       stopping_condition=tfp.optimizer.converged_all)
    val, _ = obj.value_and_gradient(res.position)
    better = tf.math.is_finite(val) & (val > val0)
    return (tf.where(better[:, None], res.position, x0), tf.where(better, val, val0))


def render_batched(objective, x, max_batch: int = 256) -> np.ndarray:
    """Noiseless model images ``[n, N, N]`` (float64) of ``objective.render`` at
    ``x [n, D]``, in equal chunks (:func:`~tfstronglens.inference.model.run_in_batches`)
    so that one compilation serves the whole run: of the model's ``compile_batch_size``
    when it has one, else of at most ``max_batch``."""
    x = tf.constant(np.asarray(x), objective.model.dtype)
    size = objective.model.compile_batch_size or min(positive_int(max_batch, "max_batch"),
                                                      int(x.shape[0]))
    return run_in_batches(objective.render, x, size).numpy().astype(np.float64)


def render_jacobian(objective, x, fd_step: float | None = None, max_batch: int = 256):
    """Central-difference Jacobian of the rendered model at the points ``x [k, D]``
    (unconstrained): ``(J [k, D, N*N], images [k, N*N])`` in float64, from ``2 D + 1``
    renders per point (:func:`render_batched`). ``fd_step`` defaults to ``1e-3`` in
    float32 and ``1e-5`` in float64 (unconstrained units)."""
    dt = objective.model.dtype
    h = (1e-3 if dt == tf.float32 else 1e-5) if fd_step is None else \
        positive_float(fd_step, "fd_step")
    x = np.asarray(x, np.float64)
    k, D = x.shape
    eye = np.eye(D)
    pm = np.concatenate([(x[:, None] + h * eye).reshape(-1, D),
                         (x[:, None] - h * eye).reshape(-1, D), x], 0)
    imgs = render_batched(objective, pm, max_batch).reshape(pm.shape[0], -1)
    plus, minus = imgs[:2 * k * D].reshape(2, k, D, -1)
    return (plus - minus) / (2.0 * h), imgs[2 * k * D:]


def whitened_jacobian(objective, x0, max_batch: int = 256):
    """The rendered model's Jacobian at one unconstrained point ``x0 [1, D]``, whitened by
    the noise there: ``(J [pixels, D], image [pixels], w [pixels])`` with ``w = mask /
    sigma`` (``sigma`` at the model image, so Poisson noise counts) and ``J = dm/dx * w``
    (:func:`render_jacobian`: central differences, ``2 D + 1`` renders). The linear
    response of the fit to a change of the image (sensitivity maps, the subhalo scan)."""
    model = objective.model
    jac, base = render_jacobian(objective, x0, max_batch=max_batch)
    n = model.num_pix
    sigma = np.asarray(model.pixel_sigma(base.reshape(1, n, n)), np.float64).reshape(-1)
    w = np.broadcast_to(1.0 / sigma, base.shape[1:])
    if model.mask is not None:
        w = w * np.asarray(model.mask, np.float64).reshape(-1)
    return (jac[0] * w).T, base[0], w


def polish_levenberg_marquardt(model: LensModel, x0, data=None, objective: str = "posterior",
                               num_iterations: int = 30, fd_step: float | None = None,
                               tolerance: float = 1e-3, max_batch: int = 256,
                               halve_every: int | None = 5, progress: bool = False):
    r"""Levenberg-Marquardt refinement of the points ``x0 [S, D]`` (unconstrained), batched.

    #### Method

    The objective is ``f(x) = -log p~(x | data) = chi^2(x) / 2 + P(x) + const`` with
    ``chi^2 = sum_p r_p^2``, ``r_p = (d_p - m_p(x)) / sigma_p`` over the (unmasked) pixels
    and ``P = -(log prior + log|J|)`` (``P = 0`` for ``objective="likelihood"``). Each
    iteration builds the Gauss-Newton curvature

        H = J^T J + nabla^2 P,    J_pj = (dm_p / dx_j) / sigma_p,

    with ``sigma`` at the current point, ``dm/dx`` by central differences of the rendered
    model (``2 D`` renders per point, step ``fd_step`` in unconstrained units: ``1e-3``
    in float32, ``1e-5`` in float64) and ``nabla^2 P`` by automatic differentiation. The
    gradient ``g`` is the model's exact gradient, so the fixed point is the exact mode
    even though ``H`` is approximate (it omits the residuals' curvature and the
    dependence of the Poisson variance on the model). The steps
    ``delta = (H + lambda diag(H))^{-1} g`` for ``lambda = lambda_s (0.1, 1, 10, 100)``
    (Marquardt's scaling by ``diag(H)``; ``lambda_s`` per point, starting at ``1e-3``) are
    evaluated together, the best one that increases ``log p~`` is taken and its
    ``lambda`` kept; a point with no improving step gets ``lambda_s x 1000``. Near the
    mode the steps are Newton steps on ``chi^2``: convergence is quadratic for
    well-fitted data, where Adam's is linear with the condition number (``~1e6`` for a
    bright, compact lens light). Iterations stop after ``num_iterations``, or once no
    point's ``log p~`` rose by more than ``tolerance`` for two iterations running.

    **Successive halving.** Every ``halve_every`` iterations the worse half of the points
    still being polished (by current ``log p~``) stop where they are; the others go on.
    After a few iterations each point sits near its own mode (the convergence is
    quadratic there), so the ranking rarely changes later, and the cost falls from
    ``S x num_iterations`` point-iterations to about ``2 S x halve_every`` plus the
    last point's. On the 75-parameter VAE-source posterior of ``benchmarks/fit_vae.py``
    the 13 polished starts took most of the MAP stage (benchmarks/README.md).

    Cost per iteration: ``2 D S`` renders (value only, in batches of ``max_batch``), one
    value and gradient of the ``S`` points and ``4 S`` values. Points whose value is not
    finite are returned unchanged.

    Args:
      model: the :class:`~tfstronglens.inference.LensModel`.
      x0: ``[S, D]`` starting points (e.g. the final Adam points of :func:`find_map`).
      data: the image (default: the model's data).
      objective: ``"posterior"`` or ``"likelihood"``.
      num_iterations: maximum number of iterations (>= 1).
      fd_step: central-difference step of the Jacobian (unconstrained units).
      tolerance: convergence threshold on the increase of ``log p~`` per iteration.
      max_batch: largest batch of renders per call.
      halve_every: iterations between halvings of the polished points (None: polish
        every point to the end).
      progress: show a progress bar.

    Returns:
      ``(x [S, D], values [S])`` as numpy arrays in the model's dtype.
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    obj = model.objective(data, objective)
    n_it = positive_int(num_iterations, "num_iterations")
    batch = positive_int(max_batch, "max_batch")
    tol = positive_float(tolerance, "tolerance")
    halve = None if halve_every is None else positive_int(halve_every, "halve_every")
    dt = model.dtype
    np_dt = dt.as_numpy_dtype
    X = np.array(x0.numpy() if hasattr(x0, "numpy") else x0, dtype=np.float64, ndmin=2)
    D = model.num_params
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"x0 must have shape [S, {D}], got {list(X.shape)}")

    def values_grads(x):
        v, g = obj.value_and_gradient(tf.constant(x, dt))
        return v.numpy().astype(np.float64), g.numpy().astype(np.float64)

    f, g = values_grads(X)
    active = np.flatnonzero(np.isfinite(f) & np.all(np.isfinite(g), axis=1))
    if active.size == 0:
        return X.astype(np_dt), f.astype(np_dt)
    fa, ga = f[active], g[active]
    lam = np.full(active.size, 1e-3)
    factors = np.array([0.1, 1.0, 10.0, 100.0])
    mask = None if model.mask is None else np.asarray(model.mask, np.float64).ravel()
    quiet = 0
    bar = progress_bar(n_it, "MAP polish (LM)", progress)
    for it in range(n_it):
        xa = X[active]
        k = xa.shape[0]
        jac, imgs = render_jacobian(obj, xa, fd_step, batch)
        n = model.num_pix
        sigma = np.asarray(model.pixel_sigma(imgs.reshape(k, n, n)), np.float64)
        sigma = np.broadcast_to(sigma, (k, n, n)).reshape(k, -1)
        jac = jac / sigma[:, None, :]
        if mask is not None:
            jac = jac * mask
        H = np.einsum("kip,kjp->kij", jac, jac)
        if objective == "posterior":
            H = H + obj.prior_hessian(tf.constant(xa, dt)).numpy().astype(np.float64)
        H = 0.5 * (H + np.swapaxes(H, 1, 2))
        steps = np.zeros((k, factors.size, D))
        for i in range(k):
            dg = np.maximum(np.diag(H[i]), 1e-12 * max(np.abs(np.diag(H[i])).max(), 1e-30))
            for j, fac in enumerate(factors):
                try:
                    steps[i, j] = np.linalg.solve(H[i] + lam[i] * fac * np.diag(dg), ga[i])
                except np.linalg.LinAlgError:
                    steps[i, j] = 0.0
        # a singular or non-finite system gives no step (the trial is the point itself)
        steps = np.where(np.all(np.isfinite(steps), axis=-1, keepdims=True), steps, 0.0)
        trial = (xa[:, None] + steps).reshape(-1, D)
        ft = obj.value(tf.constant(trial, dt)).numpy().astype(np.float64)
        ft = np.where(np.isfinite(ft), ft, -np.inf).reshape(k, factors.size)
        best = np.argmax(ft, axis=1)
        fbest = ft[np.arange(k), best]
        ok = fbest > fa
        X[active] = np.where(ok[:, None], xa + steps[np.arange(k), best], xa)
        lam = np.where(ok, lam * factors[best], lam * 1000.0)
        gain = np.max(np.where(ok, fbest - fa, 0.0))
        fa, ga = values_grads(X[active])  # the next iteration's gradient
        bar.update(1)
        if progress:
            bar.set_postfix_str(f"best {np.max(fa):.6g}")
        quiet = quiet + 1 if gain < tol else 0
        if quiet >= 2:
            break
        if halve is not None and (it + 1) % halve == 0 and active.size > 1:
            keep = np.sort(np.argsort(-fa, kind="stable")[:(active.size + 1) // 2])
            f[active] = fa  # the points that stop keep their current values
            active, fa, ga, lam = active[keep], fa[keep], ga[keep], lam[keep]
    bar.close()
    f[active] = fa
    return X.astype(np_dt), f.astype(np_dt)
