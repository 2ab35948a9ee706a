"""PixelGrid coordinates and binning, GaussianPSF/MoffatPSF/PixelPSF kernels (point-sampled,
as lenstronomy's) and convolution."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import fftconvolve

import tfstronglens as tsl
from conftest import lenstronomy_or_skip
from tfstronglens.lensing.psf import psf_from_config

F64 = tf.float64


# ----------------------------------------------------------------------------- grid
@pytest.mark.parametrize("num_pix", [1, 6, 7, 20, 21])
@pytest.mark.parametrize("pixel_scale", [0.05, 0.13])
def test_grid_matches_lenstronomy_convention(num_pix, pixel_scale):
    """lenstronomy ImageData with ra_at_xy_0 = dec_at_xy_0 = -(n-1)/2 pix and
    transform_pix2angle = diag(pix): x along columns, y along rows."""
    lenstronomy_or_skip()
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Util import util

    c0 = -(num_pix - 1) / 2 * pixel_scale
    data = ImageData(image_data=np.zeros((num_pix, num_pix)), ra_at_xy_0=c0, dec_at_xy_0=c0,
                     transform_pix2angle=np.diag([pixel_scale, pixel_scale]))
    ra, dec = data.pixel_coordinates
    grid = tsl.PixelGrid(num_pix, pixel_scale, dtype=F64)
    x, y = grid.coordinates(supersampled=False)
    np.testing.assert_allclose(x.numpy(), ra, rtol=0, atol=1e-14)
    np.testing.assert_allclose(y.numpy(), dec, rtol=0, atol=1e-14)
    # x varies along columns, y along rows, increasing
    assert np.all(np.diff(x.numpy(), axis=1) > 0) and np.all(np.diff(x.numpy(), axis=0) == 0)
    assert np.all(np.diff(y.numpy(), axis=0) > 0) and np.all(np.diff(y.numpy(), axis=1) == 0)
    # centres symmetric about 0
    np.testing.assert_allclose(x.numpy(), -x.numpy()[:, ::-1], atol=1e-15)
    np.testing.assert_allclose(y.numpy(), -y.numpy()[::-1, :], atol=1e-15)
    assert grid.extent == pytest.approx((-num_pix * pixel_scale / 2, num_pix * pixel_scale / 2) * 2)
    # supersampled sub-pixels as lenstronomy's make_subgrid
    for s in (2, 3):
        gs = tsl.PixelGrid(num_pix, pixel_scale, supersample=s, dtype=F64)
        xs, ys = gs.coordinates()
        if num_pix > 1:  # make_subgrid needs two pixels to know the step
            rs, ds = util.make_subgrid(util.image2array(ra), util.image2array(dec), s)
            np.testing.assert_allclose(xs.numpy(), rs.reshape(num_pix * s, -1), atol=1e-14)
            np.testing.assert_allclose(ys.numpy(), ds.reshape(num_pix * s, -1), atol=1e-14)


@pytest.mark.parametrize("num_pix,s", [(5, 2), (6, 3), (4, 4), (7, 1)])
def test_subpixels_average_to_pixel_centres_and_bin_averages(num_pix, s, rng):
    grid = tsl.PixelGrid(num_pix, 0.1, supersample=s, dtype=F64)
    xs, ys = grid.coordinates()
    assert xs.shape == (num_pix * s, num_pix * s)
    x, y = grid.coordinates(supersampled=False)
    np.testing.assert_allclose(grid.bin(xs).numpy(), x.numpy(), atol=1e-15)
    np.testing.assert_allclose(grid.bin(ys).numpy(), y.numpy(), atol=1e-15)
    # sub-pixels are evenly spaced with step pixel / s and fill each pixel symmetrically
    np.testing.assert_allclose(np.diff(xs.numpy()[0]), 0.1 / s, atol=1e-15)
    # bin() is the block mean, also for batched [B, C, N s, N s] inputs
    img = rng.normal(size=(2, 3, num_pix * s, num_pix * s))
    ref = img.reshape(2, 3, num_pix, s, num_pix, s).mean(axis=(3, 5))
    np.testing.assert_allclose(grid.bin(tf.constant(img)).numpy(), ref, rtol=1e-14, atol=1e-15)
    assert grid.pixel_area == pytest.approx(0.01)
    assert tsl.PixelGrid(**grid.get_config()).get_config() == grid.get_config()


@pytest.mark.parametrize("num_pix,s", [(5, 2), (6, 3), (4, 1)])
@pytest.mark.parametrize("lead", [(), (1,), (2, 3)])
def test_bin_rays_is_the_block_mean_of_the_ray_layout(num_pix, s, lead, rng):
    """bin_rays (the Simulator's binning) averages the s^2 sub-pixels of each pixel, for
    every leading batch shape including a single image (where the matrix product is a
    vector-matrix product that XLA rewrites), with both methods, eagerly and under XLA;
    its gradient is the adjoint, 1/s^2 on every sub-pixel."""
    grid = tsl.PixelGrid(num_pix, 0.1, supersample=s, dtype=F64)
    rx, ry = grid.ray_coordinates()
    x, y = grid.coordinates(supersampled=False)
    np.testing.assert_allclose(grid.bin_rays(rx).numpy(), x.numpy(), atol=1e-15)
    np.testing.assert_allclose(grid.bin_rays(ry).numpy(), y.numpy(), atol=1e-15)
    # ray layout row (a s + b) N + i, column j <-> natural sub-pixel (i s + a, j s + b)
    img = rng.normal(size=lead + (num_pix * s, num_pix * s))
    ref = img.reshape(lead + (num_pix, s, num_pix, s)).mean(axis=(-3, -1))
    rays = img.reshape(lead + (num_pix, s, num_pix, s))
    rays = np.moveaxis(rays, (-3, -1), (-4, -3)).reshape(lead + (s * s * num_pix, num_pix))
    jitted = tf.function(lambda v, m: grid.bin_rays(v, method=m), jit_compile=True)
    for method in ("matmul", "reduce"):
        for fn in (grid.bin_rays, jitted):
            out = fn(tf.constant(rays), method)
            assert out.shape == lead + (num_pix, num_pix)
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13, atol=1e-14)
        v = tf.constant(rays)
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = tf.reduce_sum(grid.bin_rays(v, method=method))
        np.testing.assert_allclose(tape.gradient(total, v).numpy(), 1.0 / s**2, rtol=1e-14)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_pix=0, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=-3, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=10.0, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=2.5, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=True, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=10, pixel_scale=0.0), "pixel_scale"),
    (dict(num_pix=10, pixel_scale=-0.1), "pixel_scale"),
    (dict(num_pix=10, pixel_scale=float("nan")), "pixel_scale"),
    (dict(num_pix=10, pixel_scale=float("inf")), "pixel_scale"),
    (dict(num_pix=10, pixel_scale="0.1"), "pixel_scale"),
    (dict(num_pix=10, pixel_scale=0.1, supersample=0), "supersample"),
    (dict(num_pix=10, pixel_scale=0.1, supersample=1.5), "supersample"),
    (dict(num_pix=10, pixel_scale=0.1, dtype=tf.int32), "dtype"),
])
def test_grid_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tsl.PixelGrid(**kwargs)


# ------------------------------------------------------------------------------ PSF
@pytest.mark.parametrize("fwhm,pix", [(0.1, 0.02), (0.3, 0.05), (0.2, 0.04), (0.1, 0.05)])
def test_gaussian_psf_kernel_moments(fwhm, pix):
    """Normalized, exactly symmetric, and point-sampled: its second moment is sigma^2 (the
    pixel window, sigma^2 + pix^2/12, is applied once by the simulator's binning, not
    again by the kernel); aliasing corrections are < 1e-4 for FWHM >= 2 pixels."""
    psf = tsl.GaussianPSF(fwhm, truncation=10.0)
    k = psf.kernel(pix)
    assert k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
    assert abs(k.sum() - 1.0) < 1e-14
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(k, k[::-1, :])
    np.testing.assert_array_equal(k, k[:, ::-1])
    c = (np.arange(k.shape[0]) - (k.shape[0] - 1) / 2) * pix
    mx = np.sum(k.sum(axis=0) * c**2)
    my = np.sum(k.sum(axis=1) * c**2)
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    assert psf.sigma == pytest.approx(sigma, rel=1e-15)
    s = sigma / pix  # documented aliasing: relative variance deficit 8 pi^2 s^2 exp(-2 pi^2 s^2)
    eps = 8 * np.pi**2 * s**2 * np.exp(-2 * np.pi**2 * s**2)
    np.testing.assert_allclose([mx, my], sigma**2 * (1 - eps), rtol=1e-6)
    assert abs(mx / sigma**2 - 1) < 1e-4
    # point samples: ratios of kernel values are those of the Gaussian at the offsets
    i = k.shape[0] // 2
    assert k[i, i + 1] / k[i, i] == pytest.approx(np.exp(-0.5 * (pix / sigma) ** 2), rel=1e-12)
    assert k[i + 2, i + 1] / k[i, i] == pytest.approx(np.exp(-2.5 * (pix / sigma) ** 2), rel=1e-12)
    # centre pixel holds the peak; truncation sets the size
    assert k[k.shape[0] // 2, k.shape[0] // 2] == k.max()
    assert tsl.GaussianPSF(fwhm).kernel(pix).shape[0] == 2 * int(np.ceil(4 * sigma / pix)) + 1
    assert tsl.GaussianPSF(fwhm, size=7).kernel(pix).shape == (7, 7)


def test_gaussian_psf_pixel_integrals_are_the_effective_psf():
    """pixel_integrals (not the simulator's kernel) is the Gaussian integrated over pixels:
    its variance is sigma^2 + pix^2/12 (Sheppard), and it sums to the flux in the square."""
    from scipy.special import erf

    fwhm, pix = 0.2, 0.04
    psf = tsl.GaussianPSF(fwhm, truncation=10.0)
    k = psf.pixel_integrals(pix)
    assert k.shape == psf.kernel(pix).shape
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(k, k[::-1, ::-1])
    half = (k.shape[0] // 2 + 0.5) * pix
    assert k.sum() == pytest.approx(erf(half / (np.sqrt(2) * psf.sigma)) ** 2, rel=1e-13)
    k = k / k.sum()
    c = (np.arange(k.shape[0]) - (k.shape[0] - 1) / 2) * pix
    np.testing.assert_allclose(np.sum(k.sum(axis=0) * c**2), psf.sigma**2 + pix**2 / 12,
                               rtol=1e-9)
    assert psf.pixel_integrals(pix, size=5).shape == (5, 5)


def test_gaussian_psf_undersampled_limit_is_as_documented():
    """sigma = 0.5 pixel: the point-sampled kernel's variance is 14% low (the documented
    limit of point samples), and the kernel stays lenstronomy's (not silently changed)."""
    pix = 0.1
    psf = tsl.GaussianPSF(0.5 * pix * 2 * np.sqrt(2 * np.log(2)), size=11)
    k = psf.kernel(pix)
    c = np.arange(-5, 6) * pix
    assert np.sum(k.sum(axis=0) * c**2) / psf.sigma**2 == pytest.approx(0.8601, abs=1e-3)
    k1 = np.exp(-0.5 * (c / psf.sigma) ** 2)
    np.testing.assert_allclose(k, np.outer(k1, k1) / np.outer(k1, k1).sum(), rtol=1e-13)


@pytest.mark.parametrize("fwhm,pix,truncation", [(0.1, 0.05, 4), (0.12, 0.06, 5), (0.3, 0.05, 5),
                                                 (0.7, 0.2, 3)])
def test_gaussian_psf_kernel_equals_lenstronomy(fwhm, pix, truncation):
    """Same kernel as lenstronomy's GAUSSIAN PSF (point samples at pixel-centre offsets),
    for lenstronomy's size (it rounds truncation sigma / pix where we round up)."""
    lenstronomy_or_skip()
    from lenstronomy.Data.psf import PSF
    from lenstronomy.Util import kernel_util

    ref = PSF(psf_type="GAUSSIAN", fwhm=fwhm, pixel_size=pix,
              truncation=truncation).kernel_point_source
    ours = tsl.GaussianPSF(fwhm, truncation=truncation, size=ref.shape[0]).kernel(pix)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    big = tsl.GaussianPSF(fwhm, truncation=truncation).kernel(pix)
    np.testing.assert_allclose(big, kernel_util.kernel_gaussian(big.shape[0], pix, fwhm),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("fwhm,pix,beta", [(0.1, 0.05, 4.765), (0.7, 0.2, 2.5)])
def test_moffat_psf_kernel_is_point_sampled(fwhm, pix, beta):
    """MoffatPSF's kernel is its profile at pixel-centre offsets, normalized (the
    pixel-integrated profile is still available as pixel_integrals)."""
    psf = tsl.MoffatPSF(fwhm, beta=beta, size=9)
    k = psf.kernel(pix)
    c = (np.arange(9) - 4) * pix
    ref = psf.profile(np.hypot(c[None, :], c[:, None]))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-13)
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(k, k[::-1, ::-1])
    np.testing.assert_allclose(psf.point_samples(pix), ref, rtol=1e-13)
    # pixel integration would widen it by pix^2 / 12 per axis: the kernel is narrower
    integ = psf.pixel_integrals(pix)
    integ = integ / integ.sum()
    var = lambda kk: np.sum(kk.sum(axis=0) * c**2)  # noqa: E731
    assert var(k) < var(integ)


def test_simulator_matches_lenstronomy_image_model_compact_source():
    """A compact Sersic source rendered by our Simulator (sub-pixel average, then the
    point-sampled GaussianPSF at the native scale) equals lenstronomy's ImageModel with
    the same numerics (supersampling_convolution=False) on the same grid, and is close to
    its supersampled convolution. The former pixel-integrated kernel (pixel window applied
    twice) gave chi^2 ~ 27 and ~20 at S/N 230; now 3e-4 and 2.4. lenstronomy's native
    Gaussian convolution is scipy.ndimage.gaussian_filter (7 x 7 weights here, edges padded
    with their values where we zero-pad): with a 7 x 7 GaussianPSF the images agree to
    rounding away from the edges."""
    lenstronomy_or_skip()
    from scipy.special import erf
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel

    n, pix, fwhm, s = 40, 0.05, 0.1, 3
    kw = dict(amp=20.0, R_sersic=0.12, n_sersic=1.5, e1=0.05, e2=-0.1, center_x=0.03,
              center_y=-0.02)
    c0 = -(n - 1) / 2 * pix  # RA to the right: lenstronomy's (ra, dec) are our (x, y)
    data = ImageData(image_data=np.zeros((n, n)), ra_at_xy_0=c0, dec_at_xy_0=c0,
                     transform_pix2angle=np.diag([pix, pix]))
    psf = PSF(psf_type="GAUSSIAN", fwhm=fwhm, pixel_size=pix, truncation=4)

    def lenstronomy_image(ssconv):
        model = ImageModel(data, psf, source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           kwargs_numerics={"supersampling_factor": s,
                                            "supersampling_convolution": ssconv})
        return model.image(kwargs_source=[kw])

    grid = tsl.PixelGrid(n, pix, supersample=s, dtype=F64)
    source = [tsl.SersicEllipse(b_n="lenstronomy", dtype=F64)]
    ours = tsl.Simulator(grid, source=source, psf=tsl.GaussianPSF(fwhm))(source=[kw]).numpy()[0]
    # the former convention: the Gaussian integrated over each 9 x 9 pixel
    sig = tsl.GaussianPSF(fwhm).sigma * np.sqrt(2)
    cc = np.arange(-4, 5) * pix
    k1 = erf((cc + pix / 2) / sig) - erf((cc - pix / 2) / sig)
    old_psf = tsl.PixelPSF(np.outer(k1, k1))
    old = tsl.Simulator(grid, source=source, psf=old_psf)(source=[kw]).numpy()[0]

    for ssconv, new_max, old_min in ((False, 1e-2, 20.0), (True, 4.0, 15.0)):
        ref = lenstronomy_image(ssconv)
        noise = np.sqrt(np.sum(ref**2)) / 230.0  # S/N 230
        chi2_new = np.sum(((ours - ref) / noise) ** 2)
        chi2_old = np.sum(((old - ref) / noise) ** 2)
        assert chi2_new < new_max, (ssconv, chi2_new)
        assert chi2_old > old_min and chi2_new < chi2_old / 5, (ssconv, chi2_old, chi2_new)
    ours7 = tsl.Simulator(grid, source=source, psf=tsl.GaussianPSF(fwhm, size=7))(source=[kw])
    ref = lenstronomy_image(False)
    np.testing.assert_allclose(ours7.numpy()[0, 4:-4, 4:-4], ref[4:-4, 4:-4], rtol=1e-12,
                               atol=1e-14 * ref.max())


def _asym_kernel(k, rng):
    ker = rng.uniform(0.0, 1.0, (k, k))
    ker[0, -1] += 3.0  # strongly asymmetric: catches a missing (or double) flip
    return ker / ker.sum()


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-6), (F64, 1e-12)])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(12, 12), (11, 14), (3, 9, 10)])
def test_convolve_matches_scipy_fftconvolve_same(dtype, tol, k, shape, rng):
    img = rng.normal(size=shape) + 2.0
    ker = _asym_kernel(k, rng)
    ref = np.array([fftconvolve(im, ker, mode="same") for im in img.reshape(-1, *shape[-2:])])
    ref = ref.reshape(shape)
    scale = np.max(np.abs(ref))
    img_t = tf.constant(img, dtype)
    outs = {m: tsl.convolve(img_t, ker, method=m).numpy()
            for m in ("direct", "shift", "fft", "auto")}
    for m, out in outs.items():
        assert out.shape == shape and out.dtype == dtype.as_numpy_dtype
        assert np.max(np.abs(out - ref)) / scale < 3 * tol, m
    assert np.max(np.abs(outs["direct"] - outs["fft"])) / scale < tol
    assert np.max(np.abs(outs["shift"] - outs["fft"])) / scale < tol


