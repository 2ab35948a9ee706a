r"""Fit an image simulated by another code (lenstronomy) with tfstronglens, end to end.

lenstronomy (a test-only dependency) renders an SIE + external shear lens of an
elliptical Sersic source, with a Gaussian PSF (lenstronomy's ``GAUSSIAN`` type, given by
its FWHM) and 3x3 supersampling with the convolution done on the supersampled grid
(``supersampling_convolution=True``, its most accurate setting). Gaussian noise of a
known rms is added with a fixed seed and the image is written to FITS (``PIXSCALE``,
``BKGRMS``), then fitted by tfstronglens through the Python API (``load_lens_image`` ->
``build_model`` -> ``fit_lens(method="map")``: multi-start MAP and the Laplace
approximation) and through the ``tfstronglens fit`` command. Nothing of tfstronglens is
used to make the data, so a convention mismatch anywhere (pixel grid, ellipticity
angles, shear sign, Sersic amplitude, PSF width, pixel units) biases the fit.

#### Matching the conventions

* Pixel grid. tfstronglens: pixel ``(row i, column j)`` is at ``x = (j - (N-1)/2) s``,
  ``y = (i - (N-1)/2) s`` (x along columns to the right, centres symmetric about 0).
  The image is rendered on lenstronomy's astronomical grid, ``data_configure_simple(...,
  inverse=True)``: ``transform_pix2angle = diag(-s, s)``, RA increasing to the *left*
  (East left), so column ``j`` is at ``RA = ((N-1)/2 - j) s = -x_j``. Reversing the
  columns (``np.fliplr``) puts ``RA`` at column ``j`` equal to ``x_j`` and leaves
  ``Dec = y_i``: after the flip, lenstronomy's ``(ra, dec)`` *are* our ``(x, y)`` and every
  parameter (centres, ``e1, e2``, ``gamma1, gamma2``) keeps its value.
  :func:`test_grid_conventions_match` checks this (the flipped image equals the one
  rendered on lenstronomy's ``inverse=False`` grid, whose pixel coordinates equal
  :class:`~tfstronglens.PixelGrid`'s).
* Ellipticities and shear: the same definitions in both codes (``phi = atan2(e2, e1)/2``
  counter-clockwise from the x axis). A mirror (a missing or extra flip) would change
  the signs of ``center_x``, ``e2``, ``gamma2``: the fit must reject the mirrored truths.
* Sersic: ``amp`` is the surface brightness at ``R_sersic`` in both. lenstronomy uses
  ``b_n = 1.9992 n - 0.3271``; tfstronglens's default is the exact root (Ciotti & Bertin),
  which changes the meaning of ``R_sersic`` and ``amp`` by ~0.4% at ``n = 1.2``; the API
  fit uses ``SersicEllipse(b_n="lenstronomy")`` to compare like with like (the CLI, with
  the default ``b_n``, is checked on the lens parameters).
* Units: lenstronomy images are in flux per pixel (surface brightness integrated over
  the pixel), as ours (e-/s per pixel).
* PSF: both codes convolve the pixel-averaged image with the Gaussian sampled at
  pixel-centre offsets (``load_lens_image(psf_fwhm=...)`` gives tfstronglens's
  ``GaussianPSF``; this test found that its kernel used to be integrated over pixels,
  which applied the pixel window twice). lenstronomy's data here convolve on the
  supersampled grid, ours at the native scale: the difference is far below the noise.
  lenstronomy also pads the field with its edge values (``mode="nearest"``) where we
  zero-pad; the lensed source is kept away from the edges.

:func:`test_model_reproduces_lenstronomy_image` measures all of this at once: our model
at the true parameters differs from lenstronomy's noiseless image by ``chi^2 < 1`` over
the 1600 pixels (measured 0.34 with 3x3 supersampling; a single convention error gives
thousands). The fits use ``supersample=1`` (no pixel window; cheaper) and still recover
the truths.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfstronglens as tsl
from conftest import lenstronomy_or_skip
from tfstronglens.cli import main
from tfstronglens.inference import build_model, fit_lens
from tfstronglens.io import load_lens_image, write_fits

N = 40
PIX = 0.06            # arcsec per pixel: a 2.4" field
FWHM = 0.12           # arcsec (2 pixels)
SIGMA = 0.05          # e-/s per pixel, Gaussian background noise
NOISE_SEED = 1

KW_LENS = [dict(theta_E=0.72, e1=0.12, e2=-0.08, center_x=0.04, center_y=-0.03),
           dict(gamma1=0.04, gamma2=-0.03, ra_0=0.0, dec_0=0.0)]
KW_SOURCE = [dict(amp=24.0, R_sersic=0.2, n_sersic=1.2, e1=0.1, e2=0.15, center_x=0.07,
                  center_y=-0.05)]

TRUTH = {**{f"lens.0.{k}": v for k, v in KW_LENS[0].items()},
         "lens.1.gamma1": KW_LENS[1]["gamma1"], "lens.1.gamma2": KW_LENS[1]["gamma2"],
         **{f"source.0.{k}": v for k, v in KW_SOURCE[0].items()}}
# the truths seen in a mirror x -> -x (what a wrong RA convention would make us find)
MIRROR = {"lens.0.center_x": -0.04, "lens.0.e2": 0.08, "lens.1.gamma2": 0.03,
          "source.0.e2": -0.15, "source.0.center_x": -0.07}


def lenstronomy_image(inverse: bool, supersample: int = 3, num_pix: int = N, pix: float = PIX,
                      kw_lens_light=None):
    """lenstronomy's noiseless image (flux per pixel) on ``data_configure_simple``'s grid:
    ``inverse=True``: RA to the left (East left), ``False``: RA to the right. Returns
    ``(image, ImageData)``."""
    lenstronomy_or_skip()
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.simulation_util import data_configure_simple

    data = ImageData(**data_configure_simple(num_pix, pix, inverse=inverse))
    psf = PSF(psf_type="GAUSSIAN", fwhm=FWHM, pixel_size=pix, truncation=5)
    light = None if kw_lens_light is None else LightModel(["SERSIC_ELLIPSE"])
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       lens_light_model_class=light,
                       kwargs_numerics={"supersampling_factor": supersample,
                                        "supersampling_convolution": True})
    return model.image(KW_LENS, KW_SOURCE, kwargs_lens_light=kw_lens_light), data


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """The lenstronomy image in our orientation, with noise, written to FITS."""
    east_left, _ = lenstronomy_image(inverse=True)
    clean = np.fliplr(east_left)               # RA to the right: (ra, dec) = (x, y)
    data = clean + SIGMA * np.random.default_rng(NOISE_SEED).standard_normal(clean.shape)
    path = tmp_path_factory.mktemp("lenstronomy") / "lens.fits"
    write_fits(path, data, pixel_scale=PIX, header={"BKGRMS": SIGMA})
    return str(path), clean, data


def _truth_params(model, values=None):
    values = {**TRUTH, **(values or {})}
    return {k: tf.constant([values[k]], model.dtype) for k in model.parameters}


def test_grid_conventions_match():
    """lenstronomy's East-left grid, columns reversed, is its East-right grid, whose pixel
    centres are our PixelGrid's (x along columns, y along rows)."""
    east_left, _ = lenstronomy_image(inverse=True, supersample=1)
    east_right, data = lenstronomy_image(inverse=False, supersample=1)
    assert np.max(np.abs(np.fliplr(east_left) - east_right)) < 1e-12 * east_right.max()
    # (not symmetric: the test would not see a flip otherwise)
    assert np.max(np.abs(np.fliplr(east_right) - east_right)) > 0.1 * east_right.max()
    ra, dec = data.pixel_coordinates                   # [row, column] arrays
    x, y = tsl.PixelGrid(N, PIX, dtype=tf.float64).coordinates(supersampled=False)
    np.testing.assert_allclose(ra, x.numpy(), atol=1e-12)
    np.testing.assert_allclose(dec, y.numpy(), atol=1e-12)


