"""NUTS/HMC sampling (tfstronglens.inference.mcmc) on targets with known answers.

XLA compilation of a NUTS chunk takes ~5-15 s on this CPU, so the default tests share
five compiled chunk runners: one Gaussian target whose mean and precision are
``tf.Variable``s (reassigned between tests, captured by reference, so one compilation
serves every Gaussian of the same dimension), a funnel, and a 75-dimensional Gaussian.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfstronglens.inference.diagnostics import effective_sample_size, potential_scale_reduction
from tfstronglens.inference.mcmc import MCMCResult, adaptation_windows, sample_hmc

CHUNK = 100  # one chunk size for every default test: it is part of the compiled function
D = 10


class Gaussian:
    """``N(mean, cov)`` in ``dim`` dimensions, with mean and precision as variables."""

    def __init__(self, dim):
        self.prec = tf.Variable(tf.eye(dim), trainable=False)
        self.mean = tf.Variable(tf.zeros(dim), trainable=False)

    def set(self, mean, cov):
        self.mean.assign(np.asarray(mean, np.float32))
        self.prec.assign(np.linalg.inv(cov).astype(np.float32))

    def log_prob(self, x):
        d = x - self.mean
        return -0.5 * tf.reduce_sum(d * tf.linalg.matvec(self.prec, d), axis=-1)


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(D)


def random_cov(rng, dim, cond):
    """A covariance with a random rotation and eigenvalues log-spaced over ``cond``."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eig = np.logspace(-0.5 * np.log10(cond), 0.5 * np.log10(cond), dim)
    return (q * eig) @ q.T


def assert_moments(samples, mean, cov, nsigma=5.0):
    """Sample mean and covariance agree with the truth within ``nsigma`` MC errors.

    The MC error of each estimate is ``sd / sqrt(ESS)`` of the quantity averaged (``x_i``
    for the mean, ``(x_i - mu_i)(x_j - mu_j)`` for the covariance), with its own ESS.
    """
    n, c, d = samples.shape
    x = samples.astype(np.float64)
    err_mean = x.reshape(-1, d).std(0) / np.sqrt(effective_sample_size(x, method="mean"))
    dev = np.abs(x.reshape(-1, d).mean(0) - mean)
    assert np.all(dev < nsigma * err_mean), (dev / err_mean).max()
    centred = x - mean
    prod = (centred[..., :, None] * centred[..., None, :]).reshape(n, c, d * d)
    err_cov = prod.reshape(-1, d * d).std(0) / np.sqrt(effective_sample_size(prod, "mean"))
    dev_cov = np.abs(prod.reshape(-1, d * d).mean(0) - cov.ravel())
    assert np.all(dev_cov < nsigma * err_cov), (dev_cov / err_cov).max()


