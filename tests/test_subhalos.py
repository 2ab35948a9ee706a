"""Subhalo populations: mass function (CDM and WDM), positions, Poisson numbers, the
population density, and the conversion to lens parameters for the Simulator."""

import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

import tfstronglens as tsl
from tfstronglens.observation import (
    LensCosmology,
    SubhaloMassFunction,
    SubhaloPopulation,
    UniformAnnulus,
    subhalo_deflection,
    subhalo_lens_kwargs,
    truncation_radius_isothermal,
    wdm_suppression,
)

F64 = tf.float64


def _S(m, m_hm, a=4.2, b=2.5, g=-0.2):
    return (1.0 + (a * m_hm / m) ** b) ** g if m_hm > 0 else np.ones_like(m)


def _Z(m_min, m_max, beta, m_hm, a=4.2, b=2.5, g=-0.2):
    """int m^beta S(m) dm by adaptive quadrature in ln m (independent reference)."""
    f = lambda u: np.exp((beta + 1) * u) * _S(np.exp(u), m_hm, a, b, g)  # noqa: E731
    lo, hi = np.log(m_min), np.log(m_max)
    pts = [np.log(a * m_hm)] if m_hm > 0 and lo < np.log(a * m_hm) < hi else None
    return integrate.quad(f, lo, hi, points=pts, limit=400, epsabs=0, epsrel=1e-13)[0]


def _cdf_ref(m, m_min, beta, m_hm, Z):
    return np.array([_Z(m_min, x, beta, m_hm) / Z for x in np.atleast_1d(m)])


# ------------------------------------------------------------- mass function
@pytest.mark.parametrize("beta,m_hm,coeffs", [
    (-1.9, 0.0, (4.2, 2.5, -0.2)),
    (-1.9, 1e8, (4.2, 2.5, -0.2)),     # turnover inside the range
    (-1.9, 1e5, (4.2, 2.5, -0.2)),     # turnover below m_min
    (-1.9, 1e11, (4.2, 2.5, -0.2)),    # turnover above m_max
    (-1.0, 1e8, (4.2, 2.5, -0.2)),     # beta = -1: F(s = 0) limit
    (-0.5, 1e7, (2.3, 0.8, -1.0)),     # rising power law, Lovell's central-halo fit
])
def test_mass_function_normalization_matches_quadrature(beta, m_hm, coeffs):
    m_min, m_max = 1e6, 1e10
    a, b, g = coeffs
    mf = SubhaloMassFunction(m_min, m_max, beta=beta, m_hm=m_hm, wdm_alpha=a, wdm_beta=b,
                             wdm_gamma=g, dtype=F64)
    Z = _Z(m_min, m_max, beta, m_hm, a, b, g)
    m = np.logspace(6, 10, 9)
    ref = np.log(m ** beta * _S(m, m_hm, a, b, g) / Z)
    np.testing.assert_allclose(mf.log_prob(m).numpy(), ref, rtol=0, atol=1e-11)
    Zc = _Z(m_min, m_max, beta, 0.0)
    assert abs(float(mf.mean_suppression()) / (Z / Zc) - 1) < 1e-11
    # outside the support: zero density
    assert np.all(np.isneginf(mf.log_prob([0.5 * m_min, 2 * m_max]).numpy()))
    # mean mass: int m^(beta+1) S / Z
    assert abs(float(mf.mean()) / (_Z(m_min, m_max, beta + 1, m_hm, a, b, g) / Z) - 1) < 1e-11
    # CDF against quadrature at a few points
    x = np.array([2e6, 1e8, 5e9])
    np.testing.assert_allclose(mf.cdf(x).numpy(), [_Z(m_min, v, beta, m_hm, a, b, g) / Z
                                                    for v in x], rtol=1e-11)