def test_convolve_large_kernel_auto_is_fft_and_jit(rng):
    img = tf.constant(rng.normal(size=(2, 40, 40)))
    ker = _asym_kernel(21, rng)  # > SHIFT_MAX_SIZE
    ref = np.array([fftconvolve(im, ker, mode="same") for im in img.numpy()])
    np.testing.assert_allclose(tsl.convolve(img, ker).numpy(), ref, atol=1e-12)
    for method in ("direct", "shift"):
        jitted = tf.function(lambda im: tsl.convolve(im, ker, method=method), jit_compile=True)
        np.testing.assert_allclose(jitted(img).numpy(), ref, atol=1e-12)


def test_psf_convolution_conserves_flux_away_from_edges(rng):
    grid = tsl.PixelGrid(40, 0.05, dtype=F64)
    x, y = grid.coordinates(supersampled=False)
    src = tsl.Gaussian(dtype=F64).surface_brightness(x, y, amp=3.0, sigma=0.1, center_x=0.1)
    img = src * grid.pixel_area
    for psf in (tsl.GaussianPSF(0.15), tsl.PixelPSF(_asym_kernel(7, rng))):
        out = psf.convolve(img, grid.pixel_scale)
        np.testing.assert_allclose(np.sum(out.numpy()), np.sum(img.numpy()), rtol=1e-12)
        assert abs(np.sum(out.numpy()) - 3.0) < 1e-6  # the whole source sits in the image