def test_nuts_correlated_gaussian(gauss, rng, capfd):
    mean = rng.normal(size=D)
    cov = random_cov(rng, D, cond=30.0)
    gauss.set(mean, cov)
    init = mean + 3.0 * rng.normal(size=(4, D))  # over-dispersed starts
    calls = []
    res = sample_hmc(gauss.log_prob, init, num_results=500, num_burnin=300, seed=1,
                     chunk_size=CHUNK, progress=True, callback=calls.append)
    # tqdm writes to the (captured, non-tty) stderr without breaking anything.
    assert "800/800" in capfd.readouterr().err
    assert [c["step"] for c in calls] == [100, 200, 300, 400, 500, 600, 700, 800]
    assert [c["phase"] for c in calls][2:4] == ["warmup", "sampling"]

    assert isinstance(res, MCMCResult) and res.kernel == "nuts"
    assert res.samples.shape == (500, 4, D) and res.samples.dtype == np.float32
    assert res.log_prob.shape == (500, 4)
    for k in ("lp", "acceptance_rate", "diverging", "step_size", "n_steps", "tree_depth",
              "reached_max_treedepth"):
        assert res.sample_stats[k].shape == (500, 4), k
        assert res.warmup_stats[k].shape == (300, 4), k
    # lp is log_prob_fn at the recorded draws.
    np.testing.assert_allclose(res.log_prob[-1], gauss.log_prob(res.samples[-1]).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert_moments(res.samples, mean, cov)
    assert np.all(potential_scale_reduction(res.samples) < 1.01)
    assert res.num_divergences.sum() == 0
    # Dual averaging hits the target acceptance (0.8) on average, per chain.
    assert np.all(np.abs(res.acceptance_rate - 0.8) < 0.12)
    # The step size is fixed after burn-in, one per chain.
    assert np.all(res.sample_stats["step_size"] == res.step_size)
    assert len(np.unique(res.step_size)) == 4
    depth, nsteps = res.sample_stats["tree_depth"], res.sample_stats["n_steps"]
    assert np.all((depth >= 1) & (depth <= 10))
    assert np.all((nsteps >= 2 ** (depth - 1)) & (nsteps <= 2**depth - 1))
    assert res.num_gradient_evaluations.shape == (4,)
    assert res.timing["total"] > res.timing["sampling"] > 0
    diag = res.diagnostics()
    assert diag["max_r_hat"] < 1.01 and diag["num_divergences"].sum() == 0
    assert diag["min_ess_bulk"] == pytest.approx(effective_sample_size(res.samples).min())
    assert diag["ess_bulk_per_second"] > 0 and 0 < diag["ess_bulk_per_gradient"] < 1
    assert res.timing["first_chunk"] >= res.timing["compile_estimate"] >= 0


def test_hmc_with_mass_matrix_and_divergence_flag(gauss, rng):
    mean = rng.normal(size=D)
    cov = random_cov(rng, D, cond=100.0)
    gauss.set(mean, cov)
    exact = rng.multivariate_normal(mean, cov, size=400)
    vi_cov = np.cov(exact.T)  # an imperfect covariance estimate, as from VI
    init = exact[:4]
    res = sample_hmc(gauss.log_prob, init, kernel="hmc", num_leapfrog_steps=3,
                     num_results=800, num_burnin=300, mass_matrix=vi_cov, seed=2,
                     chunk_size=CHUNK, progress=False)
    assert res.kernel == "hmc" and res.samples.shape == (800, 4, D)
    assert "tree_depth" not in res.sample_stats and res.mean_tree_depth is None
    assert np.all(res.sample_stats["n_steps"] == 3)
    assert_moments(res.samples, mean, cov)
    assert np.all(potential_scale_reduction(res.samples) < 1.01)
    assert res.num_divergences.sum() == 0
    assert np.all(np.abs(res.acceptance_rate - 0.8) < 0.12)
    # A step far beyond the leapfrog stability limit (2 in whitened units) blows the
    # energy up: every transition is flagged divergent and rejected.
    bad = sample_hmc(gauss.log_prob, init, kernel="hmc", num_leapfrog_steps=3,
                     num_results=20, num_burnin=0, mass_matrix=vi_cov, seed=2,
                     step_size=8.0, chunk_size=CHUNK, progress=False)
    assert np.all(bad.sample_stats["diverging"])
    assert np.all(bad.sample_stats["energy_error"] > 1000)
    assert np.all(bad.acceptance_rate < 1e-6)
    np.testing.assert_allclose(bad.samples[-1], init, rtol=1e-5)


def test_preconditioning_improves_ess_per_gradient(gauss, rng):
    mean = np.zeros(D)
    cov = random_cov(rng, D, cond=1e4)
    gauss.set(mean, cov)
    init = rng.multivariate_normal(mean, cov, size=4)
    kw = dict(num_results=300, num_burnin=300, seed=3, chunk_size=CHUNK, progress=False)
    plain = sample_hmc(gauss.log_prob, init, **kw)
    # A covariance estimate from 400 exact draws stands in for the VI covariance. (With
    # the exact covariance the whitened target is an isotropic Gaussian, whose exactly
    # periodic orbits make TFP's NUTS miss U-turns: ~50 leapfrogs per draw instead of ~7.)
    vi_cov = np.cov(rng.multivariate_normal(mean, cov, size=400).T)
    whitened = sample_hmc(gauss.log_prob, init, mass_matrix=vi_cov, **kw)

    def ess_per_grad(res):
        return effective_sample_size(res.samples).min() / res.num_gradient_evaluations.sum()

    # Without preconditioning the step size is set by the narrowest direction and the
    # trees grow to ~sqrt(cond) = 100 steps; whitening makes the target isotropic.
    assert plain.mean_tree_depth.mean() > whitened.mean_tree_depth.mean() + 3
    assert ess_per_grad(whitened) > 10 * ess_per_grad(plain)
    print(f"ESS per gradient: plain {ess_per_grad(plain):.4f}, preconditioned "
          f"{ess_per_grad(whitened):.4f}; mean tree depth {plain.mean_tree_depth.mean():.2f} "
          f"vs {whitened.mean_tree_depth.mean():.2f}")
    assert np.all(potential_scale_reduction(whitened.samples) < 1.01)


def funnel_log_prob(x):
    """Neal's funnel: v ~ N(0, 3^2), x_i | v ~ N(0, e^v), here with one x (float64)."""
    v, z = x[..., 0], x[..., 1]
    return -v**2 / 18.0 - 0.5 * z**2 * tf.exp(-v) - 0.5 * v


def test_divergences_on_funnel_concentrate_in_the_neck(rng):
    init = rng.normal(size=(4, 2))
    kw = dict(num_results=300, chunk_size=CHUNK, progress=False, seed=4, dtype="float64")
    large = sample_hmc(funnel_log_prob, init, num_burnin=0, step_size=1.5, **kw)
    assert large.samples.dtype == np.float64
    div = large.sample_stats["diverging"]
    assert div.sum() > 20
    v = large.samples[..., 0]
    # Divergences happen where the funnel is narrow (small v), not in its mouth.
    assert np.median(v[div]) < np.median(v[~div]) - 0.75
    # A smaller adapted step (high target acceptance) diverges far less often.
    small = sample_hmc(funnel_log_prob, init, num_burnin=200, target_accept=0.99,
                       step_size=0.1, **kw)
    assert small.sample_stats["diverging"].mean() < 0.25 * div.mean()
    assert np.all(small.step_size < 1.0)


def test_75d_gaussian_with_vi_mass_matrix(rng, tmp_path):
    dim = 75
    target = Gaussian(dim)
    mean = rng.normal(size=dim)
    cov = random_cov(rng, dim, cond=1e3)
    target.set(mean, cov)
    exact = rng.multivariate_normal(mean, cov, size=2000)
    vi_cov = np.cov(exact.T)
    res = sample_hmc(target.log_prob, exact[:4], num_results=1000, num_burnin=300,
                     mass_matrix=vi_cov, seed=5, chunk_size=CHUNK, progress=False,
                     trace_fn=lambda x: {"total": tf.reduce_sum(x, -1)})
    assert res.samples.shape == (1000, 4, dim)
    rhat = potential_scale_reduction(res.samples)
    print(f"75D: max R-hat {rhat.max():.4f}, min bulk ESS "
          f"{effective_sample_size(res.samples).min():.0f} of 4000 draws, mean leapfrogs "
          f"{res.sample_stats['n_steps'].mean():.1f}, timing {res.timing}")
    assert np.all(rhat < 1.01)
    x = res.samples.reshape(-1, dim).astype(np.float64)
    err = x.std(0) / np.sqrt(effective_sample_size(res.samples, method="mean"))
    assert np.all(np.abs(x.mean(0) - mean) < 5 * err)
    # Variances within 15% (ESS ~ 1000+ per parameter gives ~5% errors).
    np.testing.assert_allclose(x.var(0), np.diag(cov), rtol=0.15)
    assert res.num_divergences.sum() == 0
    np.testing.assert_allclose(res.trace["total"], res.samples.sum(-1), rtol=1e-4, atol=1e-3)
    out = res.save(str(tmp_path / "run.npz"))
    with np.load(out["npz"]) as f:
        np.testing.assert_array_equal(f["x"], res.samples)
        np.testing.assert_array_equal(f["sample_stats/diverging"],
                                      res.sample_stats["diverging"])


def run_until_interrupted(log_prob, init, checkpoint, step, **kw):
    """Run ``sample_hmc`` with ``checkpoint`` and interrupt it after the chunk that
    reaches ``step`` (as a crash or Ctrl-C would)."""

    class Interrupt(Exception):
        pass

    def stop(info):
        if info["step"] >= step:
            raise Interrupt

    with pytest.raises(Interrupt):
        sample_hmc(log_prob, init, checkpoint=checkpoint, callback=stop, **kw)


def assert_resumes_exactly(log_prob, init, checkpoint, step, full, fields=("samples",), **kw):
    """Interrupt a run after ``step`` and rerun it: it resumes there and ends with the
    same ``fields`` as the uninterrupted run ``full``."""
    run_until_interrupted(log_prob, init, checkpoint, step, **kw)
    resumed = sample_hmc(log_prob, init, checkpoint=checkpoint, **kw)
    assert resumed.resumed_from_step == step
    for name in fields:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))
    return resumed


