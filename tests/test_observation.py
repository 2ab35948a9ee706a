"""MoffatPSF, PixelPSF.from_fits, Observation (units, noise, likelihood, S/N) and the
instrument presets."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, optimize
from scipy.signal import fftconvolve

from conftest import lenstronomy_or_skip
from tfstronglens.io.fits import write_fits
from tfstronglens.lensing import GaussianPSF, MoffatPSF, PixelGrid, PixelPSF, Simulator
from tfstronglens.lensing.psf import psf_from_config
from tfstronglens.observation import INSTRUMENTS, Observation, get_instrument, instrument_names

F64 = tf.float64


# ============================================================================ MoffatPSF
@pytest.mark.parametrize("beta", [1.5, 2.5, 4.765, 10.0])
def test_moffat_profile_fwhm_normalization_and_encircled_energy(beta):
    psf = MoffatPSF(0.7, beta=beta)
    # half maximum exactly at r = fwhm / 2
    assert psf.profile(0.35) / psf.profile(0.0) == pytest.approx(0.5, rel=1e-13)
    total, _ = integrate.quad(lambda r: 2 * np.pi * r * psf.profile(r), 0, np.inf,
                              epsabs=0, epsrel=1e-12, limit=200)
    assert total == pytest.approx(1.0, rel=1e-9)
    for radius in (0.1, 0.5, 2.0):
        ee, _ = integrate.quad(lambda r: 2 * np.pi * r * psf.profile(r), 0, radius,
                               epsabs=0, epsrel=1e-12)
        assert psf.encircled_energy(radius) == pytest.approx(ee, rel=1e-10)


@pytest.mark.parametrize("fwhm,pixel,beta", [
    (0.7, 0.2, 3.0),      # ground based: a few pixels per FWHM
    (0.1, 0.05, 4.765),   # space: 2 pixels per FWHM
    (0.1, 0.4, 2.5),      # pixel much larger than the core (sub-cells are used)
])
def test_moffat_kernel_is_the_pixel_integral(fwhm, pixel, beta):
    psf = MoffatPSF(fwhm, beta=beta, size=7)
    raw = psf.pixel_integrals(pixel)
    c = 3
    for i, j in [(c, c), (c, c + 1), (c + 2, c - 3), (0, 0), (1, 5)]:
        x0, y0 = (j - c - 0.5) * pixel, (i - c - 0.5) * pixel
        ref, _ = integrate.dblquad(lambda y, x: psf.profile(np.hypot(x, y)), x0, x0 + pixel,
                                   y0, y0 + pixel, epsabs=1e-16, epsrel=1e-12)
        assert raw[i, j] == pytest.approx(ref, rel=1e-10)
    # the flux in the square lies between the circles inscribed in it and around it
    half = 3.5 * pixel
    assert psf.encircled_energy(half) < raw.sum() < psf.encircled_energy(half * math.sqrt(2))


@pytest.mark.parametrize("fwhm,pixel,beta,truncation", [
    (0.7, 0.2, 4.765, 3.0), (0.1, 0.05, 3.0, 3.0), (0.16, 0.1, 2.0, 5.0)])
def test_moffat_kernel_normalized_symmetric_odd(fwhm, pixel, beta, truncation):
    psf = MoffatPSF(fwhm, beta=beta, truncation=truncation)
    k = psf.kernel(pixel)
    size = 2 * math.ceil(truncation * fwhm / pixel) + 1
    assert k.shape == (size, size)
    assert k.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_array_equal(k, k[::-1, :])
    np.testing.assert_array_equal(k, k[:, ::-1])
    np.testing.assert_array_equal(k, k.T)
    assert np.all(k > 0) and np.argmax(k) == (size * size) // 2
    # flux lost by the truncation is what the encircled energy says (< 1 - EE(half-width))
    lost = 1 - psf.pixel_integrals(pixel).sum()
    assert 0 < lost < 1 - psf.encircled_energy((size // 2 + 0.5) * pixel)


@pytest.mark.parametrize("beta", [2.5, 4.765])
def test_moffat_kernel_fwhm_matches(beta):
    """Half-maximum crossing of the central row of a finely sampled kernel."""
    fwhm, pixel = 1.0, 0.025  # 40 pixels per FWHM: pixel integration broadens by < 1e-4
    k = MoffatPSF(fwhm, beta=beta, truncation=1.0).kernel(pixel)
    row = k[k.shape[0] // 2]
    c = len(row) // 2
    half = row[c] / 2
    j = c + np.argmax(row[c:] < half)  # first pixel below half maximum
    # linear interpolation between pixel centres: error ~ (pixel/fwhm)^2 ~ 1e-3
    x = (j - 1 - c) + (row[j - 1] - half) / (row[j - 1] - row[j])
    assert 2 * x * pixel == pytest.approx(fwhm, rel=2e-3)


def test_moffat_tends_to_gaussian_for_large_beta():
    """beta -> inf is a Gaussian of the same FWHM: compares the quadrature with the
    erf-based GaussianPSF on coarse pixels (relative deviation ~ r^4 / (alpha^4 beta))."""
    g = GaussianPSF(0.2, size=9).kernel(0.1)
    m = MoffatPSF(0.2, beta=1e6, size=9).kernel(0.1)
    np.testing.assert_allclose(m, g, rtol=0, atol=1e-6 * g.max())


@pytest.mark.parametrize("kwargs,name", [
    (dict(fwhm=0.0), "fwhm"), (dict(fwhm=-0.1), "fwhm"), (dict(fwhm=float("nan")), "fwhm"),
    (dict(fwhm="0.1"), "fwhm"), (dict(fwhm=True), "fwhm"),
    (dict(fwhm=0.1, beta=1.0), "beta"), (dict(fwhm=0.1, beta=0.5), "beta"),
    (dict(fwhm=0.1, beta=float("inf")), "beta"),
    (dict(fwhm=0.1, size=4), "size"), (dict(fwhm=0.1, size=0), "size"),
    (dict(fwhm=0.1, size=3.0), "size"),
    (dict(fwhm=0.1, truncation=0.0), "truncation"), (dict(fwhm=0.1, truncation=-1), "truncation"),
])
def test_moffat_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MoffatPSF(**kwargs)


@pytest.mark.parametrize("pixel_scale", [0.0, -0.1, float("nan"), "0.1"])
def test_moffat_bad_pixel_scale(pixel_scale):
    with pytest.raises(ValueError, match="pixel_scale"):
        MoffatPSF(0.1).kernel(pixel_scale)


def test_moffat_config_roundtrip_and_simulator():
    psf = MoffatPSF(0.3, beta=3.5, size=11, truncation=2.0)
    again = psf_from_config(psf.get_config())
    assert isinstance(again, MoffatPSF) and again.get_config() == psf.get_config()
    np.testing.assert_array_equal(again.kernel(0.1), psf.kernel(0.1))
    sim = Simulator(PixelGrid(25, 0.1, dtype=F64), source=["GAUSSIAN"], psf=psf, jit_compile=False)
    params = [dict(amp=1.0, sigma=0.15, center_x=0.05)]
    raw = sim(source=params, convolve_psf=False).numpy()[0]
    img = sim(source=params).numpy()[0]
    np.testing.assert_allclose(img, fftconvolve(raw, psf.kernel(0.1), mode="same"), rtol=0,
                               atol=1e-12)
    sim2 = Simulator.from_config(sim.get_config())
    assert isinstance(sim2.psf, MoffatPSF)


# ============================================================ PixelPSF.from_fits
def test_pixel_psf_from_fits(tmp_path, rng):
    k = rng.uniform(0.1, 1.0, size=(9, 9))
    path = write_fits(tmp_path / "psf.fits", k, PSF2=2 * k[1:8, 1:8])
    psf = PixelPSF.from_fits(path)
    np.testing.assert_allclose(psf.kernel(), k / k.sum(), rtol=1e-15)
    np.testing.assert_allclose(PixelPSF.from_fits(path, normalize=False).kernel(), k, rtol=1e-15)
    sub = PixelPSF.from_fits(path, hdu="psf2")
    np.testing.assert_allclose(sub.kernel(), k[1:8, 1:8] / k[1:8, 1:8].sum(), rtol=1e-15)
    cube = write_fits(tmp_path / "cube.fits", k[None])
    np.testing.assert_allclose(PixelPSF.from_fits(cube).kernel(), k / k.sum(), rtol=1e-15)


def test_pixel_psf_from_fits_bad_input(tmp_path):
    even = write_fits(tmp_path / "even.fits", np.ones((8, 8)))
    with pytest.raises(ValueError, match="even size"):
        PixelPSF.from_fits(even)
    rect = write_fits(tmp_path / "rect.fits", np.ones((7, 9)))
    with pytest.raises(ValueError, match="square"):
        PixelPSF.from_fits(rect)
    bad = np.ones((5, 5))
    bad[2, 2] = np.nan
    nan = write_fits(tmp_path / "nan.fits", bad)
    with pytest.raises(ValueError, match="finite"):
        PixelPSF.from_fits(nan)
    with pytest.raises(FileNotFoundError):
        PixelPSF.from_fits(tmp_path / "missing.fits")


# ================================================================== Observation
def _obs(**kw):
    base = dict(num_pix=8, pixel_scale=0.1, exposure_time=100.0, background_rms=0.05,
                dtype=F64)
    base.update(kw)
    return Observation(base.pop("num_pix"), base.pop("pixel_scale"), base.pop("exposure_time"),
                       **base)


def _model(rng, n=8, batch=()):
    m = rng.uniform(0.0, 2.0, size=batch + (n, n))
    m[..., 0, 0] = 0.0    # no Poisson term
    m[..., 0, 1] = -0.3   # negative pixels: no Poisson term either
    return m


@pytest.mark.parametrize("factory,band", [
    ("Euclid", "VIS"), ("LSST", "r"), ("LSST", "g"), ("DES", "i"), ("HST", "WFC3_F160W")])
def test_background_and_poisson_noise_match_lenstronomy(factory, band, rng):
    lenstronomy_or_skip()
    import importlib

    from lenstronomy.SimulationAPI.observation_api import SingleBand

    mod = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{factory}")
    kw = getattr(mod, factory)(band=band).kwargs_single_band()
    ref = SingleBand(**{k: v for k, v in kw.items() if k not in ("seeing", "psf_type")},
                     data_count_unit="e-")
    obs = Observation(20, kw["pixel_scale"], kw["exposure_time"],
                      num_exposures=kw["num_exposures"], sky_brightness=kw["sky_brightness"],
                      zero_point=kw["magnitude_zero_point"], read_noise=kw["read_noise"],
                      dtype=F64)
    assert obs.background_rms == pytest.approx(ref.background_noise, rel=1e-12)
    model = _model(rng, 20) * 5 * obs.background_rms
    np.testing.assert_allclose(np.sqrt(obs.noise_variance(model).numpy()),
                               ref.estimate_noise(model), rtol=1e-12)
    mags = np.array([18.0, 22.5, 27.0])
    np.testing.assert_allclose(obs.magnitude_to_counts(mags), ref.magnitude2cps(mags), rtol=1e-13)


def test_background_from_sky_formula():
    obs = Observation(8, 0.2, 30.0, sky_brightness=21.0, zero_point=28.0, read_noise=8.0,
                      num_exposures=10)
    sky = 10 ** (0.4 * 7.0) * 0.04            # e-/s per pixel
    t = 300.0
    assert obs.sky_counts_per_pixel == pytest.approx(sky, rel=1e-14)
    assert obs.background_rms == pytest.approx(math.sqrt(10 * 64 + t * sky) / t, rel=1e-14)
    # read noise defaults to 0 with a sky brightness
    o2 = Observation(8, 0.2, 30.0, sky_brightness=21.0, zero_point=28.0, num_exposures=10)
    assert o2.background_rms == pytest.approx(math.sqrt(sky / t), rel=1e-14)


def test_magnitude_conversions():
    obs = _obs(zero_point=25.0)
    assert obs.magnitude_to_counts(25.0) == pytest.approx(1.0)
    assert obs.magnitude_to_counts(20.0) == pytest.approx(100.0, rel=1e-14)
    c = np.array([1e-3, 0.5, 7.0, 1e4])
    np.testing.assert_allclose(obs.magnitude_to_counts(obs.counts_to_magnitude(c)), c, rtol=1e-14)
    t = obs.magnitude_to_counts(tf.constant([25.0, 27.5], F64))
    assert isinstance(t, tf.Tensor)
    np.testing.assert_allclose(t.numpy(), [1.0, 0.1], rtol=1e-14)
    np.testing.assert_allclose(obs.counts_to_magnitude(tf.constant([1.0, 100.0], F64)).numpy(),
                               [25.0, 20.0], rtol=1e-14)
    with pytest.raises(ValueError, match="counts"):
        obs.counts_to_magnitude(0.0)
    with pytest.raises(ValueError, match="counts"):
        obs.counts_to_magnitude(tf.constant([-1.0]))
    with pytest.raises(ValueError, match="zero_point"):
        _obs().magnitude_to_counts(20.0)


def test_log_prob_is_the_gaussian_formula(rng):
    t_exp, bkg = 400.0, 0.03
    obs = _obs(exposure_time=200.0, num_exposures=2, background_rms=bkg)
    model = _model(rng, batch=(3,))
    data = model + rng.normal(0, 0.1, size=model.shape)
    var = bkg**2 + np.maximum(model, 0) / t_exp   # written out, not via noise_variance
    ref = np.sum(-0.5 * (data - model) ** 2 / var - 0.5 * np.log(2 * np.pi * var), axis=(-2, -1))
    dist = obs.likelihood(model)
    assert dist.batch_shape == (3,) and dist.event_shape == (8, 8)
    np.testing.assert_allclose(dist.log_prob(data).numpy(), ref, rtol=1e-13)
    np.testing.assert_allclose(obs.noise_variance(model).numpy(), var, rtol=1e-14)
    # compiled with XLA, and differentiable w.r.t. the model (also where model = 0)
    m = tf.constant(model)

    @tf.function(jit_compile=True)
    def lp(m):
        return obs.likelihood(m).log_prob(data)

    np.testing.assert_allclose(lp(m).numpy(), ref, rtol=1e-12)
    with tf.GradientTape() as tape:
        tape.watch(m)
        val = tf.reduce_sum(obs.likelihood(m).log_prob(data))
    grad = tape.gradient(val, m).numpy()
    assert np.all(np.isfinite(grad))
    # analytic gradient where the Poisson term is off: (d - m) / var
    np.testing.assert_allclose(grad[:, 0, 1], (data - model)[:, 0, 1] / bkg**2, rtol=1e-12)


@pytest.mark.parametrize("kind", ["rms", "sky"])
def test_gaussian_noise_has_the_model_variance(kind, rng):
    if kind == "rms":
        obs = _obs(background_rms=0.05, exposure_time=50.0)
    else:
        obs = _obs(sky_brightness=22.0, zero_point=26.0, read_noise=5.0, exposure_time=50.0,
                   num_exposures=3, background_rms=None)
    model = _model(rng) * 0.5
    n = 4000
    draws = obs.likelihood(model).sample(n, seed=tf.constant([1, 2])).numpy()
    var = obs.noise_variance(model).numpy()
    z = (draws - model) / np.sqrt(var)
    # all pixels together: 256,000 standard normal values
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)
    # and pixel by pixel (the variance of each pixel follows the model): 6 sigma each
    np.testing.assert_allclose(draws.var(axis=0) / var, 1, atol=6 * math.sqrt(2 / n))
    # add_noise draws the same distribution, reproducibly for an int seed
    a = obs.add_noise(model, seed=7).numpy()
    np.testing.assert_array_equal(a, obs.add_noise(model, seed=7).numpy())
    assert not np.array_equal(a, obs.add_noise(model, seed=8).numpy())


@pytest.mark.parametrize("kind", ["rms", "sky"])
def test_exact_poisson_noise(kind, rng):
    """Poisson draws: same mean and variance as the Gaussian model, integer counts and the
    Poisson skewness (which the Gaussian approximation lacks)."""
    t_exp = 4.0
    if kind == "rms":
        obs = _obs(exposure_time=t_exp, background_rms=0.0)
    else:
        obs = _obs(exposure_time=t_exp, sky_brightness=24.0, zero_point=26.0, read_noise=0.0,
                   background_rms=None)
    model = _model(rng)
    n = 4000
    draws = obs.add_noise(np.broadcast_to(model, (n, 8, 8)), seed=11, exact_poisson=True).numpy()
    var = obs.noise_variance(model).numpy()
    np.testing.assert_allclose(draws.mean(axis=0), model, rtol=0,
                               atol=6 * np.sqrt(np.max(var) / n))
    ok = var > 0
    np.testing.assert_allclose(draws.var(axis=0)[ok] / var[ok], 1, atol=6 * math.sqrt(2 / n))
    # counts: T (image - negative part) + sky counts are integers
    neg = np.minimum(model, 0)
    shift = 0.0 if kind == "rms" else obs.sky_counts_per_pixel * t_exp
    counts = (draws - neg) * t_exp + shift
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-8)
    if kind == "rms":
        # pixels with zero model and zero background have no noise at all
        np.testing.assert_array_equal(draws[:, 0, 0], 0.0)
        np.testing.assert_array_equal(draws[:, 0, 1], -0.3)
    # skewness of Poisson(lam) counts is 1/sqrt(lam) (lam = T model + sky counts)
    lam = np.maximum(model, 0) * t_exp + shift
    i, j = np.unravel_index(np.argmin(np.where(lam > 0.5, lam, np.inf)), lam.shape)
    x = counts[:, i, j]
    skew = np.mean((x - x.mean()) ** 3) / x.std() ** 3
    assert skew == pytest.approx(1 / math.sqrt(lam[i, j]), abs=0.25)


def test_add_noise_seeds():
    obs = _obs()
    m = np.ones((8, 8))
    a = obs.add_noise(m, seed=tf.constant([5, 6])).numpy()
    np.testing.assert_array_equal(a, obs.add_noise(m, seed=tf.constant([5, 6])).numpy())
    for bad in (-1, 2**31, 1.5, "x", tf.constant([1, 2, 3])):
        with pytest.raises(ValueError, match="seed"):
            obs.add_noise(m, seed=bad)


# ========================================================================== S/N
def test_snr_definition(rng):
    obs = _obs(background_rms=0.05, exposure_time=100.0)
    model = _model(rng, batch=(2,))
    light = rng.uniform(0, 3.0, size=(8, 8))
    mask = rng.uniform(size=(8, 8)) > 0.3
    var = 0.05**2 + np.maximum(model + light, 0) / 100.0
    ref = np.sqrt(np.sum(np.where(mask, model**2 / var, 0), axis=(-2, -1)))
    np.testing.assert_allclose(obs.snr(model, mask=mask, lens_light=light).numpy(), ref,
                               rtol=1e-13)
    var0 = 0.05**2 + np.maximum(model, 0) / 100.0
    np.testing.assert_allclose(obs.snr(model).numpy(), np.sqrt(np.sum(model**2 / var0, (-2, -1))),
                               rtol=1e-13)


def test_snr_is_the_amplitude_precision(rng):
    """Matched-filter S/N = 1 / relative error of the fitted amplitude of a known template
    (constant variance, Monte Carlo over 4000 noise draws)."""
    obs = _obs(background_rms=0.2, exposure_time=1e12)  # no Poisson term to speak of
    model = _model(rng)
    snr = float(obs.snr(model))
    d = obs.likelihood(model).sample(4000, seed=tf.constant([9, 9])).numpy()
    a_hat = np.sum(d * model, axis=(-2, -1)) / np.sum(model**2)
    assert a_hat.mean() == pytest.approx(1.0, abs=5 / snr / math.sqrt(4000))
    # std of a sample std of 4000 normal draws is 1/sqrt(2 * 4000) = 1.1%
    assert a_hat.std() * snr == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-4), (F64, 1e-10)])
@pytest.mark.parametrize("bkg,t_exp", [(0.05, 100.0), (0.001, 1000.0), (0.5, 1.0)])
def test_scale_to_snr_hits_the_target(dtype, tol, bkg, t_exp, rng):
    obs = _obs(background_rms=bkg, exposure_time=t_exp, dtype=dtype)
    model = np.abs(_model(rng, batch=(4,)))
    light = rng.uniform(0, 2.0, size=(4, 8, 8))
    mask = rng.uniform(size=(8, 8)) > 0.2
    targets = np.array([3.0, 20.0, 150.0, 5000.0])
    for kw in ({}, dict(mask=mask), dict(lens_light=light), dict(mask=mask, lens_light=light)):
        m = tf.constant(model, dtype)
        kw = {k: tf.constant(v, dtype) if k == "lens_light" else v for k, v in kw.items()}
        amp = obs.scale_to_snr(m, tf.constant(targets, dtype), **kw)
        assert amp.dtype == dtype and amp.shape == (4,)
        got = obs.snr(m * amp[:, None, None], **kw).numpy()
        np.testing.assert_allclose(got, targets, rtol=tol)
    # against scipy's brentq on the same (float64) S/N
    o64 = _obs(background_rms=bkg, exposure_time=t_exp)
    for i, tgt in enumerate(targets):
        def f(log_a, i=i, tgt=tgt):
            return float(o64.snr(np.exp(log_a) * model[i])) - tgt
        ref = np.exp(optimize.brentq(f, -40, 40, xtol=1e-14))
        assert float(obs.scale_to_snr(tf.constant(model[i], dtype), tgt)) == \
            pytest.approx(ref, rel=max(tol, 1e-12))


def test_scale_to_snr_limits(rng):
    model = np.abs(_model(rng))
    # background only (no Poisson term): linear, A = target / snr
    obs = _obs(background_rms=0.1, exposure_time=1e300)
    assert float(obs.scale_to_snr(model, 30.0)) == pytest.approx(30.0 / float(obs.snr(model)),
                                                                  rel=1e-12)
    # Poisson only: snr^2 = A T sum(model)  ->  A = target^2 / (T sum(model))
    obs = _obs(background_rms=0.0, exposure_time=50.0)
    assert float(obs.scale_to_snr(model, 30.0)) == pytest.approx(900.0 / (50.0 * model.sum()),
                                                                  rel=1e-12)


def test_scale_to_snr_compiles(rng):
    obs = _obs(dtype=tf.float32)
    m = tf.constant(np.abs(_model(rng, batch=(3,))), tf.float32)
    eager = obs.scale_to_snr(m, 40.0).numpy()
    compiled = tf.function(lambda m: obs.scale_to_snr(m, 40.0), jit_compile=True)(m).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-6)
    np.testing.assert_allclose(obs.snr(m * compiled[:, None, None]).numpy(), 40.0, rtol=1e-4)


def test_snr_bad_input(rng):
    obs = _obs()
    m = np.abs(_model(rng))
    with pytest.raises(ValueError, match="target_snr"):
        obs.scale_to_snr(m, 0.0)
    with pytest.raises(ValueError, match="target_snr"):
        obs.scale_to_snr(m, -3.0)
    with pytest.raises(ValueError, match="zero signal-to-noise"):
        obs.scale_to_snr(np.zeros((8, 8)), 10.0)
    with pytest.raises(ValueError, match="zero signal-to-noise"):
        obs.scale_to_snr(m, 10.0, mask=np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="mask"):
        obs.snr(m, mask=np.ones((3, 8)))
    with pytest.raises(ValueError, match="mask"):
        obs.snr(m, mask=-np.ones((8, 8)))
    with pytest.raises(ValueError, match="model"):
        obs.snr(np.ones((7, 8)))
    with pytest.raises(ValueError, match="lens_light"):
        obs.snr(m, lens_light=np.ones((4, 4)))
    with pytest.raises(ValueError, match="model"):
        obs.likelihood(np.full((8, 8), np.nan))


# ================================================================= validation
@pytest.mark.parametrize("kwargs,name", [
    (dict(pixel_scale=0.0), "pixel_scale"), (dict(pixel_scale=-0.1), "pixel_scale"),
    (dict(pixel_scale=float("nan")), "pixel_scale"), (dict(pixel_scale="0.1"), "pixel_scale"),
    (dict(exposure_time=-1.0), "exposure_time"), (dict(exposure_time=0.0), "exposure_time"),
    (dict(exposure_time=float("inf")), "exposure_time"),
    (dict(background_rms=-0.1), "background_rms"),
    (dict(background_rms=float("nan")), "background_rms"),
    (dict(num_pix=0), "num_pix"), (dict(num_pix=8.0), "num_pix"),
    (dict(num_exposures=0), "num_exposures"), (dict(num_exposures=1.5), "num_exposures"),
    (dict(psf="gaussian"), "psf"),
    (dict(background_rms=None), "background"),
    (dict(background_rms=None, sky_brightness=22.0), "zero_point"),
    (dict(sky_brightness=22.0, zero_point=25.0), "not both"),
    (dict(read_noise=3.0), "read_noise"),
    (dict(background_rms=None, sky_brightness=22.0, zero_point=25.0, read_noise=-1.0),
     "read_noise"),
    (dict(background_rms=None, sky_brightness=float("nan"), zero_point=25.0), "sky_brightness"),
    (dict(zero_point="25"), "zero_point"),
    (dict(dtype=tf.int32), "dtype"),
])
def test_observation_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _obs(**kwargs)


def test_grid_simulator_and_config():
    obs = Observation(40, 0.08, 600.0, num_exposures=4, sky_brightness=22.0, zero_point=26.45,
                      read_noise=12.0, psf=MoffatPSF(0.14), dtype=F64)
    g = obs.grid(supersample=3)
    assert (g.num_pix, g.pixel_scale, g.supersample, g.dtype) == (40, 0.08, 3, F64)
    sim = obs.simulator(source=["GAUSSIAN"], supersample=2)
    assert sim.psf is obs.psf and sim.grid.supersample == 2 and sim.dtype == F64
    img = sim(source=[dict(amp=100.0, sigma=0.2)])
    # images in e-/s per pixel: a total flux of 100 e-/s (Gaussian amp) sums to ~100
    assert float(tf.reduce_sum(img)) == pytest.approx(100.0, rel=2e-3)
    again = Observation.from_config(obs.get_config())
    assert again.get_config() == obs.get_config()
    assert again.background_rms == obs.background_rms
    o2 = _obs(psf=GaussianPSF(0.1), zero_point=25.0)
    assert Observation.from_config(o2.get_config()).get_config() == o2.get_config()
    assert "background_rms=0.05" in repr(o2)


# ================================================================== instruments
def test_instrument_table():
    assert instrument_names() == ["euclid_vis", "hst_acs_f814w", "hst_wfc3_f140w", "lsst_r"]
    for name in instrument_names():
        cfg = get_instrument(name)
        assert cfg == INSTRUMENTS[name] and cfg is not INSTRUMENTS[name]
        cfg["pixel_scale"] = -1  # a copy: the table is unchanged
        assert INSTRUMENTS[name]["pixel_scale"] > 0
    assert get_instrument("Euclid-VIS") == INSTRUMENTS["euclid_vis"]
    assert get_instrument("HST ACS/F814W") == INSTRUMENTS["hst_acs_f814w"]
    with pytest.raises(ValueError, match="euclid_vis.*lsst_r"):
        get_instrument("jwst_f200w")
    with pytest.raises(ValueError, match="known instruments"):
        Observation.from_instrument("keck", num_pix=10)
    with pytest.raises(ValueError, match="string"):
        get_instrument(3)


def _point_source_depth(obs):
    """AB magnitude of a point source at matched-filter S/N = 5."""
    k = obs.psf.kernel(obs.pixel_scale)
    n, s = obs.num_pix, k.shape[0]
    img = np.zeros((n, n))
    c = n // 2
    img[c - s // 2:c + s // 2 + 1, c - s // 2:c + s // 2 + 1] = k  # 1 e-/s
    return obs.counts_to_magnitude(float(obs.scale_to_snr(img, 5.0)))


@pytest.mark.parametrize("name", sorted(INSTRUMENTS))
def test_instrument_presets_construct_and_give_plausible_snr(name):
    obs = Observation.from_instrument(name, num_pix=64, dtype=F64)
    cfg = INSTRUMENTS[name]
    assert obs.pixel_scale == cfg["pixel_scale"] and obs.zero_point == cfg["zero_point"]
    assert obs.total_exposure_time == cfg["exposure_time"] * cfg["num_exposures"]
    assert isinstance(obs.psf, MoffatPSF if cfg["psf_model"] == "moffat" else GaussianPSF)
    assert obs.psf.fwhm == cfg["psf_fwhm"]
    # a lensed compact source of unlensed magnitude 23 AB: bright, well detected arcs
    sim = obs.simulator(lens=["SIE"], source=["GAUSSIAN"], supersample=2)
    model = sim(lens=[dict(theta_E=1.2, e1=0.1, e2=0.0)],
                source=[dict(amp=obs.magnitude_to_counts(23.0), sigma=0.1, center_x=0.05,
                             center_y=0.02)])
    snr = float(obs.snr(model)[0])
    assert 100 < snr < 5000, snr
    # 5-sigma point-source depths within the range of these surveys (deeper than the
    # published aperture-photometry depths, as the matched filter is optimal)
    depth = _point_source_depth(obs)
    assert 26.5 < depth < 28.8, depth


def test_lsst_depth_matches_ivezic_2019():
    """10-year r-band 5-sigma point-source depth 27.5 and single-visit 24.7 (Ivezic et al.
    2019, tables 1-2). We get 27.18 and 24.34: 0.5 mag tolerance, as the PSF model (Moffat
    here), the seeing value and the read noise (an upper bound here) differ from theirs; the
    10-year gain, 2.5 log10(sqrt(184)) = 2.83 mag when sky-limited, is checked tighter."""
    obs = Observation.from_instrument("lsst_r", num_pix=41, dtype=F64)
    deep = _point_source_depth(obs)
    assert deep == pytest.approx(27.5, abs=0.5)
    visit = Observation.from_instrument("lsst_r", num_pix=41, num_exposures=2, dtype=F64)
    single = _point_source_depth(visit)
    assert single == pytest.approx(24.7, abs=0.5)
    # read noise makes a single visit a little worse than sky-limited
    assert 2.83 <= deep - single < 2.83 + 0.1


def test_from_instrument_overrides():
    base = Observation.from_instrument("euclid_vis", num_pix=10)
    longer = Observation.from_instrument("euclid_vis", num_pix=10, num_exposures=16)
    # sky-dominated: 4x the exposures halves the background rms (read noise makes it a bit
    # less than 2x)
    assert 1.9 < base.background_rms / longer.background_rms <= 2.0
    o = Observation.from_instrument("euclid_vis", num_pix=10, background_rms=0.02)
    assert o.background_rms == 0.02 and o.sky_brightness is None and o.zero_point == 25.72
    o = Observation.from_instrument("euclid_vis", num_pix=10, psf_model="moffat", psf_beta=3.0)
    assert isinstance(o.psf, MoffatPSF) and o.psf.beta == 3.0 and o.psf.fwhm == 0.16
    psf = PixelPSF(np.ones((3, 3)))
    assert Observation.from_instrument("lsst_r", num_pix=10, psf=psf).psf is psf
    with pytest.raises(ValueError, match="seeing"):
        Observation.from_instrument("lsst_r", num_pix=10, seeing=0.6)
    with pytest.raises(ValueError, match="psf_model"):
        Observation.from_instrument("lsst_r", num_pix=10, psf_model="airy")
    with pytest.raises(ValueError, match="exposure_time"):
        Observation.from_instrument("lsst_r", num_pix=10, exposure_time=-15.0)
