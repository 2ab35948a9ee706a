"""LensCosmology (distances, unit conversions) and halo structure (concentration, tidal
truncation), checked against lenstronomy's LensCosmo and hand-computed reference values."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import lenstronomy_or_skip
from tfstronglens.observation import (
    Duffy08Concentration,
    LensCosmology,
    isothermal_enclosed_mass,
    tidal_radius,
    truncation_radius_isothermal,
)
from tfstronglens.observation.cosmology import ARCSEC_RAD, C_SI, G_SI, M_SUN_KG, MPC_M

astropy_cosmology = pytest.importorskip("astropy.cosmology")

REDSHIFTS = [(0.1, 0.5), (0.3, 1.0), (0.5, 2.0), (0.9, 1.1), (1.5, 4.0)]


def _cosmologies():
    ac = astropy_cosmology
    return [
        ac.Planck18,
        ac.FlatLambdaCDM(H0=70.0, Om0=0.3),
        ac.LambdaCDM(H0=65.0, Om0=0.35, Ode0=0.6),  # open, to exercise the curvature
    ]


def _lenstronomy(z_l, z_s, cosmo):
    lenstronomy_or_skip()
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(z_l, z_s, cosmo=cosmo)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a / b - 1.0))


# ------------------------------------------------------------------- distances
@pytest.mark.parametrize("cosmo_index", range(3))
def test_distances_and_critical_density_match_lenstronomy(cosmo_index):
    cosmo = _cosmologies()[cosmo_index]
    worst = 0.0
    for z_l, z_s in REDSHIFTS:
        lc, ref = LensCosmology(z_l, z_s, cosmo), _lenstronomy(z_l, z_s, cosmo)
        pairs = [(lc.D_d, ref.dd), (lc.D_s, ref.ds), (lc.D_ds, ref.dds),
                 (lc.sigma_crit, ref.sigma_crit), (lc.sigma_crit_angle, ref.sigma_crit_angle),
                 (lc.arcsec_to_kpc, ref.arcsec2phys_lens(1.0) * 1e3)]
        worst = max(worst, max(_rel(a, b) for a, b in pairs))
    assert worst < 1e-12


def test_default_is_planck18_and_names_resolve():
    lc = LensCosmology(0.5, 2.0)
    assert lc.cosmology is astropy_cosmology.Planck18
    assert LensCosmology(0.5, 2.0, "WMAP9").cosmology is astropy_cosmology.WMAP9
    # flat universe: comoving distances add, D_ds (1 + z_s) = D_s (1 + z_s) - D_d (1 + z_l)
    assert _rel(lc.D_ds * 3.0, lc.D_s * 3.0 - lc.D_d * 1.5) < 1e-10
    # Sigma_crit from its definition with astropy's own (CODATA 2018 / IAU) constants:
    # agrees to the 4e-4 by which lenstronomy's constants (used here) differ from them
    from astropy import constants as const
    from astropy import units as u

    sc = (const.c**2 / (4 * np.pi * const.G) * lc.D_s * u.Mpc / (lc.D_d * lc.D_ds * u.Mpc**2))
    assert _rel(lc.sigma_crit, sc.to_value(u.Msun / u.Mpc**2)) < 4e-4


# --------------------------------------------------------------------- NFW
@pytest.mark.parametrize("cosmo_index", [0, 2])
def test_nfw_physical2angle_matches_lenstronomy(cosmo_index):
    cosmo = _cosmologies()[cosmo_index]
    M = np.logspace(5, 15, 11)[:, None]
    c = np.array([0.5, 1.0, 3.0, 7.5, 15.0, 40.0])[None, :]
    worst = 0.0
    for z_l, z_s in REDSHIFTS:
        lc, ref = LensCosmology(z_l, z_s, cosmo), _lenstronomy(z_l, z_s, cosmo)
        Rs, aRs = lc.nfw_physical2angle(M, c)
        Rs_ref, aRs_ref = ref.nfw_physical2angle(M, c)
        worst = max(worst, _rel(Rs, Rs_ref), _rel(aRs, aRs_ref))
    assert worst < 1e-12  # measured 3e-15


def test_nfw_angle2physical_inverts_exactly_and_matches_lenstronomy():
    lc, ref = LensCosmology(0.5, 2.0), _lenstronomy(0.5, 2.0, astropy_cosmology.Planck18)
    M = np.logspace(5, 15, 21)[:, None]
    c = np.array([0.05, 0.5, 2.0, 8.0, 25.0, 100.0, 1e3])[None, :]
    Rs, aRs = lc.nfw_physical2angle(M, c)
    M2, c2 = lc.nfw_angle2physical(Rs, aRs)
    assert _rel(M2, M + 0 * c) < 1e-12 and _rel(c2, c + 0 * M) < 1e-12
    # lenstronomy interpolates c(rho0) with a cubic spline on 0.1 < c < 30 (~1e-7 there)
    c_in = np.array([[2.0, 8.0, 25.0]])
    Rs, aRs = lc.nfw_physical2angle(M, c_in)
    _, _, c_ref, _, M_ref = ref.nfw_angle2physical(Rs, aRs)
    M3, c3 = lc.nfw_angle2physical(Rs, aRs)
    assert _rel(c3, c_ref) < 1e-5 and _rel(M3, M_ref) < 1e-5


def test_nfw_alpha_Rs_is_the_deflection_at_Rs():
    """alpha_Rs is the NFW profile's deflection at Rs: M2D(<Rs) = pi Rs alpha_Rs Sigma."""
    lc = LensCosmology(0.4, 1.5)
    M, c = 3e11, 9.0
    Rs, aRs = lc.nfw_physical2angle(M, c)
    rho0 = 200.0 / 3.0 * lc.rho_crit * c**3 / (np.log1p(c) - c / (1 + c))
    rs_mpc = Rs * lc.D_d * ARCSEC_RAD
    # projected NFW mass inside Rs: 4 pi rho0 rs^3 (ln(1/2) + 1)
    m2d = 4 * np.pi * rho0 * rs_mpc**3 * (1 - np.log(2.0))
    assert _rel(m2d, np.pi * Rs * aRs * lc.sigma_crit_angle) < 1e-12
    # and M200 = 4 pi rho0 Rs^3 m(c), r200 = c Rs encloses 200 rho_crit
    r200 = c * rs_mpc
    assert _rel(M, 4 / 3 * np.pi * r200**3 * 200 * lc.rho_crit) < 1e-12


