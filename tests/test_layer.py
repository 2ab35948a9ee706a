"""Tests of the Keras lensing layer: parity with the Simulator, serialization, export,
training inside keras.Model, XLA and bad configuration."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfstronglens as tsl
from tfstronglens.layers import LensingLayer
from tfstronglens.lensing import LensingLayer as LensingLayer2

N, NS = 16, 12  # image and source pixels per side: tiny, to keep compilation fast
CFG = dict(num_pix=N, pixel_scale=0.1, source_num_pix=NS, source_pixel_scale=0.05,
           lens_models=["SIE", "SHEAR"], supersample=2, psf_fwhm=0.15)


def blob_source(cx=0.05, cy=0.02, sigma=0.08, batch=1):
    c = (np.arange(NS) - 0.5 * (NS - 1)) * CFG["source_pixel_scale"]
    xx, yy = np.meshgrid(c, c)
    img = np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sigma**2)
    return np.repeat(img[None], batch, axis=0)


def sie_shear_params(layer, batch=3):
    return layer.pack_params([
        dict(theta_E=np.linspace(0.4, 0.6, batch), e1=np.linspace(-0.1, 0.15, batch), e2=0.05,
             center_x=0.02, center_y=np.linspace(-0.03, 0.01, batch)),
        dict(gamma1=np.linspace(0.0, 0.04, batch), gamma2=-0.02),
    ])


def test_param_names_and_pack():
    layer = LensingLayer(**CFG)
    assert LensingLayer2 is LensingLayer
    sim = tsl.Simulator(tsl.PixelGrid(N, 0.1), lens=[tsl.SIE(), tsl.Shear()])
    assert layer.param_names == sim.param_names(("lens",))
    assert layer.param_names[:2] == ["lens.0.theta_E", "lens.0.e1"] and len(layer.param_names) == 9
    p = layer.pack_params([dict(theta_E=[1.0, 2.0], e1=0.1, e2=0.0), dict(gamma1=0.02, gamma2=0.01)])
    assert p.shape == (2, 9) and p.dtype == np.float32
    np.testing.assert_allclose(p[:, 0], [1.0, 2.0])
    np.testing.assert_allclose(p[:, 3:5], 0.0)  # default centre
    np.testing.assert_allclose(p[1, 5:7], [0.02, 0.01], rtol=1e-6)


@pytest.mark.parametrize("channel", [False, True])
def test_matches_simulator(rng, channel):
    layer = LensingLayer(**CFG, dtype="float64")
    B = 3
    src = rng.uniform(0, 1, (B, NS, NS))
    params = sie_shear_params(layer, B)
    assert params.dtype == np.float64
    f64 = tf.float64
    sim = tsl.Simulator(tsl.PixelGrid(N, 0.1, supersample=2, dtype=f64),
                        lens=[tsl.SIE(dtype=f64), tsl.Shear(dtype=f64)],
                        source=[tsl.PixelatedSource(NS, 0.05, dtype=f64)],
                        psf=tsl.GaussianPSF(0.15), jit_compile=False)
    cols = dict(zip(layer.param_names, params.T))
    lens_kw = [{k.split(".")[2]: v for k, v in cols.items() if k.startswith(f"lens.{i}.")} for i in range(2)]
    ref = sim(lens=lens_kw, source=[dict(image=src)]).numpy()
    assert ref.shape == (B, N, N) and ref.sum() > 0
    if channel:
        out = layer([src[..., None], params]).numpy()
        assert out.shape == (B, N, N, 1)
        out = out[..., 0]
    else:
        out = layer(src, params).numpy()
        assert out.shape == (B, N, N)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
    # the flux of a source in the middle of the arcs is magnified (lensing is active)
    assert out.sum() > 1.2 * 0.05**2 * src.sum()


def test_jit_call_equals_eager(rng):
    layer = LensingLayer(**CFG)
    src = tf.constant(rng.uniform(0, 1, (2, NS, NS, 1)), tf.float32)
    params = tf.constant(sie_shear_params(layer, 2))
    eager = layer(src, params).numpy()
    jitted = tf.function(lambda s, p: layer(s, p), jit_compile=True)(src, params).numpy()
    assert jitted.shape == (2, N, N, 1)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)


def _functional_model(layer):
    si = keras.Input((NS, NS), name="source_image")
    pi = keras.Input((len(layer.param_names),), name="lens_params")
    return keras.Model([si, pi], layer(si, pi))


def test_config_roundtrip_and_keras_file(tmp_path, rng):
    layer = LensingLayer(**CFG, dtype="float64", source_interpolation="bicubic")
    cfg = layer.get_config()
    again = LensingLayer.from_config(cfg)
    assert again.get_config() == cfg
    assert again.compute_dtype == "float64" and again.source_interpolation == "bicubic"
    assert cfg["lens_models"] == ["SIE", "SHEAR"] and cfg["psf_fwhm"] == 0.15

    model = _functional_model(LensingLayer(**CFG))
    src = rng.uniform(0, 1, (2, NS, NS)).astype("float32")
    params = sie_shear_params(model.layers[-1], 2)
    before = model.predict([src, params], verbose=0)  # Keras's own (traced) path
    path = os.path.join(tmp_path, "lens.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    lay = [lyr for lyr in reloaded.layers if isinstance(lyr, LensingLayer)]
    assert len(lay) == 1 and lay[0].get_config() == model.layers[-1].get_config()
    np.testing.assert_allclose(reloaded([src, params]).numpy(), before, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(before, model.layers[-1](src, params).numpy(), rtol=1e-5, atol=1e-7)


def test_export_saved_model(tmp_path, rng):
    model = _functional_model(LensingLayer(**CFG))
    path = os.path.join(tmp_path, "exported")
    model.export(path, verbose=False)
    loaded = tf.saved_model.load(path)
    for B in (1, 3):  # the batch dimension stays dynamic
        src = rng.uniform(0, 1, (B, NS, NS)).astype("float32")
        params = sie_shear_params(model.layers[-1], B)
        out = loaded.serve([tf.constant(src), tf.constant(params)]).numpy()
        assert out.shape == (B, N, N)
        np.testing.assert_allclose(out, model([src, params]).numpy(), rtol=1e-6, atol=1e-8)


class _TrainableParams(keras.layers.Layer):
    """Test helper: a trainable parameter vector broadcast to [B, P]."""

    def __init__(self, init, **kwargs):
        super().__init__(**kwargs)
        self.init = np.asarray(init, dtype="float32")

    def build(self, input_shape):
        self.w = self.add_weight(shape=self.init.shape,
                                 initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return tf.broadcast_to(self.w, [tf.shape(x)[0], self.init.shape[0]])


def _fit_lens_params(lens_models, truth_kw, init_kw, steps):
    layer = LensingLayer(**dict(CFG, lens_models=lens_models, supersample=1, psf_fwhm=None))
    truth, init = layer.pack_params(truth_kw), layer.pack_params(init_kw)
    src = blob_source().astype("float32")
    target = layer(src, truth).numpy()
    si = keras.Input((NS, NS))
    params = _TrainableParams(init[0])
    model = keras.Model(si, layer(si, params(si)))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=True)
    loss0 = float(np.mean((model(src).numpy() - target) ** 2))
    # one epoch of `steps` steps on the same example (cheaper than `steps` epochs)
    hist = model.fit(np.repeat(src, steps, 0), np.repeat(target, steps, 0), batch_size=1,
                     epochs=1, verbose=0).history["loss"]
    loss1 = float(np.mean((model(src).numpy() - target) ** 2))
    return np.array([loss0, hist[-1], loss1]), params.get_weights()[0], truth[0], init[0]


def test_fit_lens_params_jit():
    # A model whose trainable weights are the lens parameters, trained with XLA
    # (model.compile(jit_compile=True)) to reproduce an image. SIS + SHEAR: the XLA
    # compilation of the SIE gradient alone takes ~25 s on a loaded 2-core CPU, see the
    # slow test below.
    hist, fitted, truth, init = _fit_lens_params(
        ["SIS", "SHEAR"], [dict(theta_E=0.5), dict(gamma1=0.03, gamma2=0.0)],
        [dict(theta_E=0.42), dict(gamma1=0.0, gamma2=0.0)], steps=40)
    assert np.all(np.isfinite(hist))
    assert hist[2] < 0.05 * hist[0], hist
    assert abs(fitted[0] - truth[0]) < 0.25 * abs(init[0] - truth[0])


@pytest.mark.slow
def test_fit_lens_params_jit_sie():
    hist, fitted, truth, init = _fit_lens_params(
        ["SIE", "SHEAR"], [dict(theta_E=0.5, e1=0.05, e2=0.0), dict(gamma1=0.03, gamma2=0.0)],
        [dict(theta_E=0.45, e1=0.0, e2=0.0), dict(gamma1=0.0, gamma2=0.0)], steps=40)
    assert hist[2] < 0.05 * hist[0], hist
    assert abs(fitted[0] - truth[0]) < 0.25 * abs(init[0] - truth[0])


def test_fit_source(rng):
    # Trainable source, fixed lens: recover a source from its lensed image (linear
    # least squares, so plain gradient descent must drive the loss down).
    layer = LensingLayer(**dict(CFG, lens_models=["SIS"], psf_fwhm=None, supersample=1))
    params = layer.pack_params([dict(theta_E=[0.5])])
    truth = blob_source().astype("float32")
    target = layer(truth, params).numpy()
    pi = keras.Input((len(layer.param_names),))
    source = _TrainableParams(np.zeros(NS * NS))(pi)
    model = keras.Model(pi, layer(keras.layers.Reshape((NS, NS))(source), pi))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    loss0 = np.mean((model(params).numpy() - target) ** 2)
    model.fit(np.repeat(params, 30, 0), np.repeat(target, 30, 0), batch_size=1, verbose=0)
    loss1 = np.mean((model(params).numpy() - target) ** 2)
    assert loss1 < 0.1 * loss0, (loss0, loss1)


def test_gradients_finite(rng):
    layer = LensingLayer(**CFG)
    src = tf.constant(rng.uniform(0, 1, (2, NS, NS)), tf.float32)
    # includes the q = 1, zero-shear, centred point of the parameter space
    params = tf.constant(layer.pack_params([dict(theta_E=[0.5, 0.6], e1=[0.0, 0.1], e2=0.0),
                                            dict(gamma1=0.0, gamma2=[0.0, 0.02])]))
    with tf.GradientTape() as tape:
        tape.watch([src, params])
        loss = tf.reduce_sum(layer(src, params) ** 2)
    gs, gp = tape.gradient(loss, [src, params])
    assert np.all(np.isfinite(gs.numpy())) and np.all(np.isfinite(gp.numpy()))
    assert np.abs(gp.numpy()[:, 0]).min() > 0  # theta_E matters


def test_bad_config():
    with pytest.raises(ValueError, match=r"lens_models\[1\] = 'FOO'"):
        LensingLayer(**dict(CFG, lens_models=["SIE", "FOO"]))
    with pytest.raises(ValueError, match=r"lens_models\[0\] = 'SERSIC' is not a mass"):
        LensingLayer(**dict(CFG, lens_models=["SERSIC"]))
    with pytest.raises(ValueError, match=r"lens_models\[0\] = 'PIXELATED' is not a usable"):
        LensingLayer(**dict(CFG, lens_models=["PIXELATED"]))  # needs constructor arguments
    with pytest.raises(ValueError, match="lens_models must be a list"):
        LensingLayer(**dict(CFG, lens_models="SIE"))
    with pytest.raises(ValueError, match="source_pixel_scale"):
        LensingLayer(**dict(CFG, source_pixel_scale=0.0))
    with pytest.raises(ValueError, match="pixel_scale"):
        LensingLayer(**dict(CFG, pixel_scale=-1.0))
    with pytest.raises(ValueError, match="num_pix"):
        LensingLayer(**dict(CFG, num_pix=0))
    with pytest.raises(ValueError, match="psf_fwhm"):
        LensingLayer(**dict(CFG, psf_fwhm=0.0))
    with pytest.raises(ValueError, match="interpolation"):
        LensingLayer(**dict(CFG, source_interpolation="nearest"))
    with pytest.raises(ValueError, match="dtype"):
        LensingLayer(**dict(CFG, dtype="float16"))
    with pytest.raises(ValueError, match="dtype"):
        LensingLayer(**dict(CFG, dtype="mixed_float16"))

    layer = LensingLayer(**CFG)
    src = np.zeros((2, NS, NS), "float32")
    with pytest.raises(ValueError, match=r"lens_params must have shape \[B, 9\]"):
        layer(src, np.zeros((2, 8), "float32"))
    with pytest.raises(ValueError, match=r"lens_params must have shape \[B, 9\]"):
        _ = layer(keras.Input((NS, NS)), keras.Input((7,)))
    with pytest.raises(ValueError, match=r"source_image must have shape \[B, 12, 12\]"):
        layer(np.zeros((2, 10, 10), "float32"), np.zeros((2, 9), "float32"))
    with pytest.raises(ValueError, match="source_image"):
        layer(np.zeros((2, NS, NS, 3), "float32"), np.zeros((2, 9), "float32"))
    with pytest.raises(ValueError, match="lens_params"):
        layer(src)


# ------------------------------------------------------- artifacts in a fresh process
# A process that never imports tfstronglens: the SavedModel must be standalone and keep
# its gradients; a .keras file must fail with an error naming the fix. One subprocess
# serves both tests (TensorFlow starts once).
_FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras

d = np.load(sys.argv[1])
out = {}
loaded = tf.saved_model.load(sys.argv[2])
src, params = tf.constant(d["src"]), tf.constant(d["params"])
with tf.GradientTape() as tape:
    tape.watch([src, params])
    loss = tf.reduce_sum(loaded.serve([src, params]) ** 2)
g_src, g_params = tape.gradient(loss, [src, params])
out["image"] = loaded.serve([src, params]).numpy().tolist()
out["g_params"] = g_params.numpy().tolist()
out["g_src"] = g_src.numpy().tolist()
out["imported_after_savedmodel"] = "tfstronglens" in sys.modules
try:
    keras.saving.load_model(sys.argv[3])
    out["keras_error"] = None
except Exception as exc:
    out["keras_error"] = f"{type(exc).__name__}: {exc}"
out["imported_after_keras"] = "tfstronglens" in sys.modules
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    import json
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("fresh")
    rng = np.random.default_rng(7)
    # SIS + shear with a PSF and sub-pixels: the shear, PSF-adjoint and XLA-barrier
    # custom gradients are all in the graph (SIE would only make XLA compile longer)
    layer = LensingLayer(**dict(CFG, lens_models=["SIS", "SHEAR"]))
    P = len(layer.param_names)
    si, pi = keras.Input((NS, NS)), keras.Input((P,))
    # a trainable identity in front of the layer, so that fit() has something to train
    tuned = keras.layers.Dense(P, kernel_initializer="identity", name="tune")(pi)
    model = keras.Model([si, pi], layer(si, tuned))
    src = rng.uniform(0, 1, (2, NS, NS)).astype("float32")
    params = layer.pack_params([dict(theta_E=[0.5, 0.45], center_x=0.02),
                                dict(gamma1=[0.03, 0.0], gamma2=-0.01)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=True)
    target = model([src, params]).numpy() * 1.01
    model.fit([src, params], target, batch_size=2, epochs=1, verbose=0)
    assert not np.array_equal(model.get_layer("tune").get_weights()[0], np.eye(P))  # trained
    model.export(str(tmp / "exported"), verbose=False)
    model.save(str(tmp / "model.keras"))
    s, p = tf.constant(src), tf.constant(params)
    with tf.GradientTape() as tape:
        tape.watch([s, p])
        loss = tf.reduce_sum(model([s, p]) ** 2)
    g_src, g_params = tape.gradient(loss, [s, p])
    np.savez(tmp / "inputs.npz", src=src, params=params)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the checkout is importable (as after `pip install`), but nothing imports it
    env["PYTHONPATH"] = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp / "inputs.npz"),
                           str(tmp / "exported"), str(tmp / "model.keras")],
                          capture_output=True, text=True, env=env, cwd=str(tmp), timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    return dict(out=out, image=model([s, p]).numpy(), g_src=g_src.numpy(),
                g_params=g_params.numpy())


def test_exported_model_keeps_gradients(fresh_process):
    """model.fit(jit_compile=True) then model.export(): tf.GradientTape through the
    SavedModel, in a process without tfstronglens, gives the original's gradients."""
    out = fresh_process["out"]
    assert not out["imported_after_savedmodel"]
    np.testing.assert_allclose(out["image"], fresh_process["image"], rtol=1e-5, atol=1e-7)
    g, ref = np.asarray(out["g_params"]), fresh_process["g_params"]
    assert g.shape == (2, 7) and np.all(np.isfinite(g))
    assert np.abs(ref).min() > 0  # every lens parameter (SIS + shear, 7 columns) matters
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    g_src = np.asarray(out["g_src"])
    np.testing.assert_allclose(g_src, fresh_process["g_src"], rtol=1e-4,
                               atol=1e-5 * np.abs(g_src).max())


def test_keras_file_without_import_names_the_fix(fresh_process):
    """Keras 3 imports no third-party module when loading: without `import tfstronglens`
    the .keras file cannot load, and the error says what to import (with the import it
    loads: test_config_roundtrip_and_keras_file)."""
    out = fresh_process["out"]
    err = out["keras_error"]
    assert err is not None and "LensingLayer" in err, err
    assert "import tfstronglens" in err, err
    assert not out["imported_after_keras"]


def test_config_load_requires_is_not_an_argument():
    layer = LensingLayer(**CFG)
    cfg = layer.get_config()
    assert "import tfstronglens" in cfg["load_requires"]
    again = LensingLayer.from_config(cfg)  # the note is dropped, not passed to __init__
    assert again.get_config() == cfg
    old = {k: v for k, v in cfg.items() if k != "load_requires"}  # files written before it
    assert LensingLayer.from_config(old).get_config() == cfg
    with pytest.raises(ValueError, match="load_requires"):
        LensingLayer(**CFG, load_requires="x")