def test_resume_from_checkpoint_continues_exactly(gauss, rng, tmp_path):
    gauss.set(np.zeros(D), random_cov(rng, D, cond=10.0))
    init = rng.normal(size=(4, D))
    kw = dict(num_results=150, num_burnin=50, seed=6, chunk_size=CHUNK, progress=False)
    full = sample_hmc(gauss.log_prob, init, **kw)

    ckpt = str(tmp_path / "chain.npz")
    run_until_interrupted(gauss.log_prob, init, ckpt, 150, **kw)
    with np.load(ckpt) as f:
        assert int(f["step"]) == 150  # chunks end at 50 (burn-in), 150, 200
    resumed = sample_hmc(gauss.log_prob, init, checkpoint=ckpt, **kw)
    assert resumed.resumed_from_step == 150
    assert resumed.samples.shape == full.samples.shape == (150, 4, D)
    # Same seeds per step, same adaptation state: the continuation is the same chain.
    np.testing.assert_array_equal(resumed.samples, full.samples)
    np.testing.assert_array_equal(resumed.step_size, full.step_size)
    np.testing.assert_array_equal(resumed.warmup_stats["step_size"],
                                  full.warmup_stats["step_size"])
    # A finished checkpoint is read back without sampling.
    again = sample_hmc(gauss.log_prob, init, checkpoint=ckpt, **kw)
    assert again.resumed_from_step == 200 and again.timing["first_chunk"] is None
    np.testing.assert_array_equal(again.samples, full.samples)
    with pytest.raises(ValueError, match="num_results"):
        sample_hmc(gauss.log_prob, init, checkpoint=ckpt, **dict(kw, num_results=151))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    # One replica of a tf.distribute strategy draws the same chains as no strategy.
    short = dict(kw, num_results=30, num_burnin=20)
    a = sample_hmc(gauss.log_prob, init, **short)
    b = sample_hmc(gauss.log_prob, init, strategy=tf.distribute.get_strategy(), **short)
    np.testing.assert_array_equal(a.samples, b.samples)