def test_cdm_sampling_matches_power_law_and_slope_is_recovered():
    m_min, m_max, beta, n = 1e6, 1e10, -1.9, 20000
    mf = SubhaloMassFunction(m_min, m_max, beta=beta, dtype=F64)
    m = mf.sample(n, seed=11).numpy()
    assert m.min() >= m_min and m.max() <= m_max
    s = beta + 1

    def cdf(x):  # analytic truncated power law
        return (x ** s - m_min ** s) / (m_max ** s - m_min ** s)

    assert stats.kstest(m, cdf).pvalue > 0.01
    # maximum-likelihood slope of a truncated power law and its Fisher error
    lnm = np.log(m)

    def score(b):
        sb = b + 1
        # d/db ln Z(b) = E_b[ln m]
        grid = np.linspace(np.log(m_min), np.log(m_max), 4001)
        w = np.exp(sb * (grid - grid[0]))
        return lnm.mean() - np.sum(w * grid) / np.sum(w)

    from scipy.optimize import brentq

    b_hat = brentq(score, -3.0, -1.2)
    sigma = 1.0 / np.sqrt(n * np.var(lnm))
    assert abs(b_hat - beta) < 3 * sigma, (b_hat, sigma)


def test_wdm_sampling_matches_suppressed_mass_function():
    m_min, m_max, m_hm = 1e6, 1e10, 1e8
    mf = SubhaloMassFunction(m_min, m_max, m_hm=m_hm, dtype=F64)
    m = mf.sample(20000, seed=5).numpy()
    Z = _Z(m_min, m_max, -1.9, m_hm)
    # KS against the quadrature CDF (independent of the code's CDF), on an interpolant
    grid = np.logspace(6, 10, 200)
    ref = _cdf_ref(grid, m_min, -1.9, m_hm, Z)
    cdf = lambda x: np.interp(np.log(x), np.log(grid), ref)  # noqa: E731
    assert stats.kstest(m, cdf).pvalue > 0.01
    # and the code's own CDF
    assert stats.kstest(m, lambda x: mf.cdf(x).numpy()).pvalue > 0.01


def test_wdm_population_counts_follow_the_suppression():
    """Binned WDM / CDM subhalo counts of populations with the same CDM normalization
    follow the Lovell (2020) suppression, and the total ratio is its CDM average."""
    common = dict(m_min=1e6, m_max=1e10, n_max=100, r_max=1.0, n_mean=60.0, dtype=F64)
    cdm = SubhaloPopulation(**common)
    wdm = SubhaloPopulation(m_hm=1e8, **common)
    edges = np.logspace(6, 10, 9)
    n_draw = 800
    counts = {}
    for name, pop, seed in (("cdm", cdm, 1), ("wdm", wdm, 2)):
        s = pop.sample(n_draw, seed=seed)
        mass = s["mass"].numpy()[s["mask"].numpy()]
        counts[name] = np.histogram(mass, edges)[0]
    # expected counts per bin: N_CDM * int_bin m^beta S / Zc
    Zc = _Z(1e6, 1e10, -1.9, 0.0)
    exp_c = np.array([_Z(a, b, -1.9, 0.0) for a, b in zip(edges[:-1], edges[1:])]) / Zc
    exp_w = np.array([_Z(a, b, -1.9, 1e8) for a, b in zip(edges[:-1], edges[1:])]) / Zc
    for name, expect in (("cdm", exp_c), ("wdm", exp_w)):
        mu = n_draw * 60.0 * expect
        chi2 = np.sum((counts[name] - mu) ** 2 / mu)
        assert stats.chi2.sf(chi2, len(mu)) > 1e-3, (name, counts[name], mu)
    # the expected WDM number is the CDM one times the mean suppression
    assert abs(float(wdm.expected_number()) / 60.0 - exp_w.sum()) < 1e-10
    assert abs(float(wdm.mean_suppression()) - exp_w.sum()) < 1e-10


def test_wdm_suppression_function():
    m = np.array([1e6, 1e8, 1e10])
    np.testing.assert_allclose(wdm_suppression(m, 1e8).numpy(),
                               (1 + (4.2e8 / m) ** 2.5) ** -0.2, rtol=1e-6)
    np.testing.assert_allclose(wdm_suppression(m, 0.0).numpy(), 1.0)
    # at m = alpha m_hm the suppression is 2^gamma
    assert abs(float(wdm_suppression(4.2e8, 1e8)) - 2 ** -0.2) < 1e-6


