r"""Simulation-based calibration of the posterior approximations (Talts et al. 2018).

#### The test

If ``theta ~ p(theta)`` (the model's own prior) and ``d ~ p(d | theta)`` (the model's own
likelihood), then ``theta`` is a draw from the exact posterior ``p(theta | d)``. Hence
for *any* data set the true parameters fall in a central ``alpha`` credible interval of
the exact posterior with probability ``alpha``, and their rank among posterior draws is
uniform. Averaged over many simulated data sets this holds for the approximation only
if it is calibrated: intervals that are too narrow (a missing ``log|det J|``, a wrong
noise model, a Hessian off by a factor) or too wide, or shifted (a biased mode), break it.

Here each simulation ``i`` draws ``theta_i`` with :meth:`LensModel.sample_prior`,
simulates ``d_i`` with :meth:`LensModel.simulate`, and fits it with
:func:`laplace_approximation`: Newton iterations from the true point to the posterior
mode in the unconstrained space ``x`` (each fit must converge: Newton decrement
``g^T H^{-1} g < 1e-2`` at the returned mode), then ``N(x_MAP, H^{-1})``. (The global
search of :func:`find_map` is not part of this test: it is tested in
``test_inference_map_vi.py`` and ``test_fit_cli.py``; at this S/N the posterior is
unimodal near the truth. Starting at the truth could only make the coverage look
better if Newton stopped early there, which the convergence check excludes.)

The statistics, with ``z_ip = (x_true,ip - mu_ip) / sigma_ip`` and ``Sigma_i`` the
Laplace covariance:

* pooled coverage of the central 68% and 95% intervals over all simulations and
  parameters. The ``D`` indicators of one simulation are correlated (under calibration
  ``z_i ~ N(0, R_i)``, ``R_i`` the posterior correlation matrix); the variance of the
  pooled count is therefore computed exactly from bivariate-normal rectangle
  probabilities, ``Var = sum_i sum_pq [P(|z_p| < c, |z_q| < c) - alpha^2]``; the
  simulations are independent, so the count is approximately normal. The
  test asks for a two-sided p-value > 1e-3;
* ``T = sum_i (x_true,i - mu_i)^T Sigma_i^{-1} (x_true,i - mu_i) ~ chi^2(S D)`` (this also
  checks the correlations), two-sided p > 1e-3, and, as a check of the test's power,
  the same statistic must reject the Laplace posterior with its covariance scaled by
  ``0.8^2`` or ``1.25^2`` (20-25% too narrow or too wide);
* per parameter, a Kolmogorov-Smirnov test of ``Phi(z_ip)`` (the continuous rank: the
  fraction of Laplace-posterior mass below the truth) against ``U(0, 1)`` over the ``S``
  independent simulations, p > 1e-3 / D (Bonferroni).

Intervals are computed in ``x``; the bijectors here are elementwise monotone (identity,
exp), so they are exactly the images of the constrained parameters' intervals.

#### Why this regime (priors, S/N)

The priors are the ones the test chooses (passed as ``priors=``), and the truths are
drawn from them, so the calibration is exact in principle. They have unbounded support
(Normal / LogNormal: identity or exp bijectors) and the S/N of the lensed source is high (65-560 over the seeds tried):

* with the model's default bounded priors (Uniform, TruncatedNormal, LogUniform, whose
  event-space bijectors are scaled sigmoids), a truth within a posterior width of a
  prior boundary has a strongly skewed posterior in the unconstrained coordinate (the
  sigmoid compresses it), the Hessian there is not positive definite and Newton
  iterations from the truth stop: in a trial with ``LogUniform(30, 100)`` amplitudes,
  9 of 40 fits did not converge and the 68% coverage was 0.85;
* at lower S/N the Sersic source's ``amp``-``R_sersic``-``n_sersic`` degeneracy is
  curved (banana-shaped) and a Gaussian approximation is not calibrated;
  the source index and ellipticity are therefore held fixed.

The slow variant adds the lens centre and external shear (11 parameters), more
simulations, rank statistics from posterior draws and NUTS.

#### Seeds

The seeds written here are the first ones tried, not picked. The default test was also
run (outside the suite) with the truth seeds 3, 5, ..., 17: 8 of the 9 seeds pass all
assertions; seed 3 fails on the 95% coverage (0.888, p < 1e-3; its 68% coverage 0.61,
p = 0.03; chi^2 p = 0.001), a fluctuation as far as a larger run can tell: 128
simulations (seed 101) gave pooled coverages 0.686 (68%) and 0.948 (95%), chi^2 958 for
896 degrees of freedom (p = 0.15). Each assertion has a false-alarm probability of about
1e-3 when the approximation is exactly calibrated; the slight non-Gaussianity of real
posteriors (pooled 95% coverage 0.939 over the 9 seeds) makes failures a bit likelier.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

import tfstronglens as tsl
from tfstronglens.inference import LensModel, laplace_approximation

tfd = tfp.distributions

N_PIX = 20
PIX = 0.08          # arcsec: field of view 1.6"
SIGMA = 0.05        # e-/s per pixel, fixed noise map
PSF_FWHM = 0.12     # arcsec
P_MIN = 1e-3        # smallest accepted p-value of each statistic


def sbc_model(num_pix=N_PIX, shear=False, lens_centre=False, compile_batch_size=16):
    """A small SIE (+ shear) lens of an elliptical-Sersic source with unbounded priors.

    Free: ``theta_E ~ LogNormal(ln 0.6, 0.1)``, ``e1, e2 ~ N(0, 0.1)``, source
    ``amp ~ LogNormal(ln 55, 0.3)`` (e-/s/arcsec^2), ``R_sersic ~ LogNormal(ln 0.21,
    0.17)`` (arcsec), ``center_x, center_y ~ N(0, 0.1)``; with ``lens_centre`` the lens
    centre ``~ N(0, 0.03)``, with ``shear`` ``gamma1, gamma2 ~ N(0, 0.03)``. Fixed: the
    source's ``n_sersic = 1`` and ``e1 = e2 = 0`` (see the module docs).
    """
    dt = tf.float32
    c = lambda v: tf.constant(v, dt)  # noqa: E731
    obs = tsl.Observation(num_pix, PIX, 1000.0, background_rms=SIGMA,
                          psf=tsl.GaussianPSF(PSF_FWHM, truncation=3.0))
    priors = {"lens.0.theta_E": tfd.LogNormal(c(np.log(0.6)), c(0.1)),
              "lens.0.e1": tfd.Normal(c(0.0), c(0.1)),
              "lens.0.e2": tfd.Normal(c(0.0), c(0.1)),
              "source.0.amp": tfd.LogNormal(c(np.log(55.0)), c(0.3)),
              "source.0.R_sersic": tfd.LogNormal(c(np.log(0.21)), c(0.17)),
              "source.0.center_x": tfd.Normal(c(0.0), c(0.1)),
              "source.0.center_y": tfd.Normal(c(0.0), c(0.1))}
    fixed = {"source.0.n_sersic": 1.0, "source.0.e1": 0.0, "source.0.e2": 0.0}
    for name in ("lens.0.center_x", "lens.0.center_y"):
        if lens_centre:
            priors[name] = tfd.Normal(c(0.0), c(0.03))
        else:
            fixed[name] = 0.0
    for name in ("lens.1.gamma1", "lens.1.gamma2"):
        if shear:
            priors[name] = tfd.Normal(c(0.0), c(0.03))
        else:
            fixed[name] = 0.0
    return LensModel(obs, "sie+shear", "sersic", supersample=1, priors=priors, fixed=fixed,
                     noise_map=np.full((num_pix, num_pix), SIGMA), jit_compile=False,
                     compile_batch_size=compile_batch_size)


def simulate(model, num_sims, seed):
    """Truths from the prior and noisy images: ``(x_true [S, D] float64, data [S, N, N],
    S/N [S])`` (S/N: ``sqrt(sum (model / sigma)^2)`` of the noiseless image)."""
    truth = model.sample_prior(num_sims, seed=seed)
    data = model.simulate(truth, seed=seed + 1).numpy()
    clean = model.render(truth).numpy()
    snr = np.sqrt(np.sum((clean / SIGMA) ** 2, axis=(1, 2)))
    return model.to_flat(truth).numpy().astype(np.float64), data, snr


def laplace_fits(model, x_true, data):
    """Laplace approximation of every simulation, Newton-refined from the truth.

    Returns ``(means [S, D], covariances [S, D, D], newton_decrement [S])``."""
    means, covs, dec = [], [], []
    for x0, d in zip(x_true, data):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lap = laplace_approximation(model, x0, d, newton_steps=6)
        assert not [w for w in caught if "eigenvalue" in str(w.message)], \
            [str(w.message) for w in caught]
        _, g = model.objective(d).value_and_gradient(tf.constant(lap.mean[None], model.dtype))
        g = g.numpy()[0].astype(np.float64)
        means.append(lap.mean)
        covs.append(lap.covariance)
        dec.append(float(g @ lap.covariance @ g))
    return np.array(means), np.array(covs), np.array(dec)


def _inside_prob(level, rho):
    """``P(|X| < c, |Y| < c)`` for standard bivariate normals of correlation ``rho``, with
    ``c`` the two-sided ``level`` quantile."""
    c = stats.norm.ppf(0.5 + level / 2)
    if abs(rho) > 1 - 1e-9:          # Y = +-X
        return level
    mvn = stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]])
    return float(mvn.cdf([c, c], lower_limit=[-c, -c]))


def coverage_sd(corr, level):
    """Null standard deviation of the pooled coverage fraction of ``S`` independent
    simulations whose ``D`` standardized errors are ``N(0, corr_i)`` (``corr [S, D, D]``):
    ``sqrt(sum_i sum_pq [P(|z_p| < c, |z_q| < c) - alpha^2]) / (S D)``."""
    S, D, _ = corr.shape
    var = 0.0
    for i in range(S):
        var += D * level * (1 - level)
        for p in range(D):
            for q in range(p + 1, D):
                var += 2 * (_inside_prob(level, corr[i, p, q]) - level**2)
    return float(np.sqrt(var) / (S * D))


def pooled_coverage(z, corr, level):
    """Pooled coverage of central ``level`` intervals and its null standard deviation.

    Args:
      z: ``[S, D]`` standardized errors ``(x_true - mean) / sd``.
      corr: ``[S, D, D]`` posterior correlation matrices (under calibration ``z_i ~
        N(0, corr_i)``).
      level: central probability, e.g. 0.68.

    Returns:
      ``(fraction, expected sd of the fraction, two-sided p-value)``.
    """
    c = stats.norm.ppf(0.5 + level / 2)
    frac = float(np.mean(np.abs(z) < c))
    sd = coverage_sd(corr, level)
    return frac, sd, float(2 * stats.norm.sf(abs(frac - level) / sd))


def calibration_statistics(x_true, means, covs):
    """All statistics of the module docs, as a dict."""
    S, D = x_true.shape
    err = x_true - means
    sd = np.sqrt(np.einsum("ipp->ip", covs))
    z = err / sd
    corr = covs / (sd[:, :, None] * sd[:, None, :])
    out = {"z": z}
    for level in (0.68, 0.95):
        out[level] = pooled_coverage(z, corr, level)
    T = float(sum(e @ np.linalg.solve(c, e) for e, c in zip(err, covs)))
    chi2 = stats.chi2(S * D)
    out["chi2"] = T
    out["chi2_p"] = 2 * min(chi2.sf(T), chi2.cdf(T))
    out["chi2_p_narrow"] = chi2.sf(T / 0.8**2)     # covariance 0.8^2 Sigma
    out["chi2_p_wide"] = chi2.cdf(T / 1.25**2)     # covariance 1.25^2 Sigma
    out["ks_p"] = np.array([stats.kstest(stats.norm.cdf(z[:, p]), "uniform").pvalue
                            for p in range(D)])
    return out


def assert_calibrated(st, D):
    for level in (0.68, 0.95):
        frac, sd, p = st[level]
        assert p > P_MIN, (level, frac, sd, p)
    assert st["chi2_p"] > P_MIN, st["chi2"]
    # the statistic has the power to see 20-25% errors of the posterior width
    assert st["chi2_p_narrow"] < P_MIN and st["chi2_p_wide"] < P_MIN, st["chi2"]
    assert np.all(st["ks_p"] > P_MIN / D), st["ks_p"]


def test_laplace_posterior_is_calibrated():
    """32 simulations of a 7-parameter SIE + Sersic lens, 20x20 pixels, S/N > 50."""
    model = sbc_model()
    D = model.num_params
    assert D == 7
    x_true, data, snr = simulate(model, 32, seed=1)
    assert snr.min() > 50.0, snr
    means, covs, dec = laplace_fits(model, x_true, data)
    assert np.all(dec < 1e-2), dec            # every fit is at a mode
    st = calibration_statistics(x_true, means, covs)
    print({lv: st[lv] for lv in (0.68, 0.95)}, "chi2", st["chi2"], "of", 32 * D,
          "KS p", st["ks_p"])
    assert_calibrated(st, D)


def rank_uniformity_p(ranks, num_draws, num_bins=10):
    """Chi-square p-value of SBC ranks ``[S]`` (integers in ``0..num_draws``; uniform under
    calibration) in ``num_bins`` equal bins (``num_draws + 1`` divisible by ``num_bins``)."""
    assert (num_draws + 1) % num_bins == 0
    counts = np.bincount(ranks * num_bins // (num_draws + 1), minlength=num_bins)
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.slow
def test_laplace_and_nuts_calibrated_sie_shear():
    """64 simulations of an 11-parameter SIE + shear + Sersic lens: the Laplace posterior
    (all statistics of the default test) and NUTS (SBC ranks of 99 draws, chi-square
    uniformity per parameter, and pooled coverage of the draws' central intervals) on
    the first 24 of them."""
    model = sbc_model(shear=True, lens_centre=True, compile_batch_size=32)
    D = model.num_params
    assert D == 11
    S, S_nuts = 64, 24
    x_true, data, snr = simulate(model, S, seed=21)
    means, covs, dec = laplace_fits(model, x_true, data)
    assert np.all(dec < 1e-2), dec
    st = calibration_statistics(x_true, means, covs)
    print("Laplace", {lv: st[lv] for lv in (0.68, 0.95)}, "chi2", st["chi2"], "of", S * D,
          "KS p", st["ks_p"])
    assert_calibrated(st, D)

    # NUTS on every simulation at once: chain c samples the posterior of simulation
    # c // 2, in coordinates whitened by that simulation's Laplace fit, x = mu + L u (a
    # constant Jacobian), so one step size per chain fits every direction.
    from tfstronglens.inference import sample_hmc

    chains = 2
    idx = np.repeat(np.arange(S_nuts), chains)
    chol = np.linalg.cholesky(covs[:S_nuts])
    mu_c = tf.constant(means[idx], model.dtype)
    chol_c = tf.constant(chol[idx], model.dtype)
    data_c = tf.constant(data[idx], model.dtype)

    @tf.autograph.experimental.do_not_convert
    def log_prob(u):
        x = mu_c + tf.linalg.matvec(chol_c, u)
        return model.log_density(x, data_c)

    rng = np.random.default_rng(5)
    init = rng.standard_normal((S_nuts * chains, D)).astype(np.float32)
    num_results, thin = 200, 4
    res = sample_hmc(log_prob, init, num_results=num_results, num_burnin=200, kernel="nuts",
                     step_size=0.5, max_tree_depth=4, seed=7, jit_compile=False,
                     progress=True)
    u = res.samples.astype(np.float64)                    # [draws, chains, D]
    assert np.mean(res.sample_stats["diverging"]) < 1e-3
    x = means[idx][None] + np.einsum("cij,ncj->nci", chol[idx], u)
    x = x[::thin]                                         # [draws / thin, chains, D]
    draws = np.stack([x[:, idx == i].reshape(-1, D)[:99] for i in range(S_nuts)])
    L = draws.shape[1]
    ranks = np.sum(draws < x_true[:S_nuts, None, :], axis=1)                  # [S, D]
    p_rank = np.array([rank_uniformity_p(ranks[:, p], L) for p in range(D)])
    # central intervals from the ranks: with L = 99 draws the rank is uniform on 0..99
    # under calibration, so "inside the central 68%" is rank in 16..83 (68 of 100 values)
    # and "inside 95%" rank in 3..97 (95 of 100): exact, unlike sample percentiles of 99
    # draws, whose [2.5, 97.5] interval covers only ~93% on average
    cov68 = np.mean((ranks >= 16) & (ranks <= 83))
    cov95 = np.mean((ranks >= 3) & (ranks <= 97))
    print("NUTS rank chi2 p", p_rank, "coverage", cov68, cov95, "draws per simulation", L)
    assert np.all(p_rank > P_MIN / D), p_rank
    # the pooled coverage, with the null variance from the (Laplace) posterior correlations
    sd = np.sqrt(np.einsum("ipp->ip", covs[:S_nuts]))
    corr = covs[:S_nuts] / (sd[:, :, None] * sd[:, None, :])
    for level, frac in ((0.68, cov68), (0.95, cov95)):
        sd_frac = coverage_sd(corr, level)
        # (99 draws per simulation: the interval end points scatter, which widens the
        # null sd by a few per cent, within the 3.3 sigma threshold)
        assert abs(frac - level) < 3.3 * sd_frac, (level, frac, sd_frac)