def test_adaptation_windows_follow_stan():
    # Stan's documented schedule for 1000 warm-up iterations: 75 fast, slow windows of
    # 25, 50, 100, 200 and 500 (stretched to the terminal buffer), 50 fast.
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450),
                                        (450, 950)]
    assert adaptation_windows(300) == [(75, 100), (100, 150), (150, 250)]
    assert adaptation_windows(100) == [(15, 90)]  # 15% / 75% / 10% when short
    assert adaptation_windows(19) == []


def test_dense_mass_matrix_adaptation_learns_the_covariance(gauss, rng, tmp_path):
    # Badly scaled and correlated (condition number 1e4), no mass matrix given: the
    # windowed dense adaptation must learn the covariance, and the kept draws must have
    # the right moments and a far higher ESS per gradient than without adaptation.
    cov = random_cov(rng, D, cond=1e4)
    mean = rng.normal(size=D)
    gauss.set(mean, cov)
    init = mean + rng.normal(size=(4, D))
    kw = dict(num_results=300, num_burnin=300, seed=11, chunk_size=CHUNK, progress=False,
              step_size=0.01, adapt_mass_matrix="dense")
    res = sample_hmc(gauss.log_prob, init, **kw)
    # The learned metric whitens the target: eigenvalues of cov^-1 Sigma_hat near 1.
    ratio = np.linalg.eigvals(np.linalg.solve(cov, res.mass_matrix)).real
    assert 0.5 < ratio.min() and ratio.max() < 2.0, ratio
    assert_moments(res.samples, mean, cov)
    assert potential_scale_reduction(res.samples).max() < 1.05
    plain = sample_hmc(gauss.log_prob, init, **dict(kw, adapt_mass_matrix=None,
                                                    num_burnin=100, num_results=100))
    per_grad = (effective_sample_size(res.samples).min()
                / res.num_gradient_evaluations.sum())
    per_grad_plain = (effective_sample_size(plain.samples).min()
                      / plain.num_gradient_evaluations.sum())
    assert per_grad > 10 * per_grad_plain, (per_grad, per_grad_plain)
    assert res.warmup_samples.shape == (300, 4, D)

    # Interrupted inside the adaptation (chunks end at the window ends 100, 150, 250 and
    # at 300), a rerun resumes to the same draws and the same learned metric.
    assert_resumes_exactly(gauss.log_prob, init, str(tmp_path / "adapt.npz"), 150, res,
                           ("samples", "mass_matrix"), **kw)