# ----------------------------------------------------------------- positions
def test_positions_uniform_in_annulus():
    d = UniformAnnulus(1.5, r_min=0.5, center_x=0.2, center_y=-0.1, dtype=F64)
    xy = d.sample(20000, seed=3).numpy()
    r = np.hypot(xy[:, 0] - 0.2, xy[:, 1] + 0.1)
    assert r.min() >= 0.5 - 1e-12 and r.max() <= 1.5 + 1e-12
    assert stats.kstest(r, lambda q: (q**2 - 0.25) / (2.25 - 0.25)).pvalue > 0.01
    phi = np.arctan2(xy[:, 1] + 0.1, xy[:, 0] - 0.2)
    assert stats.kstest(phi, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 0.01
    lp = d.log_prob([[1.2, -0.1], [0.2, -0.1], [5.0, 0.0]]).numpy()
    assert abs(lp[0] + np.log(np.pi * 2.0)) < 1e-14 and np.all(np.isneginf(lp[1:]))
    # a disc
    disc = UniformAnnulus(2.0, dtype=F64).sample(20000, seed=4).numpy()
    assert stats.kstest(np.hypot(*disc.T), lambda q: q**2 / 4).pvalue > 0.01


# ------------------------------------------------------------------ numbers
def test_counts_are_poisson():
    lam = 12.0
    pop = SubhaloPopulation(1e6, 1e10, n_max=64, r_max=1.0, n_mean=lam)
    assert float(pop.truncation_probability()) == pytest.approx(stats.poisson.sf(64, lam),
                                                                rel=1e-4)
    n = tf.reduce_sum(tf.cast(pop.sample(4000, seed=9)["mask"], tf.int32), -1).numpy()
    # standard errors: mean sqrt(lam / N) = 0.055; variance ~ sqrt(2 lam^2 / N) = 0.27
    assert abs(n.mean() - lam) < 4 * np.sqrt(lam / 4000)
    assert abs(n.var() - lam) < 4 * np.sqrt((2 * lam**2 + lam) / 4000)


def test_truncated_poisson_when_n_max_is_small():
    lam, n_max = 5.0, 3
    with pytest.warns(UserWarning, match="truncated"):
        pop = SubhaloPopulation(1e6, 1e10, n_max=n_max, r_max=1.0, n_mean=lam, dtype=F64)
    p_trunc = stats.poisson.pmf(np.arange(n_max + 1), lam) / stats.poisson.cdf(n_max, lam)
    np.testing.assert_allclose(np.exp(pop.count_distribution.log_prob(np.arange(4)).numpy()),
                               p_trunc, rtol=1e-12)
    assert float(pop.truncation_probability()) == pytest.approx(stats.poisson.sf(3, 5.0),
                                                                rel=1e-12)
    n = tf.reduce_sum(tf.cast(pop.sample(4000, seed=2)["mask"], tf.int32), -1).numpy()
    obs = np.bincount(n, minlength=4)
    chi2 = np.sum((obs - 4000 * p_trunc) ** 2 / (4000 * p_trunc))
    assert stats.chi2.sf(chi2, 3) > 1e-3


def test_normalizations_kappa_sub_and_sigma_sub():
    lc = LensCosmology(0.5, 2.0)
    m_min, m_max, beta = 1e6, 1e10, -1.9
    area = np.pi * (1.5**2 - 0.5**2)
    # kappa_sub: N = kappa Sigma_crit_angle A / <m>, <m> = int m^(beta+1) / int m^beta
    mean_m = ((m_max ** (beta + 2) - m_min ** (beta + 2)) / (beta + 2)
              / ((m_max ** (beta + 1) - m_min ** (beta + 1)) / (beta + 1)))
    pop = SubhaloPopulation(m_min, m_max, n_max=512, r_max=1.5, r_min=0.5, kappa_sub=0.01,
                            lens_cosmology=lc, dtype=F64)
    expect = 0.01 * lc.sigma_crit_angle * area / mean_m
    assert float(pop.expected_number()) == pytest.approx(expect, rel=1e-12)
    # sigma_sub [1/kpc^2]: N = sigma_sub A_kpc2 int (m/1e8)^beta dm / 1e8
    pop = SubhaloPopulation(m_min, m_max, n_max=512, r_max=1.5, r_min=0.5, sigma_sub=0.02,
                            lens_cosmology=lc, dtype=F64)
    integral = 1e8 ** (-beta - 1) * (m_max ** (beta + 1) - m_min ** (beta + 1)) / (beta + 1)
    expect = 0.02 * area * lc.arcsec_to_kpc**2 * integral
    assert float(pop.expected_number()) == pytest.approx(expect, rel=1e-12)
    assert float(pop.expected_number_cdm()) == pytest.approx(expect, rel=1e-12)


# ------------------------------------------------------------------ density
def _direct_log_prob(sample, lam, n_max, m_min, m_max, beta, m_hm, area):
    mask = sample["mask"].numpy()
    n = mask.sum()
    lp = stats.poisson.logpmf(n, lam) - stats.poisson.logcdf(n_max, lam)
    Z = _Z(m_min, m_max, beta, m_hm)
    m = sample["mass"].numpy()[mask]
    lp += np.sum(np.log(m**beta * _S(m, m_hm) / Z)) - n * np.log(area)
    return lp, n


def test_log_prob_matches_direct_computation_and_masks():
    pop = SubhaloPopulation(1e6, 1e10, n_max=32, r_max=1.5, r_min=0.5, n_mean=10.0,
                            m_hm=3e7, dtype=F64)
    lam = float(pop.expected_number())
    s = pop.sample(seed=21)
    mask = s["mask"].numpy()
    n = mask.sum()
    assert 0 < n < 32 and np.all(mask[:n]) and not np.any(mask[n:])
    assert np.all(s["mass"].numpy()[~mask] == 0)
    assert np.all(s["mass"].numpy()[mask] >= 1e6)
    ref, _ = _direct_log_prob(s, lam, 32, 1e6, 1e10, -1.9, 3e7, np.pi * 2.0)
    assert abs(float(pop.log_prob(s)) - ref) < 1e-9
    # unordered = ordered + log n!
    assert abs(float(pop.log_prob(s, unordered=True)) - ref - math.lgamma(n + 1)) < 1e-9
    # padded slots are ignored whatever they hold
    junk = dict(s)
    junk["mass"] = tf.where(s["mask"], s["mass"], tf.constant(-5.0, F64))
    junk["center_x"] = tf.where(s["mask"], s["center_x"], tf.constant(np.nan, F64))
    assert float(pop.log_prob(junk)) == float(pop.log_prob(s))
    # a real subhalo outside the support has zero density
    out = dict(s)
    out["center_x"] = tf.where(tf.range(32) == 0, tf.constant(9.0, F64), s["center_x"])
    assert np.isneginf(float(pop.log_prob(out)))
    out = dict(s)
    out["mass"] = tf.where(tf.range(32) == 0, tf.constant(1e12, F64), s["mass"])
    assert np.isneginf(float(pop.log_prob(out)))
    # an empty population
    empty = {k: tf.zeros_like(v) for k, v in s.items()}
    assert abs(float(pop.log_prob(empty)) - (-lam - stats.poisson.logcdf(32, lam))) < 1e-12
    # no subhalos expected: always empty, with probability one
    none = SubhaloPopulation(1e6, 1e10, n_max=4, r_max=1.0, n_mean=0.0, dtype=F64)
    s0 = none.sample(3, seed=1)
    assert not np.any(s0["mask"].numpy()) and np.all(none.log_prob(s0).numpy() == 0.0)


def test_log_prob_integrates_to_one_on_a_tiny_case():
    """sum_n int exp(log_prob) over n <= 2 subhalos, masses and positions equals 1."""
    m_min, m_max = 1e6, 1e8
    with pytest.warns(UserWarning, match="truncated"):  # P(n > 2) = 1.7e-3: on purpose
        pop = SubhaloPopulation(m_min, m_max, n_max=2, r_max=1.0, r_min=0.4, n_mean=0.8,
                                m_hm=1e7, dtype=F64)
    # Gauss-Legendre in u = ln m (the density in u is m p(m)), 80 nodes
    xg, wg = np.polynomial.legendre.leggauss(80)
    L = np.log(m_max / m_min)
    u = 0.5 * L * (xg + 1)
    wu = 0.5 * L * wg
    m = m_min * np.exp(u)
    area = np.pi * (1.0 - 0.16)

    def lp(masses, xs):
        k = len(masses)
        mask = np.zeros(2, bool)
        mask[:k] = True
        pad = lambda v: np.concatenate([v, np.zeros(2 - k)]) if k < 2 else v  # noqa: E731
        return pop.log_prob({"mass": tf.constant(pad(np.asarray(masses, float)), F64),
                             "center_x": tf.constant(pad(np.asarray(xs, float)), F64),
                             "center_y": tf.constant(np.zeros(2), F64),
                             "mask": tf.constant(mask)}).numpy()

    total = np.exp(lp([], []))
    # n = 1: vectorized over masses (the density is constant over the annulus)
    one = pop.log_prob({"mass": tf.constant(np.stack([m, np.zeros_like(m)], -1), F64),
                        "center_x": tf.constant(np.full((80, 2), 0.7), F64),
                        "center_y": tf.zeros((80, 2), F64),
                        "mask": tf.constant(np.tile([True, False], (80, 1)))}).numpy()
    total += np.sum(wu * m * np.exp(one)) * area
    m1, m2 = np.meshgrid(m, m, indexing="ij")
    two = pop.log_prob({"mass": tf.constant(np.stack([m1, m2], -1), F64),
                        "center_x": tf.constant(np.full((80, 80, 2), 0.7), F64),
                        "center_y": tf.zeros((80, 80, 2), F64),
                        "mask": tf.ones((80, 80, 2), tf.bool)}).numpy()
    total += np.sum(np.outer(wu * m, wu * m) * np.exp(two)) * area**2
    assert abs(total - 1.0) < 1e-10
    # the position density integrates to one over the plane (polar midpoint rule)
    r = (np.arange(4000) + 0.5) * (1.5 / 4000)
    assert np.isneginf(lp([3e6], [0.2])) and np.isfinite(lp([3e6], [0.7]))  # hole: r < 0.4
    pos = pop.position_distribution.log_prob(np.stack([r, 0 * r], -1)).numpy()
    assert abs(np.sum(np.exp(pos) * 2 * np.pi * r) * (1.5 / 4000) - 1) < 2e-3  # midpoint


# ---------------------------------------------------------- jit, grads, batch
def test_jit_sampling_and_scoring():
    pop = SubhaloPopulation(1e6, 1e10, n_max=16, r_max=1.5, r_min=0.5, n_mean=6.0, m_hm=1e7)

    @tf.function(jit_compile=True)
    def draw_and_score(seed):
        s = pop.sample(4, seed=seed)
        return s, pop.log_prob(s)

    s1, lp1 = draw_and_score(tf.constant([3, 4]))
    s2, _ = draw_and_score(tf.constant([3, 4]))
    s3, _ = draw_and_score(tf.constant([5, 4]))
    assert s1["mass"].shape == (4, 16) and s1["mask"].dtype == tf.bool
    np.testing.assert_array_equal(s1["mass"].numpy(), s2["mass"].numpy())  # deterministic
    assert not np.array_equal(s1["mass"].numpy(), s3["mass"].numpy())
    np.testing.assert_allclose(lp1.numpy(), pop.log_prob(s1).numpy(), rtol=1e-5)
    assert np.all(np.isfinite(lp1.numpy()))


def test_gradients_with_respect_to_population_parameters():
    n_mean = tf.Variable(8.0, dtype=F64)
    beta = tf.Variable(-1.9, dtype=F64)
    m_hm = tf.Variable(0.0, dtype=F64)  # CDM: the gradient must still be finite
    pop = SubhaloPopulation(1e6, 1e10, n_max=64, r_max=1.5, n_mean=n_mean, beta=beta,
                            m_hm=m_hm, dtype=F64)
    s = pop.sample(seed=1)
    n = float(tf.reduce_sum(tf.cast(s["mask"], F64)))
    with tf.GradientTape() as tape:
        lp = pop.log_prob(s)
    g_n, g_b, g_h = tape.gradient(lp, [n_mean, beta, m_hm])
    # d/dlambda [n ln lambda - lambda] = n / lambda - 1 (truncation at 64 negligible)
    assert abs(float(g_n) - (n / 8.0 - 1.0)) < 1e-9
    assert np.isfinite(float(g_b)) and np.isfinite(float(g_h))
    # WDM: gradient in m_hm against central differences
    m_hm.assign(1e8)

    def f(v):
        p = SubhaloPopulation(1e6, 1e10, n_max=64, r_max=1.5, n_mean=8.0, m_hm=v, dtype=F64)
        return float(p.log_prob(s))

    with tf.GradientTape() as tape:
        lp = pop.log_prob(s)
    g = float(tape.gradient(lp, m_hm))
    fd = (f(1e8 * (1 + 1e-5)) - f(1e8 * (1 - 1e-5))) / (2e3)
    assert abs(g - fd) < 1e-5 * abs(fd) + 1e-14


def test_batched_parameters():
    m_hm = np.array([0.0, 1e7, 1e9])
    pop = SubhaloPopulation(1e6, 1e10, n_max=48, r_max=1.5, n_mean=10.0, m_hm=m_hm, dtype=F64)
    assert pop.batch_shape == (3,)
    s = pop.sample(2, seed=3)
    assert s["mass"].shape == (2, 3, 48)
    lp = pop.log_prob(s)
    assert lp.shape == (2, 3)
    for i, v in enumerate(m_hm):
        single = SubhaloPopulation(1e6, 1e10, n_max=48, r_max=1.5, n_mean=10.0, m_hm=v,
                                   dtype=F64)
        assert float(single.expected_number()) == pytest.approx(
            float(pop.expected_number()[i]), rel=1e-12)
        sub = {k: v_[:, i] for k, v_ in s.items()}
        np.testing.assert_allclose(single.log_prob(sub).numpy(), lp[:, i].numpy(), rtol=1e-12)
    # the WDM populations are smaller on average
    assert np.all(np.diff(pop.expected_number().numpy()) < 0)


# ------------------------------------------------------------------ lensing
def test_lens_kwargs_values_and_masking():
    lc = LensCosmology(0.5, 2.0)
    pop = SubhaloPopulation(1e6, 1e10, n_max=16, r_max=1.5, r_min=0.5, n_mean=5.0, dtype=F64)
    s = pop.sample(seed=4)
    mask = s["mask"].numpy()
    kw = pop.to_lens_kwargs(s, lc, "TNFW", theta_E_host=1.1)
    m = s["mass"].numpy()[mask]
    from tfstronglens.observation import Duffy08Concentration

    c = Duffy08Concentration(h=lc.h)(m, 0.5)
    Rs, aRs = lc.nfw_physical2angle(m, c)
    r = np.hypot(s["center_x"].numpy()[mask], s["center_y"].numpy()[mask])
    rt = truncation_radius_isothermal(m, r, 1.1, lc)
    np.testing.assert_allclose(kw["Rs"].numpy()[mask], Rs, rtol=1e-12)
    np.testing.assert_allclose(kw["alpha_Rs"].numpy()[mask], aRs, rtol=1e-12)
    np.testing.assert_allclose(kw["r_trunc"].numpy()[mask], rt, rtol=1e-12)
    assert np.all(kw["alpha_Rs"].numpy()[~mask] == 0)
    assert np.all(kw["Rs"].numpy() > 0) and np.all(kw["r_trunc"].numpy() > 0)
    # NFW with a fixed concentration, point masses
    kw = subhalo_lens_kwargs(s, lc, "NFW", concentration=15.0)
    np.testing.assert_allclose(kw["Rs"].numpy()[mask], lc.nfw_physical2angle(m, 15.0)[0],
                               rtol=1e-12)
    assert "r_trunc" not in kw
    kw = subhalo_lens_kwargs(s, lc, "point_mass")
    np.testing.assert_allclose(kw["theta_E"].numpy()[mask], lc.point_mass_theta_E(m),
                               rtol=1e-12)
    assert np.all(kw["theta_E"].numpy()[~mask] ** 2 < 1e-300)
    ax, _ = tsl.PointMass(dtype=F64).deflection(0.3, 0.2, **{k: v[~mask] for k, v in
                                                              kw.items()})
    assert np.all(np.abs(ax.numpy()) < 1e-290)
    with pytest.raises(ValueError, match="theta_E_host"):
        subhalo_lens_kwargs(s, lc, "TNFW")
    with pytest.raises(ValueError, match="profile"):
        subhalo_lens_kwargs(s, lc, "NOPE")
    with pytest.raises(ValueError, match="lens_cosmology"):
        subhalo_lens_kwargs(s, None)


def test_simulator_with_n_max_components_and_batched_deflection():
    lc = LensCosmology(0.5, 2.0)
    n_max = 6
    pop = SubhaloPopulation(1e8, 1e10, n_max=n_max, r_max=1.4, r_min=0.6, n_mean=1.5)
    s = pop.sample(seed=12)
    n = int(tf.reduce_sum(tf.cast(s["mask"], tf.int32)))
    assert 0 < n < n_max
    kw_list = pop.to_lens_kwargs(s, lc, "TNFW", theta_E_host=1.0, as_list=True)
    assert len(kw_list) == n_max and kw_list[0]["Rs"].shape == ()
    grid = tsl.PixelGrid(20, 0.15)
    src = [dict(amp=10.0, R_sersic=0.3, n_sersic=1.5, e1=0.0, e2=0.1)]
    host = dict(theta_E=1.0, e1=0.1, e2=0.0)

    def image(k):
        sim = tsl.Simulator(grid, lens=[tsl.SIE()] + [tsl.TNFW()] * k,
                            source=[tsl.SersicEllipse()], jit_compile=False)
        return sim(lens=[host] + kw_list[:k], source=src).numpy()

    full, real_only = image(n_max), image(n)
    np.testing.assert_allclose(full, real_only, rtol=0, atol=1e-6 * full.max())
    # one batched call gives the sum of the per-component deflections
    x, y = grid.coordinates()
    kw = pop.to_lens_kwargs(s, lc, "TNFW", theta_E_host=1.0)
    ax, ay = subhalo_deflection(tsl.TNFW(), x, y, kw)
    assert ax.shape == x.shape
    assert np.abs(ax.numpy()).max() > 1e-3  # the real subhalos do deflect (arcsec)
    parts = [tsl.TNFW().deflection(x, y, **k) for k in kw_list]
    np.testing.assert_allclose(ax.numpy(), sum(p[0] for p in parts).numpy(), atol=1e-7)
    np.testing.assert_allclose(ay.numpy(), sum(p[1] for p in parts).numpy(), atol=1e-7)
    # batched populations: [B, n_max] kwargs give [B, H, W] deflections, finite gradients
    sb = pop.sample(3, seed=2)
    mass = tf.Variable(sb["mass"])
    with tf.GradientTape() as tape:
        kwb = pop.to_lens_kwargs(dict(sb, mass=mass), lc, "TNFW", theta_E_host=1.0)
        axb, _ = subhalo_deflection(tsl.TNFW(), x, y, kwb)
        loss = tf.reduce_sum(axb**2)
    assert axb.shape == (3,) + tuple(x.shape)
    g = tape.gradient(loss, mass).numpy()
    assert np.all(np.isfinite(g)) and np.all(g[~sb["mask"].numpy()] == 0)


# ------------------------------------------------------------------ bad input
def test_bad_input():
    base = dict(m_min=1e6, m_max=1e10, n_max=16, r_max=1.0, n_mean=5.0)

    def make(**kw):
        return SubhaloPopulation(**dict(base, **kw))

    with pytest.raises(ValueError, match="m_max must be larger than m_min"):
        make(m_min=1e10, m_max=1e10)
    with pytest.raises(ValueError, match="m_min must be positive"):
        make(m_min=0.0)
    with pytest.raises(ValueError, match="m_min must be positive"):
        make(m_min=-1.0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_max"):
            make(n_max=bad)
    with pytest.raises(ValueError, match="n_mean must be non-negative"):
        make(n_mean=-1.0)
    with pytest.raises(ValueError, match="m_hm must be non-negative"):
        make(m_hm=-1e8)
    with pytest.raises(ValueError, match="exactly one"):
        make(kappa_sub=0.01)
    with pytest.raises(ValueError, match="exactly one"):
        make(n_mean=None)
    with pytest.raises(ValueError, match="lens_cosmology"):
        make(n_mean=None, kappa_sub=0.01)
    with pytest.raises(ValueError, match="r_max must be larger than r_min"):
        make(r_min=1.0)
    with pytest.raises(ValueError, match="r_min must be non-negative"):
        make(r_min=-0.5)
    with pytest.raises(ValueError, match="wdm_gamma"):
        make(wdm_gamma=0.3)
    with pytest.raises(ValueError, match="wdm_beta"):
        make(wdm_beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        make(beta=float("nan"))
    with pytest.raises(ValueError, match="num_proposals"):
        make(num_proposals=0)
    with pytest.raises(ValueError, match="m_max must be larger than m_min"):
        SubhaloMassFunction(1e8, 1e7)
    pop = make()
    s = pop.sample(seed=1)
    with pytest.raises(ValueError, match="missing"):
        pop.log_prob({"mass": s["mass"]})
    with pytest.warns(UserWarning, match="n_max = 8"):
        other = SubhaloPopulation(**dict(base, n_max=8))
    with pytest.raises(ValueError, match="n_max"):
        other.log_prob(s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning for a roomy n_max
        make(n_mean=2.0)