# -------------------------------------------------- point mass, SIS, Einstein mass
def test_point_mass_sis_and_einstein_mass():
    lenstronomy_or_skip()
    M = np.logspace(4, 13, 10)
    theta = np.linspace(0.01, 3.0, 7)
    sigma = np.array([50.0, 150.0, 250.0, 400.0])
    for cosmo in _cosmologies()[:2]:
        for z_l, z_s in REDSHIFTS:
            lc, ref = LensCosmology(z_l, z_s, cosmo), _lenstronomy(z_l, z_s, cosmo)
            # theta_E^2 = 4 G M D_ds / (c^2 D_d D_s) from the constants directly
            tE = np.sqrt(4 * G_SI * M * M_SUN_KG / C_SI**2 * lc.D_ds
                         / (lc.D_d * lc.D_s * MPC_M)) / ARCSEC_RAD
            assert _rel(lc.point_mass_theta_E(M), tE) < 1e-12
            assert _rel(lc.point_mass_mass(lc.point_mass_theta_E(M)), M) < 1e-13
            assert _rel(lc.einstein_mass(theta), ref.mass_in_theta_E(theta)) < 1e-12
            assert _rel(lc.sis_sigma_v2theta_E(sigma), ref.sis_sigma_v2theta_E(sigma)) < 1e-12
            assert _rel(lc.sis_theta_E2sigma_v(theta), ref.sis_theta_E2sigma_v(theta)) < 1e-12
            assert _rel(lc.sis_theta_E2sigma_v(lc.sis_sigma_v2theta_E(sigma)), sigma) < 1e-13


def test_reference_values():
    lc = LensCosmology(0.5, 2.0)
    # a 250 km/s SIS at z = 0.5 lensing z = 2 (Planck18): ~1.14"; 1" ~ 6.29 kpc
    assert abs(lc.sis_sigma_v2theta_E(250.0) - 1.1415515507) < 1e-8
    assert abs(lc.arcsec_to_kpc - 1297.611089858 * 1e3 * ARCSEC_RAD) < 1e-8
    assert abs(lc.arcsec_to_kpc - 6.291) < 1e-3