def test_chees_hmc_many_chains_learns_metric_and_trajectory(gauss, rng, tmp_path):
    # ChEES-HMC: 16 chains share one step size and one jittered trajectory length, both
    # adapted in burn-in together with the dense metric; the draws must have the right
    # moments, and an interrupted run must resume to the same chains.
    cov = random_cov(rng, D, cond=1e3)
    mean = rng.normal(size=D)
    gauss.set(mean, cov)
    init = mean + 0.1 * rng.normal(size=(16, D))
    kw = dict(kernel="chees", num_results=100, num_burnin=200, seed=4, chunk_size=CHUNK,
              progress=False, step_size=0.05, max_tree_depth=5, adapt_mass_matrix="dense")
    res = sample_hmc(gauss.log_prob, init, **kw)
    assert res.kernel == "chees" and res.samples.shape == (100, 16, D)
    assert_moments(res.samples, mean, cov)
    assert potential_scale_reduction(res.samples).max() < 1.05
    assert res.num_divergences.sum() == 0
    # One step size for all chains, fixed after burn-in.
    assert np.all(res.step_size == res.step_size[0])
    assert np.all(res.sample_stats["step_size"] == res.step_size[0])
    # The trajectory length is adapted in burn-in, then fixed; the number of leapfrog
    # steps is jittered below its cap 2**max_tree_depth - 1 and the same for all chains.
    traj = res.sample_stats["trajectory_length"]
    assert np.all(traj == traj[0, 0]) and traj[0, 0] > 0
    assert res.warmup_stats["trajectory_length"][0, 0] != traj[0, 0]
    n = res.sample_stats["n_steps"]
    assert np.all(n == n[:, :1]) and n.min() >= 1 and n.max() <= 31
    assert len(np.unique(n)) >= 3
    assert np.all(n <= np.ceil(traj / res.step_size[0]) + 1)
    ratio = np.linalg.eigvals(np.linalg.solve(cov, res.mass_matrix)).real
    assert 0.5 < ratio.min() and ratio.max() < 2.0, ratio

    resumed = assert_resumes_exactly(gauss.log_prob, init, str(tmp_path / "chees.npz"), 150,
                                     res, **kw)
    np.testing.assert_array_equal(resumed.sample_stats["n_steps"], n)
    # One replica of a strategy runs the same chains.
    short = dict(kw, num_results=10, num_burnin=20)
    a = sample_hmc(gauss.log_prob, init, **short)
    b = sample_hmc(gauss.log_prob, init, strategy=tf.distribute.get_strategy(), **short)
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="step_size must be a scalar for kernel='chees'"):
        sample_hmc(gauss.log_prob, init, **dict(short, step_size=np.linspace(0.1, 0.2, 16)))


