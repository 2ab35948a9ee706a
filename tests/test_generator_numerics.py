"""Numerics of the fast paths of ``LensDatasetGenerator``: supersampled binning, the S/N
solve, the compacted subhalo loop and the noise draw.

Small images (16x16) so that the one compiled batch function traces in seconds.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfstronglens import Simulator
from tfstronglens.observation.subhalos import subhalo_deflection
from tfstronglens.simulation import LensDatasetGenerator, LensSimulationConfig


def _jit(f):
    return tf.function(f, jit_compile=True, autograph=False)


@pytest.fixture(scope="module")
def gen():
    cfg = LensSimulationConfig(instrument="hst_acs_f814w", num_pix=12, supersample=2,
                               lens_model="sie+shear", priors={"theta_E": [0.15, 0.2]},
                               seed=11)
    return LensDatasetGenerator(cfg)


def test_supersampled_model_matches_simulator(gen):
    """With supersample 2 the generator's noise-free model is the Simulator's image of the
    truths (the rays are in the Simulator's sub-pixel-major layout: binning them as a
    natural [N s, N s] image scrambled the pixels)."""
    b = gen.generate(0, 3)
    t = b["truths"]
    sim = gen.simulator
    p = lambda kind, i, prof: {k: t[f"{kind}.{i}.{k}"] for k in prof.param_names}  # noqa
    ref = Simulator(sim.grid, lens=sim.lens, source=sim.source, lens_light=sim.lens_light,
                    psf=sim.psf, jit_compile=False)(
        lens=[p("lens", i, prof) for i, prof in enumerate(sim.lens)],
        source=[p("source", 0, sim.source[0])],
        lens_light=[p("lens_light", 0, sim.lens_light[0])]).numpy()
    np.testing.assert_allclose(b["model"], ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # iter_batches (next batch generated in a background thread) yields the same batches
    got = list(gen.iter_batches(3, 2, prefetch=1))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0]["image"], b["image"])
    np.testing.assert_array_equal(got[1]["image"], gen.generate(1, 3)["image"])


def _s2n64(obs, m, light):
    var = obs.background_rms**2 + np.maximum(m + light, 0) / obs.total_exposure_time
    return np.sqrt(np.sum(np.where(m != 0, m**2 / var, 0.0), axis=(-2, -1)))


@pytest.mark.parametrize("instrument", ["hst_acs_f814w", "lsst_r"])
def test_scale_to_snr_hits_target(instrument):
    """The achieved S/N (float64, Observation.snr's definition) equals the target to the
    float32 rounding of the amplitude, over source-dominated to background-dominated
    images, with and without lens light; and agrees with Observation.scale_to_snr."""
    g = LensDatasetGenerator(LensSimulationConfig(instrument=instrument, num_pix=16,
                                                  supersample=1))
    obs = g.observation
    rng = np.random.default_rng(0)
    n = 12
    yy, xx = np.mgrid[:16, :16] - 7.5
    src = np.exp(-((xx - rng.uniform(-5, 5, (n, 1, 1))) ** 2
                   + (yy - rng.uniform(-5, 5, (n, 1, 1))) ** 2)
                 / (2 * rng.uniform(0.7, 4, (n, 1, 1)) ** 2)) * 10 ** rng.uniform(-3, 3, (n, 1, 1))
    light = np.exp(-np.hypot(xx, yy) / rng.uniform(1, 6, (n, 1, 1))) * 10 ** rng.uniform(
        -3, 3, (n, 1, 1))
    src, light = src.astype(np.float32), light.astype(np.float32)
    target = rng.uniform(3, 300, n).astype(np.float32)
    a, a0 = _jit(lambda m, t, ll: (g._scale_to_snr(m, t, lens_light=ll),
                                   g._scale_to_snr(m, t)))(src, target, light)
    a, a0 = a.numpy().astype(np.float64), a0.numpy().astype(np.float64)
    s64 = src.astype(np.float64)
    np.testing.assert_allclose(_s2n64(obs, s64 * a[:, None, None], light.astype(np.float64)),
                               target, rtol=3e-7)
    np.testing.assert_allclose(_s2n64(obs, s64 * a0[:, None, None], 0.0), target, rtol=3e-7)
    ref = obs.scale_to_snr(src, target, lens_light=light).numpy()
    np.testing.assert_allclose(a, ref, rtol=3e-7)


def test_subhalo_deflection_compacted_equals_dense():
    """Only the real subhalos are evaluated, in chunks: the sum equals the dense sum over
    all slots (several chunks, a partial last one; a batch without subhalos)."""
    g = LensDatasetGenerator(LensSimulationConfig(num_pix=8, supersample=2, n_max=5,
                                                  subhalo_model="cdm"))
    x, y = g.simulator._x, g.simulator._y
    rng = np.random.default_rng(3)
    B, n = 9, 5
    counts = rng.integers(0, n + 1, B)
    counts[2] = 0
    mask = np.arange(n)[None] < counts[:, None]
    kw = {"Rs": rng.uniform(0.02, 0.1, (B, n)), "alpha_Rs": rng.uniform(0.001, 0.01, (B, n)),
          "r_trunc": rng.uniform(0.1, 0.5, (B, n)), "center_x": rng.uniform(-0.4, 0.4, (B, n)),
          "center_y": rng.uniform(-0.4, 0.4, (B, n))}
    kw = {k: np.where(mask, v, 1.0 if k in ("Rs", "r_trunc") else 0.0).astype(np.float32)
          for k, v in kw.items()}
    kw = {k: tf.constant(v) for k, v in kw.items()}
    rx, ry = subhalo_deflection(g._tnfw, x, y, kw)
    g._chunk_evaluations = 7 * x.shape.num_elements()  # 7 pairs per chunk: several chunks
    f = _jit(lambda kw, m: g._subhalo_deflection(x, y, kw, m))
    ax, ay = f(kw, tf.constant(mask))
    np.testing.assert_allclose(ax.numpy(), rx.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ay.numpy(), ry.numpy(), rtol=0, atol=1e-7)
    assert np.abs(rx.numpy()).max() > 1e-3  # the subhalos do deflect
    ax, ay = f(kw, tf.zeros([B, n], tf.bool))
    assert not np.any(ax.numpy()) and not np.any(ay.numpy())


def test_noise_is_observation_add_noise(gen):
    """The generator's explicit-Philox Gaussian noise is Observation.add_noise bit for bit
    (the same stateless stream, drawn ~30x faster by XLA:CPU)."""
    obs = gen.observation
    model = tf.constant(np.random.default_rng(1).uniform(0, 2, (3, 12, 12)).astype(np.float32))
    seed = tf.constant([5, 17])
    ref, (img, sigma) = _jit(lambda m, s: (obs.add_noise(m, seed=s), gen._add_noise(m, s)))(
        model, seed)
    np.testing.assert_array_equal(img.numpy(), ref.numpy())
    np.testing.assert_allclose(sigma.numpy(), np.sqrt(obs.noise_variance(model).numpy()),
                               rtol=1e-6)