def test_model_reproduces_lenstronomy_image(observed):
    """Our forward model at the lenstronomy truths, through the FITS file's observation,
    matches lenstronomy's noiseless image far below the noise."""
    path, clean, _ = observed
    img = load_lens_image(path, psf_fwhm=FWHM)
    model = build_model(img.observation, img.data,
                        source=tsl.SersicEllipse(b_n="lenstronomy"), noise_map=img.noise_map,
                        supersample=3, jit_compile=False)
    ours = model.render(_truth_params(model)).numpy()[0]
    chi2 = float(np.sum(((ours - clean) / SIGMA) ** 2))
    snr = float(np.sqrt(np.sum((clean / SIGMA) ** 2)))
    assert snr > 100.0
    assert chi2 < 1.0, chi2
    mirrored = model.render(_truth_params(model, MIRROR)).numpy()[0]
    assert np.sum(((mirrored - clean) / SIGMA) ** 2) > 1000.0


def test_fit_recovers_lenstronomy_truths(observed):
    """load_lens_image -> build_model -> fit_lens(method="map"): the Laplace posterior
    contains the truths and the best fit has chi^2 ~ N^2 - D."""
    path, clean, data = observed
    img = load_lens_image(path, psf_fwhm=FWHM)
    obs = img.observation
    assert obs.pixel_scale == pytest.approx(PIX)
    np.testing.assert_allclose(img.noise_map, SIGMA)
    model = build_model(obs, img.data, source=tsl.SersicEllipse(b_n="lenstronomy"),
                        noise_map=img.noise_map, supersample=1, jit_compile=False,
                        compile_batch_size=16)
    D = model.num_params
    assert D == 14
    res = fit_lens(model, method="map", num_starts=16, map_steps=300, seed=0,
                   num_samples=4000, progress=False)
    lap = res.laplace
    # the fit is at the global mode: no higher than the truth's posterior density is missed
    x_true = model.to_flat(_truth_params(model))
    lp_true = float(model.unconstrained_log_posterior(x_true)[0])
    assert lap.log_prob >= lp_true - 0.5, (lap.log_prob, lp_true)
    # every parameter within 3 sigma of the Laplace posterior (or 1e-3 absolute)
    pulls = {}
    for name in model.param_names:
        s = res.summary[name]
        pulls[name] = (s["mean"] - TRUTH[name]) / s["std"]
        assert abs(s["mean"] - TRUTH[name]) < max(3.0 * s["std"], 1e-3), (name, s, TRUTH[name])
    # the mirrored truths (a flipped RA axis) are excluded
    for name, value in MIRROR.items():
        s = res.summary[name]
        assert abs(s["mean"] - value) > 5.0 * s["std"], (name, s)
    # chi^2 of the best fit (the Newton-refined mode) ~ chi^2(N^2 - D)
    best = model.render(model.from_flat(lap.mean.astype(np.float32)))
    chi2 = float(np.sum(((data - best.numpy()[0]) / SIGMA) ** 2))
    dof = N * N - D
    p = stats.chi2(dof).sf(chi2)
    print("pulls", {k: round(v, 2) for k, v in pulls.items()}, "chi2", chi2, "dof", dof,
          "timings", res.timings)
    assert 1e-3 < p < 1 - 1e-3, (chi2, dof)