def test_a_new_sampler_is_one_subclass_and_neutra_samples_through_a_bijector(
        gauss, rng, tmp_path):
    """MALA written as a :class:`Sampler` subclass (one leapfrog step) runs through the
    generic driver, with a checkpoint resumed exactly; with ``transform`` the chains run
    on the base variable of an affine bijector that maps N(0, I) onto the target, so the
    base draws are standard normal and the draws are the target's."""
    import tensorflow_probability as tfp

    from tfstronglens.inference.kernels import SAMPLERS, Sampler, hmc_statistics

    class MALA(Sampler):
        name = "test-mala"

        def kernel(self, target_log_prob_fn, step_size, num_adaptation_steps):
            return tfp.mcmc.HamiltonianMonteCarlo(target_log_prob_fn, step_size=step_size,
                                                  num_leapfrog_steps=1)

        def statistics(self, results, dtype):
            return hmc_statistics(results, 1, dtype)

    try:
        assert SAMPLERS["test-mala"] is MALA
        mean = rng.normal(size=D)
        cov = random_cov(rng, D, cond=30.0)
        gauss.set(mean, cov)
        chol = np.linalg.cholesky(cov).astype(np.float32)
        affine = tfp.bijectors.Chain([tfp.bijectors.Shift(mean.astype(np.float32)),
                                      tfp.bijectors.ScaleMatvecTriL(chol)])
        kw = dict(kernel="test-mala", num_results=600, num_burnin=200, seed=4,
                  chunk_size=CHUNK, progress=False, transform=affine)
        init = rng.normal(size=(4, D))
        res = sample_hmc(gauss.log_prob, init, **kw)
        assert res.kernel == "test-mala" and np.all(res.sample_stats["n_steps"] == 1)
        assert_moments(res.base_samples, np.zeros(D), np.eye(D))
        assert_moments(res.samples, mean, cov)
        np.testing.assert_allclose(res.samples, affine.forward(res.base_samples).numpy(),
                                   rtol=1e-5, atol=1e-5)
        assert res.warmup_base_samples.shape == res.warmup_samples.shape == (200, 4, D)
        assert_resumes_exactly(gauss.log_prob, init, str(tmp_path / "mala.npz"), 300, res,
                               ("samples", "base_samples"), **kw)
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.samples = None
    finally:
        SAMPLERS.pop("test-mala", None)