# ---------------------------------------------------------- tensors, jit, grads
def test_tensor_in_tensor_out_and_float32_precision():
    lc = LensCosmology(0.5, 2.0)
    M = np.logspace(6, 14, 9)
    c = np.linspace(3.0, 30.0, 9)
    Rs64, a64 = lc.nfw_physical2angle(M, c)
    Rs32, a32 = lc.nfw_physical2angle(tf.constant(M, tf.float32), tf.constant(c, tf.float32))
    assert Rs32.dtype == tf.float32 and a32.dtype == tf.float32
    assert _rel(Rs32.numpy(), Rs64) < 2e-6 and _rel(a32.numpy(), a64) < 2e-6
    Rs_t, a_t = lc.nfw_physical2angle(tf.constant(M, tf.float64), tf.constant(c, tf.float64))
    # float64 tensors: rounding only (tf.pow(M, 1/3) vs np.cbrt)
    assert _rel(Rs_t.numpy(), Rs64) < 1e-14 and _rel(a_t.numpy(), a64) < 1e-14
    # mixed: Python float and tensor
    out = lc.nfw_physical2angle(1e10, tf.constant([5.0, 10.0], tf.float64))
    assert isinstance(out[0], tf.Tensor)
    M2, c2 = lc.nfw_angle2physical(tf.constant(Rs64, tf.float32), tf.constant(a64, tf.float32))
    assert M2.dtype == tf.float32 and _rel(M2.numpy(), M) < 1e-5 and _rel(c2.numpy(), c) < 1e-5
    for f in (lc.point_mass_theta_E, lc.einstein_mass, lc.sis_sigma_v2theta_E):
        y = f(tf.constant([1.0, 2.0], tf.float32))
        assert y.dtype == tf.float32
        np.testing.assert_allclose(y.numpy(), f(np.array([1.0, 2.0])), rtol=1e-6)
    with pytest.raises(ValueError, match="dtypes"):
        lc.nfw_physical2angle(tf.constant(1e10, tf.float32), tf.constant(5.0, tf.float64))