@pytest.mark.slow
def test_fit_command_on_lenstronomy_image(observed, tmp_path, capsys):
    """``tfstronglens fit IMAGE.fits --source sersic --method map`` on the same file.

    Slow: besides the fit (default supersampling 2, 4x the pixels of the API test) the
    command traces the model for three batch sizes (MAP starts, Laplace, one point: ~10 s
    each without XLA on this CPU) and draws a corner plot (~30 s)."""
    path, _, _ = observed
    out = tmp_path / "fit"
    args = ["fit", path, "--lens", "sie+shear", "--source", "sersic", "--method", "map",
            "--psf-fwhm", str(FWHM), "--num-starts", "16", "--map-steps", "300",
            "--out", str(out), "--no-progress", "--no-xla"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "pixel scale 0.06 arcsec from the header" in err
    assert "background rms 0.05" in err
    summary = json.load(open(out / "summary.json"))
    assert summary["settings"]["pixel_scale"] == pytest.approx(PIX)
    par = summary["parameters"]
    print({k: (round(v["mean"], 4), round(v["std"], 4)) for k, v in par.items()})
    # the lens and the source position (the default Ciotti-Bertin b_n changes the meaning
    # of the source's amp and R_sersic slightly, see the module docs)
    for name in ("lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x",
                 "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2", "source.0.center_x",
                 "source.0.center_y", "source.0.e1", "source.0.e2", "source.0.n_sersic"):
        s = par[name]
        assert abs(s["mean"] - TRUTH[name]) < max(3.0 * s["std"], 1e-3), (name, s)


KW_LENS_LIGHT = [dict(amp=6.0, R_sersic=0.45, n_sersic=2.5, e1=0.05, e2=-0.04, center_x=0.04,
                      center_y=-0.03)]


@pytest.mark.slow
def test_fit_lenstronomy_image_with_lens_light(tmp_path):
    """A 48x48 image (0.05"/pixel) with lens light (elliptical Sersic, n = 2.5) as well:
    21 parameters, fitted with 2x2 supersampling (the lens light's cusp needs it)."""
    num_pix, pix = 48, 0.05
    east_left, _ = lenstronomy_image(True, 4, num_pix, pix, KW_LENS_LIGHT)
    clean = np.fliplr(east_left)
    data = clean + SIGMA * np.random.default_rng(NOISE_SEED + 1).standard_normal(clean.shape)
    path = tmp_path / "lens_light.fits"
    write_fits(path, data, pixel_scale=pix, header={"BKGRMS": SIGMA})
    img = load_lens_image(path, psf_fwhm=FWHM)
    model = build_model(img.observation, img.data, source=tsl.SersicEllipse(b_n="lenstronomy"),
                        lens_light=tsl.SersicEllipse(b_n="lenstronomy"),
                        noise_map=img.noise_map, supersample=2, jit_compile=False,
                        compile_batch_size=24)
    D = model.num_params
    assert D == 21
    truth = {**TRUTH, **{f"lens_light.0.{k}": v for k, v in KW_LENS_LIGHT[0].items()}}
    params = {k: tf.constant([truth[k]], model.dtype) for k in model.parameters}
    ours = model.render(params).numpy()[0]
    mismatch = float(np.sum(((ours - clean) / SIGMA) ** 2))
    res = fit_lens(model, method="map", num_starts=24, map_steps=500, seed=0,
                   num_samples=4000, progress=False)
    lap = res.laplace
    lp_true = float(model.unconstrained_log_posterior(model.to_flat(params))[0])
    pulls = {n: (res.summary[n]["mean"] - truth[n]) / res.summary[n]["std"]
             for n in model.param_names}
    best = model.render(model.from_flat(lap.mean.astype(np.float32))).numpy()[0]
    chi2 = float(np.sum(((data - best) / SIGMA) ** 2))
    print("mismatch chi2", mismatch, "pulls", {k: round(v, 2) for k, v in pulls.items()},
          "chi2", chi2, "dof", num_pix**2 - D, "log p mode - truth", lap.log_prob - lp_true,
          "timings", res.timings)
    assert mismatch < 5.0
    assert lap.log_prob >= lp_true - 0.5
    for name in model.param_names:
        s = res.summary[name]
        assert abs(s["mean"] - truth[name]) < max(3.0 * s["std"], 1e-3), (name, s)
    p = stats.chi2(num_pix**2 - D).sf(chi2)
    assert 1e-3 < p < 1 - 1e-3, chi2