def test_bad_arguments_raise_value_error_naming_them(gauss):
    init = np.zeros((2, D))
    lp = gauss.log_prob
    cases = [
        (dict(kernel="mala"), "kernel"),
        (dict(num_results=0), "num_results"),
        (dict(num_burnin=-1), "num_burnin"),
        (dict(num_results=2.5), "num_results"),
        (dict(step_size=-0.1), "step_size"),
        (dict(step_size=[0.1, 0.1, 0.1]), "step_size"),
        (dict(num_leapfrog_steps=0), "num_leapfrog_steps"),
        (dict(max_tree_depth=0), "max_tree_depth"),
        (dict(target_accept=1.0), "target_accept"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(mass_matrix=np.ones(D - 1)), "mass_matrix"),
        (dict(mass_matrix=-np.ones(D)), "mass_matrix"),
        (dict(mass_matrix=np.diag(np.r_[-1.0, np.ones(D - 1)])), "mass_matrix"),
        (dict(seed=-3), "seed"),
        (dict(dtype="int32"), "dtype"),
        (dict(trace_fn=3), "trace_fn"),
        (dict(strategy="mirrored"), "strategy"),
        (dict(adapt_mass_matrix="full"), "adapt_mass_matrix"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            sample_hmc(lp, init, progress=False, **kwargs)
    with pytest.raises(ValueError, match="init"):
        sample_hmc(lp, np.zeros(D), progress=False)
    with pytest.raises(ValueError, match="init"):
        sample_hmc(lp, np.full((2, D), np.nan), progress=False)
    with pytest.raises(ValueError, match="log_prob_fn"):
        sample_hmc("not callable", init, progress=False)
    with pytest.raises(ValueError, match="log_prob_fn\\(init\\)"):
        sample_hmc(lambda x: tf.reduce_sum(x, -1) * np.inf, init, progress=False)
    with pytest.raises(ValueError, match="log_prob_fn\\(init\\)"):
        sample_hmc(lambda x: tf.reduce_sum(x), init, progress=False)
    with pytest.raises(FileNotFoundError):
        sample_hmc(lp, init, progress=False, checkpoint="/nonexistent/dir/ck.npz")


@pytest.mark.slow
def test_benchmark_75d_8_chains_1000_draws(rng, capsys):
    """Timing of the case in the report: NUTS, 75-D Gaussian, 8 chains, 1000 draws."""
    dim = 75
    target = Gaussian(dim)
    mean = rng.normal(size=dim)
    cov = random_cov(rng, dim, cond=1e3)
    target.set(mean, cov)
    exact = rng.multivariate_normal(mean, cov, size=2000)
    res = sample_hmc(target.log_prob, exact[:8], num_results=1000, num_burnin=500,
                     mass_matrix=np.cov(exact.T), seed=7, chunk_size=250, progress=False)
    ess = effective_sample_size(res.samples)
    assert np.all(potential_scale_reduction(res.samples) < 1.01)
    with capsys.disabled():
        print(f"\n75D NUTS 8x1000: timing {res.timing}, min bulk ESS {ess.min():.0f}, "
              f"ESS/s (sampling) {ess.min() / res.timing['sampling']:.0f}, "
              f"mean tree depth {res.mean_tree_depth.mean():.2f}")


@pytest.mark.slow
def test_chains_split_across_two_replicas():
    """Two logical CPU devices under MirroredStrategy (in a subprocess: devices must be
    configured before TensorFlow starts)."""
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfstronglens.inference import mcmc, diagnostics
        prec = tf.constant(np.linalg.inv([[1.0, 0.9], [0.9, 1.0]]), tf.float32)
        lp = lambda x: -0.5 * tf.reduce_sum(x * tf.linalg.matvec(prec, x), -1)
        s = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        r = mcmc.sample_hmc(lp, np.zeros((4, 2)), num_results=500, num_burnin=300, seed=3,
                            progress=False, strategy=s)
        assert r.samples.shape == (500, 4, 2), r.samples.shape
        assert np.all(diagnostics.potential_scale_reduction(r.samples) < 1.02)
        assert not np.allclose(r.samples[:, 0], r.samples[:, 2])  # replicas differ
        c = mcmc.sample_hmc(lp, np.zeros((8, 2)), num_results=300, num_burnin=300, seed=3,
                            progress=False, strategy=s, kernel="chees")
        assert np.all(diagnostics.potential_scale_reduction(c.samples) < 1.02)
        # one step size per replica, shared by its 4 chains
        assert len(set(c.step_size[:4])) == 1 and len(set(c.step_size[4:])) == 1
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_without_xla(gauss, rng):
    """``jit_compile=False`` runs the same kernel as a plain graph (its random streams
    differ from XLA's, so the draws are not the same, only their distribution)."""
    gauss.set(np.zeros(D), np.eye(D) * 4.0)
    res = sample_hmc(gauss.log_prob, rng.normal(size=(2, D)), num_results=300,
                     num_burnin=100, seed=8, chunk_size=CHUNK, progress=False,
                     jit_compile=False)
    assert res.samples.shape == (300, 2, D)
    assert abs(res.samples.var() - 4.0) < 0.6