def test_pixel_psf_normalizes_and_round_trips(rng):
    ker = _asym_kernel(5, rng) * 7.0
    psf = tsl.PixelPSF(ker)
    np.testing.assert_allclose(psf.kernel(0.1), ker / ker.sum(), rtol=1e-15)
    raw = tsl.PixelPSF(ker, normalize=False)
    np.testing.assert_allclose(raw.kernel(), ker, rtol=0)
    for p in (psf, raw, tsl.GaussianPSF(0.2, size=9)):
        q = psf_from_config(p.get_config())
        np.testing.assert_array_equal(q.kernel(0.05), p.kernel(0.05))
    assert psf_from_config(None) is None


@pytest.mark.parametrize("make,name", [
    (lambda: tsl.GaussianPSF(0.0), "fwhm"),
    (lambda: tsl.GaussianPSF(-0.1), "fwhm"),
    (lambda: tsl.GaussianPSF(float("nan")), "fwhm"),
    (lambda: tsl.GaussianPSF(0.1, size=4), "size"),
    (lambda: tsl.GaussianPSF(0.1, truncation=0.0), "truncation"),
    (lambda: tsl.GaussianPSF(0.1).kernel(0.0), "pixel_scale"),
    (lambda: tsl.PixelPSF(np.ones((4, 4))), "kernel"),
    (lambda: tsl.PixelPSF(np.ones((3, 5))), "kernel"),
    (lambda: tsl.PixelPSF(np.ones(5)), "kernel"),
    (lambda: tsl.PixelPSF(np.ones((2, 3, 3))), "kernel"),
    (lambda: tsl.PixelPSF(np.where(np.eye(3) > 0, np.nan, 1.0)), "kernel"),
    (lambda: tsl.PixelPSF(np.zeros((3, 3))), "kernel"),
    (lambda: tsl.convolve(np.ones((5, 5)), np.ones((3, 3)), method="fast"), "method"),
    (lambda: tsl.convolve(np.ones((5, 5)), tf.ones((3,))), "kernel"),
    (lambda: psf_from_config({"type": "airy"}), "type"),
])
def test_psf_bad_input(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("k", [3, 7])
def test_shift_convolution_gradient_is_the_adjoint(k, rng):
    """The shift method has a hand-written gradient (the flipped-kernel convolution); it
    must equal the autodiff gradients of the FFT and conv2d methods, also under XLA."""
    img = tf.constant(rng.normal(size=(2, 13, 10)))
    ker = _asym_kernel(k, rng)
    weights = tf.constant(rng.normal(size=(2, 13, 10)))

    def grad(method):
        with tf.GradientTape() as tape:
            tape.watch(img)
            loss = tf.reduce_sum(tsl.convolve(img, ker, method=method) * weights)
        return tape.gradient(loss, img)

    ref = grad("fft").numpy()
    np.testing.assert_allclose(grad("shift").numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(grad("direct").numpy(), ref, atol=1e-12)
    jitted = tf.function(lambda: grad("shift"), jit_compile=True)
    np.testing.assert_allclose(jitted().numpy(), ref, atol=1e-12)
