r"""Variational inference and the Laplace approximation in unconstrained coordinates.

#### Variational inference

:func:`fit_vi` fits a surrogate density ``q_phi(x)`` on the unconstrained space ``R^D`` of
a :class:`~tfstronglens.inference.LensModel` by maximising the evidence lower bound

    ELBO(phi) = E_{x ~ q_phi} [ log p~(x | data) - log q_phi(x) ]  <=  log p(data),

estimated with ``sample_size`` reparameterised draws per step (the gradient flows through
the draws), by Adam. Surrogates:

* ``"mean_field"``: ``N(mu, diag(sigma^2))``, ``sigma = softplus(rho)``;
* ``"full_rank"``: ``N(mu, L L^T)``, ``L`` lower triangular with positive diagonal
  (``tfb.FillScaleTriL``);
* ``"iaf"``: a normalizing flow: ``x = mu + L f(eps)``, ``eps ~ N(0, I)``, where ``f`` is
  ``num_flows`` inverse autoregressive flows (Kingma et al. 2016; TFP's
  ``tfb.Invert(tfb.MaskedAutoregressiveFlow)`` with MADE networks,
  ``tfb.AutoregressiveNetwork``, whose output layers start at zero so that ``f`` starts
  as the identity), with permutations between them. For non-Gaussian posteriors, e.g.
  of a source's latent variables.

All start at ``init`` (typically the MAP, ``mu = x_MAP``) with covariance ``init_scale^2 I``
or, with ``init_scale="laplace"`` (the default when ``init`` is given), the Laplace
covariance ``Sigma_0`` (below; its diagonal for mean-field). The optimisation runs in
whitened coordinates ``u``, ``x = x_0 + P u`` with ``P`` the Cholesky factor of that
initial covariance (diagonal for mean-field), so that Adam's ``learning_rate`` is a step
of about that many posterior standard deviations in every direction. After fitting, ``num_samples`` draws are mapped to the constrained
parameters; the mean and covariance in unconstrained space are exact for the Gaussian
surrogates and sample estimates for the flow. ``covariance`` is what a subsequent HMC can
use as its mass matrix (inverse).

Only the model's compiled value-and-gradient is called (eagerly, sharing its XLA
compilation with MAP): the ELBO gradient is assembled by the chain rule from the model's
gradient at the draws and the surrogate's own (small, graph-mode) gradient, so no model
code is compiled again (see :mod:`tfstronglens.inference.map`).

#### Laplace approximation

:func:`laplace_approximation` returns ``N(x_MAP, H^-1)`` with ``H = -grad^2 log p~`` at the
mode, computed by central finite differences of the (exact, autodiff) gradient, all
``2D`` displaced points in one batch, with steps ``h_i = 0.1 / sqrt(H_ii)`` taken from a
first pass at ``h = 1e-3``. The Hessian is symmetrised; where the point is not a strict
maximum (eigenvalues ``w < 1e-8 max w``: a saddle or a flat direction, e.g. of a VAE
latent that the optimiser has not settled), the covariance uses
``max(|w|, w_prior)``, with ``w_prior`` the smallest curvature of the prior term
``-(log prior + log|J|)`` (so that no direction is wider than the prior's widest), and
a warning says so. ``|w|`` makes the Newton refinement below a saddle-free Newton step
(Dauphin et al. 2014) that leaves saddles instead of converging to them; flooring at
``1e-8 max`` instead gave draws thousands of nats below the mode on the 75-parameter
VAE-source posterior, where 9 eigenvalues were negative. It also gives the Laplace
estimate of the evidence, ``log Z ~ log p~(x_MAP) + (D/2) log(2 pi) - (1/2) log det H``
(with the repaired eigenvalues).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from ._util import adam_update, as_seed, positive_float, positive_int, progress_bar
from .map import MAPResult
from .model import LensModel

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["fit_vi", "VIResult", "laplace_approximation", "LaplaceResult", "SURROGATES"]

SURROGATES = ("mean_field", "full_rank", "iaf")


@dataclasses.dataclass(frozen=True, repr=False)
class LaplaceResult:
    """The result of :func:`laplace_approximation`: ``N(mean, covariance)`` on the
    unconstrained space ``R^D`` of the model.

    Attributes:
      mean: the (Newton-refined) mode, ``[D]`` float64, unconstrained coordinates.
      covariance: ``[D, D]`` float64, the Laplace covariance ``H^-1`` in unconstrained
        coordinates (with the repaired eigenvalues where ``H`` is not positive definite).
      hessian: ``[D, D]`` float64, the symmetrised finite-difference Hessian ``H`` of
        ``-log p~`` at ``mean`` (as computed, before any eigenvalue repair).
      std: ``[D]`` float64, ``sqrt(diag(covariance))``, unconstrained coordinates.
      log_prob: the objective (``log p~``, or ``log L`` for ``objective="likelihood"``)
        at ``mean``, in nats.
      log_evidence: the Laplace estimate of ``log Z`` (nats),
        ``log_prob + (D/2) log(2 pi) - (1/2) log det H`` (with the repaired eigenvalues).
      param_names: list of the model's ``D`` coordinate names, in order.
    """

    mean: np.ndarray
    covariance: np.ndarray
    hessian: np.ndarray
    std: np.ndarray
    log_prob: float
    log_evidence: float
    param_names: list

    def __repr__(self):
        return f"LaplaceResult(D={len(self.mean)}, log_evidence={self.log_evidence:.6g})"


def _to_x(model, init):
    if isinstance(init, MAPResult):
        return np.asarray(init.x, dtype=np.float64)
    if isinstance(init, dict):
        one = {k: tf.convert_to_tensor(v, model.dtype)[None] for k, v in init.items()}
        return model.to_flat(one)[0].numpy().astype(np.float64)
    x = np.asarray(init, dtype=np.float64)
    if x.shape != (model.num_params,):
        raise ValueError(f"init must be a MAPResult, a dict of parameters or an array of "
                         f"shape [{model.num_params}], got shape {x.shape}")
    return x


def _fd_hessian(obj, x0, h):
    D = x0.shape[0]
    eye = np.eye(D) * h[:, None]
    pts = np.concatenate([x0[None] + eye, x0[None] - eye], axis=0)
    _, g = obj.value_and_gradient(tf.constant(pts, obj.model.dtype))
    g = g.numpy().astype(np.float64)
    H = -(g[:D] - g[D:]) / (2.0 * h[:, None])      # row i: d grad / d x_i
    return 0.5 * (H + H.T)


def laplace_approximation(model: LensModel, x_map, data=None, objective: str = "posterior",
                          step=None, newton_steps: int = 4) -> LaplaceResult:
    """Gaussian approximation at a mode near ``x_map`` (``[D]``, a dict or a MAPResult);
    see the module docs. Up to ``newton_steps`` damped Newton iterations
    ``x <- x + t H^-1 grad`` first refine the mode, which first-order optimisers leave a
    fraction of a standard deviation away: the step lengths ``t = 1, 1/2, ..., 1/32`` are
    evaluated together and the best one that increases the objective is kept; the
    iterations stop when the Newton decrement ``grad^T H^-1 grad`` (twice the expected
    gain) is below ``1e-4`` or no step length helps. ``step``: finite-difference steps
    (scalar or ``[D]``) instead of the automatic two-pass choice."""
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    obj = model.objective(data, objective)
    x0 = _to_x(model, x_map)
    D = model.num_params
    positive_int(newton_steps, "newton_steps", minimum=0)
    lengths = 0.5 ** np.arange(6)
    for _ in range(newton_steps):
        with warnings.catch_warnings():  # the final approximation below warns, once
            warnings.simplefilter("ignore")
            lap = laplace_approximation(model, x0, obj.data, objective, step, newton_steps=0)
        val, g = obj.value_and_gradient(tf.constant(x0[None], model.dtype))
        g = g.numpy()[0].astype(np.float64)
        delta = lap.covariance @ g
        if not float(g @ delta) > 1e-4:
            break
        trial = x0[None] + lengths[:, None] * delta[None]
        val_new, _ = obj.value_and_gradient(tf.constant(trial, model.dtype))
        val_new = np.where(np.isfinite(val_new.numpy()), val_new.numpy(), -np.inf)
        best = int(np.argmax(val_new))
        if not val_new[best] > float(val[0]):
            break
        x0 = trial[best]
    if step is None:
        H1 = _fd_hessian(obj, x0, np.full(D, 1e-3))
        diag = np.abs(np.diag(H1))
        h = np.clip(0.1 / np.sqrt(np.where(diag > 0, diag, 1.0)), 1e-4, 0.1)
    else:
        h = np.broadcast_to(np.asarray(step, dtype=np.float64), (D,)).copy()
        if not np.all(np.isfinite(h)) or not np.all(h > 0):
            raise ValueError(f"step must be positive, got {step!r}")
    H = _fd_hessian(obj, x0, h)
    w, V = np.linalg.eigh(H)
    floor = 1e-8 * max(np.max(np.abs(w)), 1e-30)
    bad = w < floor
    if np.any(bad):
        w_prior = floor
        if objective == "posterior":
            hp = obj.prior_hessian(tf.constant(x0[None], model.dtype))
            w_prior = max(float(np.linalg.eigvalsh(np.asarray(hp[0], np.float64))[0]), floor)
        warnings.warn(f"laplace_approximation: the Hessian has {int(np.sum(bad))} "
                      f"eigenvalue(s) below {floor:.3g} (min {w.min():.3g}): the point is "
                      f"not a maximum; the covariance uses max(|w|, {w_prior:.3g}) for "
                      "them", stacklevel=2)
        w = np.where(bad, np.maximum(np.abs(w), w_prior), w)
    cov = (V / w) @ V.T
    val, _ = obj.value_and_gradient(tf.constant(x0[None], model.dtype))
    lp = float(val[0])
    log_z = lp + 0.5 * D * math.log(2 * math.pi) - 0.5 * float(np.sum(np.log(w)))
    return LaplaceResult(mean=x0, covariance=cov, hessian=H, std=np.sqrt(np.diag(cov)),
                         log_prob=lp, log_evidence=log_z, param_names=model.param_names)


@dataclasses.dataclass(frozen=True, repr=False)
class VIResult:
    """The result of :func:`fit_vi`.

    Attributes:
      surrogate: the fitted ``tfd.Distribution`` on unconstrained ``R^D`` (event ``[D]``).
      posterior: ``tfd.TransformedDistribution(surrogate, model.bijector)``: samples are
        dicts of constrained parameters (physical units).
      elbo_trace: numpy ``[num_steps]``, the ELBO estimate at every Adam step (nats).
      samples: dict name -> numpy ``[num_samples, ...]`` constrained posterior draws
        (physical units; event-shaped for a pixelated source).
      samples_unconstrained: numpy ``[num_samples, D]``, the same draws in unconstrained
        coordinates.
      mean: numpy ``[D]``, the surrogate's mean in unconstrained coordinates (exact for the
        Gaussian surrogates, a sample estimate for ``"iaf"``).
      covariance: numpy ``[D, D]``, its covariance in unconstrained coordinates (likewise).
      param_names: list of the model's ``D`` coordinate names, in order.
      surrogate_type: ``"mean_field"``, ``"full_rank"`` or ``"iaf"``.
      trainable_variables: list of the surrogate's ``tf.Variable`` (in whitened
        coordinates ``u``, see the module docs).
      wall_time: seconds, from the start of :func:`fit_vi` to the final draws.
    """

    surrogate: tfd.Distribution
    posterior: tfd.Distribution
    elbo_trace: np.ndarray
    samples: dict
    samples_unconstrained: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    param_names: list
    surrogate_type: str
    trainable_variables: list
    wall_time: float

    def summary(self) -> dict:
        """``{name: (posterior mean, posterior std)}`` of the scalar constrained
        parameters, from the samples."""
        out = {}
        for k, v in self.samples.items():
            a = np.asarray(v)
            if a.ndim == 1:
                out[k] = (float(a.mean()), float(a.std()))
        return out

    def __repr__(self):
        return (f"VIResult(surrogate={self.surrogate_type}, final ELBO "
                f"{np.mean(self.elbo_trace[-max(1, len(self.elbo_trace) // 20):]):.6g}, "
                f"wall_time={self.wall_time:.3g}s)")


def _zero_last_kernel(made, D, dtype):
    made(tf.zeros([1, D], dtype))        # build
    kernels = [v for v in made.trainable_variables if v.shape.rank == 2]
    kernels[-1].assign(tf.zeros_like(kernels[-1]))


def _build_surrogate(kind, D, x0, chol0, dtype, num_flows, hidden_units, seed):
    """Return (make_distribution() -> tfd on x, trainable variables).

    The trainable surrogate lives on whitened coordinates ``u``, with
    ``x = x0 + P u`` for the constant preconditioner ``P`` (``chol0``; its diagonal part
    for mean-field, so the family stays mean-field in ``x``). ``u`` starts as ``N(0, I)``.
    With ``P`` of the posterior's scale, Adam's step size means the same in every
    direction (loc steps of ``lr`` posterior standard deviations).
    """
    if kind == "mean_field":
        chol0 = np.diag(np.sqrt(np.sum(chol0**2, axis=1)))
    precondition = tfb.Chain([tfb.Shift(tf.constant(x0, dtype)),
                              tfb.ScaleMatvecTriL(tf.constant(chol0, dtype))])
    loc = tf.Variable(tf.zeros([D], dtype), name="loc")
    if kind == "mean_field":
        rho = tf.Variable(tf.fill([D], tf.constant(float(np.log(np.expm1(1.0))), dtype)),
                          name="rho")

        def make():
            q_u = tfd.MultivariateNormalDiag(loc, tf.nn.softplus(rho) + 1e-12)
            return tfd.TransformedDistribution(q_u, precondition)

        return make, [loc, rho]
    fill = tfb.FillScaleTriL(diag_shift=tf.constant(1e-10, dtype))
    raw = tf.Variable(fill.inverse(tf.eye(D, dtype=dtype)), name="scale_tril")

    if kind == "full_rank":
        def make():
            q_u = tfd.MultivariateNormalTriL(loc, fill.forward(raw))
            return tfd.TransformedDistribution(q_u, precondition)

        return make, [loc, raw]
    # IAF flows on top of the Gaussian
    mades, flows_vars = [], []
    rng = np.random.default_rng(0 if seed is None else int(seed[1]))
    perms = [rng.permutation(D) for _ in range(num_flows)]
    tf.random.set_seed(int(rng.integers(2**31)))
    for _ in range(num_flows):
        made = tfb.AutoregressiveNetwork(params=2, hidden_units=list(hidden_units),
                                         activation="tanh", dtype=dtype)
        _zero_last_kernel(made, D, dtype)
        mades.append(made)
        flows_vars += list(made.trainable_variables)

    def make():
        bijs = [precondition, tfb.Shift(loc), tfb.ScaleMatvecTriL(fill.forward(raw))]
        for made, perm in zip(mades, perms):
            bijs.append(tfb.Invert(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made)))
            bijs.append(tfb.Permute(perm))
        base = tfd.MultivariateNormalDiag(tf.zeros([D], dtype), tf.ones([D], dtype))
        return tfd.TransformedDistribution(base, tfb.Chain(bijs))

    return make, [loc, raw] + flows_vars


def fit_vi(model: LensModel, data=None, surrogate: str = "mean_field", init=None,
           num_steps: int = 1000, sample_size: int = 16, learning_rate: float = 0.05,
           seed=None, init_scale="auto", num_samples: int = 1000, num_flows: int = 2,
           hidden_units=(32, 32), lr_decay: float = 0.1, progress: bool = True) -> VIResult:
    r"""Fit a variational surrogate posterior (see module docs).

    Args:
      model: the :class:`LensModel`.
      data: the image (default: the model's data).
      surrogate: ``"mean_field"``, ``"full_rank"`` or ``"iaf"``.
      init: where the surrogate starts: a :class:`MAPResult` (recommended), a dict of
        constrained parameters or an unconstrained ``[D]`` array; ``None``: a prior draw.
      num_steps: Adam steps; sample_size: Monte Carlo draws per ELBO estimate.
      learning_rate, lr_decay: Adam step size, decaying exponentially to
        ``learning_rate * lr_decay``.
      seed: int or stateless seed.
      init_scale: initial scale in unconstrained units (a number), ``"laplace"`` (the
        Laplace covariance at ``init``) or ``"auto"`` (``"laplace"`` when ``init`` is given,
        else ``0.01``).
      num_samples: posterior draws returned.
      num_flows, hidden_units: the IAF's number of flows and MADE hidden layers.
      progress: tqdm progress bar.

    Returns:
      a :class:`VIResult`.

    #### Example

    >>> res_map = find_map(model, data, num_starts=100, num_steps=500, seed=1)
    >>> vi = fit_vi(model, data, "full_rank", init=res_map, num_steps=500, seed=2)
    >>> vi.summary()["lens.0.theta_E"], vi.covariance
    """
    if not isinstance(model, LensModel):
        raise ValueError(f"model must be a LensModel, got {model!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    n_steps = positive_int(num_steps, "num_steps")
    n_mc = positive_int(sample_size, "sample_size")
    n_out = positive_int(num_samples, "num_samples")
    lr0 = positive_float(learning_rate, "learning_rate")
    decay = positive_float(lr_decay, "lr_decay")
    if decay > 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    obj = model.objective(data)
    dt = model.dtype
    D = model.num_params
    seed = as_seed(seed)
    s_init, s_fit, s_out = tfp.random.split_seed(seed, 3)
    start = time.perf_counter()
    if init is None:
        x0 = model.sample_unconstrained_prior(1, s_init)[0].numpy().astype(np.float64)
    else:
        x0 = _to_x(model, init)
    if isinstance(init_scale, str):
        if init_scale not in ("auto", "laplace"):
            raise ValueError(f"init_scale must be a positive number, 'laplace' or 'auto', got "
                             f"{init_scale!r}")
        use_laplace = init_scale == "laplace" or init is not None
        if use_laplace:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lap = laplace_approximation(model, x0, obj.data)
            chol0 = np.linalg.cholesky(lap.covariance + 1e-12 * np.eye(D))
        else:
            chol0 = 0.01 * np.eye(D)
    else:
        chol0 = positive_float(init_scale, "init_scale") * np.eye(D)
    make, variables = _build_surrogate(surrogate, D, x0, chol0, dt, positive_int(
        num_flows, "num_flows"), tuple(hidden_units), seed.numpy())

    m_state = [tf.Variable(tf.zeros_like(v)) for v in variables]
    v_state = [tf.Variable(tf.zeros_like(v)) for v in variables]
    decay_rate = -math.log(decay) / max(n_steps - 1, 1)

    @tf.function(autograph=False)
    def draw(step_seed):
        return make().sample(n_mc, seed=step_seed)

    @tf.function(autograph=False)
    def update(t, step_seed, lp, g):
        # reparameterisation gradient by the chain rule: d ELBO / d phi =
        # mean_s [ g_s . d x_s / d phi - d log q(x_s) / d phi ], with g = grad log p~ at
        # the draws (computed outside by the model's compiled gradient); the same
        # stateless seed reproduces the draws x_s(phi).
        with tf.GradientTape() as tape:
            q = make()
            x, log_q = q.experimental_sample_and_log_prob(n_mc, seed=step_seed)
            ok = tf.math.is_finite(lp) & tf.reduce_all(tf.math.is_finite(g), axis=-1)
            n_ok = tf.maximum(tf.reduce_sum(tf.cast(ok, dt)), 1.0)
            g_safe = tf.where(ok[:, None], g, tf.zeros_like(g))
            surrogate_loss = -tf.reduce_sum(
                tf.where(ok, tf.reduce_sum(g_safe * x, axis=-1) - log_q,
                         tf.zeros_like(log_q))) / n_ok
        elbo = tf.reduce_sum(tf.where(ok, lp - log_q, tf.zeros_like(lp))) / n_ok
        grads = tape.gradient(surrogate_loss, variables)
        lr = lr0 * tf.exp(-decay_rate * (t - 1.0))
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(gr)) for gr in grads])
        for var, gr, m, v in zip(variables, grads, m_state, v_state):
            gr = tf.where(finite, gr, tf.zeros_like(gr))
            new, m_new, v_new = adam_update(var, gr, m, v, t, lr)
            constraint = getattr(var, "constraint", None)
            if constraint is not None:
                # the MADE networks of the IAF keep their autoregressive masks through
                # kernel constraints, which Keras optimizers apply after each update; this
                # hand-written Adam must too, or the flow's Jacobian stops being
                # triangular and log q (sum of log-scales) is no longer its density
                new = constraint(new)
            var.assign(tf.where(finite, new, var))
            m.assign(tf.where(finite, m_new, m))
            v.assign(tf.where(finite, v_new, v))
        return elbo

    def step(t, step_seed):
        x = draw(step_seed)
        lp, g = obj.value_and_gradient(x)
        return update(t, step_seed, lp, g)

    seeds = tfp.random.split_seed(s_fit, n_steps)
    trace = np.empty(n_steps)
    bar = progress_bar(n_steps, f"VI ({surrogate})", progress)
    for t in range(n_steps):
        trace[t] = float(step(tf.constant(t + 1.0, dt), seeds[t]))
        bar.update(1)
        if progress and (t % 50 == 0 or t == n_steps - 1):
            bar.set_postfix_str(f"ELBO {np.mean(trace[max(0, t - 49):t + 1]):.6g}")
    bar.close()
    q = make()
    xs = q.sample(n_out, seed=s_out)
    if surrogate == "iaf":
        mean = tf.reduce_mean(xs, 0).numpy()
        cov = tfp.stats.covariance(xs).numpy()
    else:   # exact: x = x0 + P u, u ~ N(m, S S^T)
        q_u = q.distribution
        P = q.bijector.bijectors[1].scale.to_dense().numpy()
        mean = q.bijector.forward(q_u.mean()).numpy()
        cov = P @ q_u.covariance().numpy() @ P.T
    samples = model.from_flat(xs)
    return VIResult(surrogate=q, posterior=tfd.TransformedDistribution(q, model.bijector),
                    elbo_trace=trace, samples={k: v.numpy() for k, v in samples.items()},
                    samples_unconstrained=xs.numpy(), mean=mean, covariance=cov,
                    param_names=model.param_names, surrogate_type=surrogate,
                    trainable_variables=variables, wall_time=time.perf_counter() - start)