def test_jit_and_gradients():
    lc = LensCosmology(0.5, 2.0)

    @tf.function(jit_compile=True)
    def f(M, c, s):
        Rs, a = lc.nfw_physical2angle(M, c)
        return Rs, a, lc.point_mass_theta_E(M), lc.sis_sigma_v2theta_E(s), lc.einstein_mass(c)

    M = tf.constant([1e8, 1e12], tf.float64)
    c = tf.constant([12.0, 6.0], tf.float64)
    s = tf.constant([100.0, 300.0], tf.float64)
    jit = f(M, c, s)
    eager = f.python_function(M, c, s)
    for a, b in zip(jit, eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([M, c, s])
        Rs, a, tE, tS, _ = f.python_function(M, c, s)
    # Rs ~ M^(1/3)/c, alpha_Rs ~ M^(2/3) c/m(c), theta_E ~ M^(1/2), theta_SIS ~ sigma^2
    np.testing.assert_allclose(tape.gradient(Rs, M), Rs / (3 * M), rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(Rs, c), -Rs / c, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(a, M), 2 * a / (3 * M), rtol=1e-12)
    cn = c.numpy()
    mc = np.log1p(cn) - cn / (1 + cn)
    dlog_a_dc = 1 / cn - cn / (1 + cn) ** 2 / mc
    np.testing.assert_allclose(tape.gradient(a, c), a * dlog_a_dc, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(tE, M), tE / (2 * M), rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(tS, s), 2 * tS / s, rtol=1e-12)
    # the inverse carries the implicit derivative (one Newton step): finite differences
    Rs0, a0 = lc.nfw_physical2angle(1e11, 8.0)
    a_t = tf.constant(a0, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(a_t)
        _, c_t = lc.nfw_angle2physical(tf.constant(Rs0, tf.float64), a_t)
    h = 1e-6 * a0
    fd = (lc.nfw_angle2physical(Rs0, a0 + h)[1] - lc.nfw_angle2physical(Rs0, a0 - h)[1]) / (2 * h)
    np.testing.assert_allclose(tape.gradient(c_t, a_t).numpy(), fd, rtol=1e-7)


# ----------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="z_source"):
        LensCosmology(0.5, 0.5)
    with pytest.raises(ValueError, match="z_source"):
        LensCosmology(1.0, 0.5)
    with pytest.raises(ValueError, match="z_lens"):
        LensCosmology(-0.1, 1.0)
    with pytest.raises(ValueError, match="z_lens must be a finite, positive"):
        LensCosmology(0.0, 1.0)  # D_d = 0: no lensing
    with pytest.raises(ValueError, match="z_lens"):
        LensCosmology(float("nan"), 1.0)
    with pytest.raises(ValueError, match="z_source"):
        LensCosmology(0.5, "2")
    with pytest.raises(ValueError, match="cosmology"):
        LensCosmology(0.5, 2.0, cosmology={"H0": 70})
    with pytest.raises(ValueError, match="cosmology"):
        LensCosmology(0.5, 2.0, cosmology="NotACosmology")
    lc = LensCosmology(0.5, 2.0)
    with pytest.raises(ValueError, match="M200"):
        lc.nfw_physical2angle(-1e10, 5.0)
    with pytest.raises(ValueError, match="c must be positive"):
        lc.nfw_physical2angle(1e10, np.array([5.0, 0.0]))
    with pytest.raises(ValueError, match="M200"):
        lc.nfw_physical2angle(np.nan, 5.0)
    with pytest.raises(ValueError, match="alpha_Rs"):
        lc.nfw_angle2physical(1.0, 0.0)
    with pytest.raises(ValueError, match="Rs"):
        lc.nfw_angle2physical(tf.constant(-1.0), 0.1)
    with pytest.raises(ValueError, match="sigma_v"):
        lc.sis_sigma_v2theta_E(-100.0)
    with pytest.raises(ValueError, match="theta_E"):
        lc.einstein_mass("one")
    with pytest.raises(ValueError, match="M must be non-negative"):
        lc.point_mass_theta_E(-1.0)


# ===================================================================== halos
def test_duffy08_reference_values_and_scalings():
    cm = Duffy08Concentration(h=0.7)
    # at the pivot mass (2e12 M_sun/h = 2e12/0.7 M_sun) and z = 0, c = A = 5.71
    assert abs(cm(2e12 / 0.7, 0.0) - 5.71) < 1e-12
    # hand-computed: 5.71 * (1e10 * 0.7 / 2e12)^-0.084 * (1 + 0.5)^-0.47 = 7.5888...
    ref = 5.71 * (0.0035 ** -0.084) * (1.5 ** -0.47)
    assert abs(ref - 7.58877) < 1e-4
    assert abs(cm(1e10, 0.5) - ref) < 1e-12
    M = np.logspace(6, 15, 10)
    np.testing.assert_allclose(cm(10 * M, 0.3) / cm(M, 0.3), 10 ** -0.084, rtol=1e-13)
    np.testing.assert_allclose(cm(M, 1.0) / cm(M, 0.0), 2 ** -0.47, rtol=1e-13)
    # h: a larger h means a larger mass in M_sun/h, so a lower concentration
    assert cm(1e12, 0.0) < Duffy08Concentration(h=0.5)(1e12, 0.0)
    for (definition, sample), A in (
            (("vir", "full"), 7.85), (("200m", "full"), 10.14), (("200c", "relaxed"), 6.71)):
        assert abs(Duffy08Concentration(0.7, definition, sample)(2e12 / 0.7, 0.0) - A) < 1e-12
    # default h is Planck18's
    assert Duffy08Concentration().h == pytest.approx(0.6766)


def test_duffy08_scatter_tensors_and_grad():
    cm = Duffy08Concentration(h=0.7)
    d = cm.distribution(1e9, 0.5, dtype=tf.float64)
    assert abs(float(d.quantile(0.5)) - cm(1e9, 0.5)) < 1e-10  # median = the relation
    x = np.log10(d.sample(20000, seed=7).numpy())
    # sigma(log10 c) = 0.15 (Duffy et al. 2008 full sample); the sample std has a
    # standard error of 0.15 / sqrt(2 n) = 7.5e-4, so 3e-3 is 4 standard errors
    assert abs(np.std(x) - 0.15) < 3e-3
    assert abs(np.mean(x) - np.log10(cm(1e9, 0.5))) < 4 * 0.15 / np.sqrt(20000)
    M = tf.constant([1e8, 1e12], tf.float32)
    c = tf.function(lambda m: cm(m, 0.5), jit_compile=True)(M)
    assert c.dtype == tf.float32
    np.testing.assert_allclose(c.numpy(), cm(M.numpy().astype(float), 0.5), rtol=1e-6)
    M64 = tf.constant([1e8, 1e12], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(M64)
        c64 = cm(M64, 0.5)
    np.testing.assert_allclose(tape.gradient(c64, M64), -0.084 * c64 / M64, rtol=1e-12)
    with pytest.raises(ValueError, match="h must be"):
        Duffy08Concentration(h=0.0)
    with pytest.raises(ValueError, match="definition"):
        Duffy08Concentration(definition="500c")
    with pytest.raises(ValueError, match="M must be positive"):
        cm(0.0, 0.5)
    with pytest.raises(ValueError, match="z must be non-negative"):
        cm(1e10, -0.5)
    with pytest.raises(ValueError, match="scatter_dex"):
        cm.distribution(1e10, 0.5, scatter_dex=-0.1)


def test_tidal_radius_reference_values():
    # isothermal host (slope 1), TDS98: r (m / M)^(1/3) = 10 (1e8 / 1e11)^(1/3) = 1
    assert abs(tidal_radius(1e8, 10.0, 1e11, dlnM_dlnr=1.0) - 1.0) < 1e-14
    # with the centrifugal term (Jacobi): r (m / 2M)^(1/3) = 2^(-1/3)
    assert abs(tidal_radius(1e8, 10.0, 1e11, 1.0, centrifugal=True) - 2 ** (-1 / 3)) < 1e-14
    # point-mass host: r (m / 2M)^(1/3) (TDS98) and r (m / 3M)^(1/3) (Jacobi)
    assert abs(tidal_radius(2e8, 10.0, 1e11, 0.0) - 1.0) < 1e-14
    assert abs(tidal_radius(3e8, 10.0, 1e11, 0.0, centrifugal=True) - 1.0) < 1e-14
    with pytest.raises(ValueError, match="dlnM_dlnr"):
        tidal_radius(1e8, 10.0, 1e11, dlnM_dlnr=2.0)
    with pytest.raises(ValueError, match="m must be positive"):
        tidal_radius(-1e8, 10.0, 1e11)
    with pytest.raises(ValueError, match="r3d"):
        tidal_radius(1e8, -1.0, 1e11)


def test_isothermal_host_mass_and_truncation():
    lc = LensCosmology(0.5, 2.0)
    theta_E, r = 1.2, np.array([0.3, 1.0, 2.5])
    M = isothermal_enclosed_mass(r, theta_E, lc.sigma_crit_angle)
    # independent: M(<r) = 2 sigma_v^2 r / G for an SIS of velocity dispersion sigma_v
    sigma = lc.sis_theta_E2sigma_v(theta_E) * 1e3  # m/s
    r_m = r * ARCSEC_RAD * lc.D_d * MPC_M
    np.testing.assert_allclose(M, 2 * sigma**2 * r_m / G_SI / M_SUN_KG, rtol=1e-12)
    # the projected mass inside theta_E is pi theta_E^2 Sigma_crit; the 3D mass inside
    # the same radius is smaller by 2 / pi (M_2D(<R) = pi/2 M_3D(<R) for an SIS)
    M_E = isothermal_enclosed_mass(theta_E, theta_E, lc.sigma_crit_angle)
    assert abs(lc.einstein_mass(theta_E) / M_E - np.pi / 2) < 1e-12
    m = np.array([1e6, 1e8, 1e10])[:, None]
    rt = truncation_radius_isothermal(m, r, theta_E, lc)
    np.testing.assert_allclose(rt, tidal_radius(m, r, M, 1.0), rtol=1e-13)
    # hand-computed: (1e8 * 1^2 / (2 * Sigma_crit_angle * 1.2))^(1/3), Sigma ~ 8.006e10
    assert abs(lc.sigma_crit_angle / 8.0061190070e10 - 1) < 1e-10
    ref = (1e8 / (2 * 8.0061190070e10 * 1.2)) ** (1 / 3)  # = 0.0805...
    assert abs(rt[1, 1] - ref) < 1e-9 and abs(ref - 0.08048) < 1e-4
    # scalings m^(1/3), r^(2/3), centrifugal 2^(-1/3)
    np.testing.assert_allclose(rt[1:] / rt[:-1], 100 ** (1 / 3), rtol=1e-13)
    np.testing.assert_allclose(truncation_radius_isothermal(1e8, 4 * r, theta_E, lc)
                               / truncation_radius_isothermal(1e8, r, theta_E, lc),
                               16 ** (1 / 3), rtol=1e-13)
    np.testing.assert_allclose(truncation_radius_isothermal(m, r, theta_E, lc, centrifugal=True),
                               rt * 2 ** (-1 / 3), rtol=1e-13)
    # tensors: dtype kept, jit, gradient d r_t / d m = r_t / (3 m)
    m_t = tf.constant([1e7, 1e9], tf.float64)

    @tf.function(jit_compile=True)
    def f(m):
        return truncation_radius_isothermal(m, tf.constant(1.5, tf.float64), 1.0, lc)

    with tf.GradientTape() as tape:
        tape.watch(m_t)
        rt_t = f.python_function(m_t)
    np.testing.assert_allclose(f(m_t).numpy(), rt_t.numpy(), rtol=1e-14)
    np.testing.assert_allclose(tape.gradient(rt_t, m_t), rt_t / (3 * m_t), rtol=1e-12)
    assert truncation_radius_isothermal(tf.constant(1e8), 1.0, 1.0, lc).dtype == tf.float32
    with pytest.raises(ValueError, match="lens_cosmology"):
        truncation_radius_isothermal(1e8, 1.0, 1.0, None)
    with pytest.raises(ValueError, match="theta_E"):
        truncation_radius_isothermal(1e8, 1.0, 0.0, lc)
