"""Tests of PixelatedConvergence: FFT Poisson solver on a pixelated convergence map.

Accuracy tests use float64. Against smooth analytic profiles the expected error is the
discretization error of the pixelated model, O(h^2) times second derivatives (midpoint-rule
sampling of kappa on the pixels plus bilinear interpolation of the fields): tolerances are
set from that scaling and the scaling itself is tested by halving the pixel size.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate
from scipy.special import exp1

from tfstronglens import PixelGrid, Simulator
from tfstronglens.lensing import GaussianPSF
from tfstronglens.profiles import SIE, Gaussian, PixelatedConvergence, get_profile
from tfstronglens.profiles.pixelated_convergence import square_pixel_kernels


# ---------------------------------------------------------------------------- helpers
def centres(n, h):
    return (np.arange(n) - 0.5 * (n - 1)) * h


def map_grid(n, h):
    c = centres(n, h)
    return np.meshgrid(c, c)


def gaussian_lens(x, y, amp, sigma, x0=0.0, y0=0.0):
    """Circular Gaussian kappa = amp exp(-r^2 / 2 s^2) and its exact alpha, psi.

    alpha(r) = 2 amp s^2 (1 - exp(-r^2 / 2 s^2)) / r (radial);
    psi(r) = amp s^2 (E1(r^2 / 2 s^2) + ln r^2), the exact (1/pi) int kappa ln|theta - theta'|
    (it tends to (M / pi) ln r with M = 2 pi amp s^2, and to amp s^2 (ln 2 s^2 - gamma) at 0).
    """
    dx, dy = x - x0, y - y0
    r2 = dx * dx + dy * dy
    u = r2 / (2 * sigma**2)
    kappa = amp * np.exp(-u)
    safe = np.maximum(r2, 1e-300)
    a = np.where(r2 > 0, 2 * amp * sigma**2 * -np.expm1(-u) / safe, 0.0)
    psi = np.where(r2 > 0, amp * sigma**2 * (exp1(np.maximum(u, 1e-300)) + np.log(safe)),
                   amp * sigma**2 * (np.log(2 * sigma**2) - np.euler_gamma))
    return kappa, a * dx, a * dy, psi


def direct_sum(kappa, h, px, py):
    """O(n^2) per point: exact field of the uniform-square pixels at offsets (px, py) (arcsec,
    relative to the map centre), with the same closed-form kernels (no FFT)."""
    n = kappa.shape[-1]
    c = centres(n, h)
    ox = (px[..., None, None] - c[None, :]) / h
    oy = (py[..., None, None] - c[:, None]) / h
    kx, ky, kp = square_pixel_kernels(ox, oy)
    ax = h / np.pi * np.sum(kappa * kx, axis=(-2, -1))
    ay = h / np.pi * np.sum(kappa * ky, axis=(-2, -1))
    psi = h * h / np.pi * np.sum(kappa * (kp + np.log(h)), axis=(-2, -1))
    return ax, ay, psi


def lumpy_map(n, h):
    """An asymmetric smooth map (elliptical + offset blobs) that fills the middle of the map."""
    x, y = map_grid(n, h)
    return (np.exp(-0.5 * (((x - 0.3) / 0.5) ** 2 + ((y + 0.2) / 0.3) ** 2))
            + 0.5 * np.exp(-0.5 * ((x + 0.8) ** 2 + (y - 0.6) ** 2) / 0.25**2))


# --------------------------------------------------------------------- kernels
@pytest.mark.parametrize("X,Y", [(0.0, 0.0), (0.3, 0.1), (0.5, 0.5), (0.5, 0.0), (1.0, 0.0),
                                 (0.7, -0.2), (2.0, -3.0), (7.9, 0.3), (8.1, 0.3), (-20.0, 5.0)])
def test_square_kernels_match_quadrature(X, Y):
    """Closed forms (and the far series beyond 8 pixels) equal numerical quadrature over the
    square to ~1e-15, including on the square itself (self pixel, edge, corner)."""

    def quad(f):
        total = 0.0  # split the square so that a singularity sits on a sub-square corner
        for a, b in ((-0.5, X), (X, 0.5)) if abs(X) < 0.5 else ((-0.5, 0.5),):
            for c, d in ((-0.5, Y), (Y, 0.5)) if abs(Y) < 0.5 else ((-0.5, 0.5),):
                total += integrate.dblquad(lambda wy, wx: f(X - wx, Y - wy), a, b, c, d,
                                           epsabs=1e-14, epsrel=1e-14)[0]
        return total

    def safe(fn):
        return lambda u, v: fn(u, v) if u * u + v * v > 0 else 0.0

    kx, ky, kp = square_pixel_kernels(X, Y)
    np.testing.assert_allclose(kx, quad(safe(lambda u, v: u / (u * u + v * v))), atol=2e-14)
    np.testing.assert_allclose(ky, quad(safe(lambda u, v: v / (u * u + v * v))), atol=2e-14)
    np.testing.assert_allclose(kp, quad(safe(lambda u, v: 0.5 * np.log(u * u + v * v))),
                               atol=2e-14)


def test_square_kernel_identities(rng):
    """grad(kpsi) = (kx, ky) and div(kx, ky) = 2 pi [inside the square], by central
    differences at random points (step 1e-4: truncation ~1e-8)."""
    X = np.concatenate([rng.uniform(-0.45, 0.45, 20), rng.uniform(-12, 12, 40)])
    Y = np.concatenate([rng.uniform(-0.45, 0.45, 20), rng.uniform(-12, 12, 40)])
    keep = (np.abs(np.abs(X) - 0.5) > 0.01) & (np.abs(np.abs(Y) - 0.5) > 0.01)
    X, Y = X[keep], Y[keep]
    e = 1e-4
    kx, ky, _ = square_pixel_kernels(X, Y)
    gx = (square_pixel_kernels(X + e, Y)[2] - square_pixel_kernels(X - e, Y)[2]) / (2 * e)
    gy = (square_pixel_kernels(X, Y + e)[2] - square_pixel_kernels(X, Y - e)[2]) / (2 * e)
    np.testing.assert_allclose(gx, kx, atol=1e-7)
    np.testing.assert_allclose(gy, ky, atol=1e-7)
    div = ((square_pixel_kernels(X + e, Y)[0] - square_pixel_kernels(X - e, Y)[0])
           + (square_pixel_kernels(X, Y + e)[1] - square_pixel_kernels(X, Y - e)[1])) / (2 * e)
    inside = (np.abs(X) < 0.5) & (np.abs(Y) < 0.5)
    np.testing.assert_allclose(div, np.where(inside, 2 * np.pi, 0.0), atol=1e-6)
    assert inside.sum() >= 10 and (~inside).sum() >= 10


# ----------------------------------------------------------- FFT == direct sum
@pytest.mark.parametrize("margin", [0, 3])
def test_fft_equals_direct_sum_no_wraparound(rng, margin):
    """At the (extended) pixel centres the FFT result equals the O(n^4) direct sum of the
    square kernels to machine precision, for a random map and for mass on one edge: a
    column of mass on the left edge deflects every point to its right towards +x (a
    periodic FFT would wrap that mass around and reverse the sign near the right edge)."""
    n, h = 9, 0.2
    cx, cy = 0.13, -0.07
    prof = PixelatedConvergence(n, h, margin=margin, dtype=tf.float64)
    edge = np.zeros((n, n))
    edge[:, 0] = 1.0
    kappa = np.stack([rng.normal(size=(n, n)), edge])
    c = (np.arange(-margin, n + margin) - 0.5 * (n - 1)) * h
    px, py = np.meshgrid(c, c)
    ax, ay = prof.deflection(px + cx, py + cy, kappa=kappa, center_x=cx, center_y=cy)
    psi = prof.potential(px + cx, py + cy, kappa=kappa, center_x=cx, center_y=cy)
    dax, day, dpsi = direct_sum(kappa[:, None, None], h, px, py)
    for got, want in ((ax, dax), (ay, day), (psi, dpsi)):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * scale)
    right = px > -0.5 * (n - 1) * h + 1e-9  # every column to the right of the mass
    assert np.all(ax[1][right] > 0)
    np.testing.assert_allclose(ay[1], -ay[1][::-1], atol=1e-14)  # mirror symmetry in y


# ------------------------------------------------------- analytic Gaussian lens
def test_gaussian_deflection_potential_converge():
    """An off-centre Gaussian kappa sampled on the map: deflection, potential and
    convergence at off-grid points inside |r| < 1 (well inside the map, where the sampled
    Gaussian is not truncated: it is < 1e-15 at the map edge) match the closed forms with
    errors falling as h^2 (ratio ~4 per halving of h)."""
    amp, sigma, x0, y0 = 1.0, 0.3, 0.2, -0.1
    width = 4.0
    rng = np.random.default_rng(0)
    px, py = rng.uniform(-1, 1, 400), rng.uniform(-1, 1, 400)
    _, tax, tay, tpsi = gaussian_lens(px, py, amp, sigma, x0, y0)
    tkap = gaussian_lens(px, py, amp, sigma, x0, y0)[0]
    errs = []
    for n in (32, 64, 128):
        h = width / n
        gx, gy = map_grid(n, h)
        kappa = gaussian_lens(gx, gy, amp, sigma, x0, y0)[0]
        prof = PixelatedConvergence(n, h, dtype=tf.float64)
        ax, ay = prof.deflection(px, py, kappa=kappa)
        psi = prof.potential(px, py, kappa=kappa)
        kap = prof.convergence(px, py, kappa=kappa)
        # and on the pixel centres (no interpolation error there)
        gax, _ = prof.deflection(gx, gy, kappa=kappa)
        errs.append([np.max(np.hypot(ax - tax, ay - tay)), np.max(np.abs(psi - tpsi)),
                     np.max(np.abs(kap - tkap)),
                     np.max(np.abs(gax - gaussian_lens(gx, gy, amp, sigma, x0, y0)[1]))])
    errs = np.array(errs)
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 3.3) & (ratios < 4.8)), ratios  # second-order convergence
    # at h = sigma / 9.6 (n = 128): peak |alpha| = 0.27, peak psi ~ 0.1, peak kappa 1
    assert errs[-1, 0] < 1.2e-3 and errs[-1, 1] < 4e-4
    assert errs[-1, 2] < 3e-3 and errs[-1, 3] < 4e-4



@pytest.mark.parametrize("supersample,margin", [(2, 0), (3, 1)])
def test_supersampled_ray_grid_is_exact(supersample, margin, rng):
    """On the rays of a supersampled PixelGrid of the map's size (the Simulator's rays, also
    with the map off-centre), a map built with the same ``supersample`` returns the exact
    field of its uniform squares (the direct O(n^4) sum) with no interpolation error."""
    n, h, cx, cy = 10, 0.2, 0.05, -0.03
    kappa = rng.uniform(0.0, 1.0, (n, n))
    x, y = (t.numpy() for t in PixelGrid(n, h, supersample, dtype=tf.float64).coordinates())
    prof = PixelatedConvergence(n, h, margin=margin, supersample=supersample, dtype=tf.float64)
    ax, ay = prof.deflection(x + cx, y + cy, kappa=kappa, center_x=cx, center_y=cy)
    psi = prof.potential(x + cx, y + cy, kappa=kappa, center_x=cx, center_y=cy)
    dax, day, dpsi = direct_sum(kappa, h, x, y)
    for got, want in ((ax, dax), (ay, day), (psi, dpsi)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.max(np.abs(want)))
    # the same rays through a map without supersampling are interpolated: not exact
    coarse = PixelatedConvergence(n, h, dtype=tf.float64).deflection(x, y, kappa=kappa)[0]
    assert np.max(np.abs(coarse - dax)) > 1e-4 * np.max(np.abs(dax))


def test_smooth_quadrature_matches_analytic_gaussian_to_1e4():
    """quadrature="smooth" (kappa - h^2/24 Lap kappa, alpha = fourth-order differences of
    psi) with bicubic interpolation: an analytic Gaussian convergence sampled at sigma/h =
    9.6 gives the exact deflection to < 1e-4 of its peak at random off-grid points and on
    the pixel centres (the uniform-square model is off by ~1e-3 there, and bilinear
    interpolation off the grid by ~2e-3), converging at fourth order."""
    amp, sigma, x0, y0 = 1.0, 0.3, 0.2, -0.1
    rng = np.random.default_rng(0)
    px, py = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    _, tax, tay, tpsi = gaussian_lens(px, py, amp, sigma, x0, y0)
    peak = 0.9025 * amp * sigma  # max of 2 amp s^2 (1 - exp(-r^2/2s^2)) / r
    errs = []
    for n in (64, 128):
        h = 4.0 / n
        gx, gy = map_grid(n, h)
        kappa = gaussian_lens(gx, gy, amp, sigma, x0, y0)[0]
        _, gax, gay, _ = gaussian_lens(gx, gy, amp, sigma, x0, y0)
        row = []
        for quad, interp in (("smooth", "bicubic"), ("square", "bicubic"),
                             ("smooth", "bilinear")):
            prof = PixelatedConvergence(n, h, quadrature=quad, interpolation=interp,
                                        dtype=tf.float64)
            ax, ay = prof.deflection(px, py, kappa=kappa)
            cx_, cy_ = prof.deflection(gx, gy, kappa=kappa)
            psi = prof.potential(px, py, kappa=kappa)
            row += [max(np.max(np.hypot(ax - tax, ay - tay)),
                        np.max(np.hypot(cx_ - gax, cy_ - gay))) / peak,
                    np.max(np.abs(psi - tpsi))]
        errs.append(row)
    errs = np.array(errs)
    assert errs[1, 0] < 1e-4 and errs[1, 1] < 1e-5, errs  # smooth
    assert errs[1, 2] > 5e-4, errs  # square: second order only
    assert errs[1, 4] > 1e-3, errs  # bilinear interpolation: second order only
    assert errs[0, 0] / errs[1, 0] > 8.0, errs

def test_agrees_with_lenstronomy_point_kernel():
    """Cross-check of conventions (axes, signs, units) with lenstronomy's point-mass FFT
    kernel on an asymmetric map: the two discretizations differ only in the near field of
    each pixel, by < 0.05% of the peak deflection for this smooth map (sigma >= 2.5 pix)."""
    ci = pytest.importorskip("lenstronomy.LensModel.convergence_integrals")
    n, h = 48, 0.1
    kappa = lumpy_map(n, h)
    gx, gy = map_grid(n, h)
    ax, ay = PixelatedConvergence(n, h, dtype=tf.float64).deflection(gx, gy, kappa=kappa)
    lx, ly = ci.deflection_from_kappa_grid(kappa, h)
    peak = np.max(np.hypot(ax, ay))
    assert peak > 0.3
    np.testing.assert_allclose(ax, lx, atol=5e-4 * peak)
    np.testing.assert_allclose(ay, ly, atol=5e-4 * peak)


# ------------------------------------------------------------------ identities
def test_divergence_and_curl_identities():
    """Autodiff hessian at cell midpoints (where the bilinear derivatives are central
    differences): div(alpha) / 2 = kappa and f_xy = f_yx up to the O(h^2) discretization,
    and the error drops ~4x when h halves."""
    errs = []
    for n, h in ((24, 0.2), (48, 0.1)):
        kappa = lumpy_map(n, h)
        prof = PixelatedConvergence(n, h, interpolation="bilinear", dtype=tf.float64)
        m = centres(n, h)[:-1] + 0.5 * h
        inner = m[np.abs(m) < 1.6]
        mx, my = np.meshgrid(inner, inner)
        fxx, fxy, fyx, fyy = prof.hessian(mx, my, kappa=kappa)
        kap = prof.convergence(mx, my, kappa=kappa)
        errs.append([np.max(np.abs(0.5 * (fxx + fyy) - kap)), np.max(np.abs(fxy - fyx))])
    errs = np.array(errs)
    assert errs[1, 0] < 5e-3 and errs[1, 1] < 4e-3  # peak kappa ~ 1
    assert np.all(errs[0] / errs[1] > 3.0), errs


def test_deflection_is_gradient_of_potential():
    """alpha = grad psi (autodiff of the potential at cell midpoints), to O(h^2): 1.5% of
    the peak deflection at h = 0.1 and ~4x better at h = 0.05."""
    errs = []
    for n, h in ((48, 0.1), (96, 0.05)):
        kappa = lumpy_map(n, h)
        prof = PixelatedConvergence(n, h, dtype=tf.float64)
        m = centres(n, h)[:-1] + 0.5 * h
        inner = m[np.abs(m) < 1.6][::2]
        x, y = (tf.constant(v) for v in np.meshgrid(inner, inner))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, y])
            psi = prof.potential(x, y, kappa=kappa)
        gx, gy = tape.gradient(psi, [x, y])
        ax, ay = prof.deflection(x, y, kappa=kappa)
        errs.append(np.max(np.hypot(gx - ax, gy - ay)) / np.max(np.hypot(ax, ay)))
    assert errs[1] < 4e-3 and errs[0] / errs[1] > 3.0, errs


def test_linearity_in_kappa(rng):
    n, h = 16, 0.15
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    k1, k2 = rng.normal(size=(2, n, n))
    x, y = rng.uniform(-2, 2, (2, 50))  # inside and outside the map
    a, b = 0.7, -1.9
    for method in ("deflection", "potential", "convergence"):
        f = getattr(prof, method)
        lhs = np.asarray(f(x, y, kappa=a * k1 + b * k2))
        rhs = a * np.asarray(f(x, y, kappa=k1)) + b * np.asarray(f(x, y, kappa=k2))
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-13 * np.max(np.abs(lhs)))


# --------------------------------------------------------------- outside the map
def test_outside_the_map_continuous_and_asymptotic():
    """Outside the box of field values: continuous across the box edge, and close to the
    exact field of the pixels (direct sum), with an error decaying with distance (order-4
    multipole expansion). Measured for the asymmetric map (relative to |alpha|): 1.4e-3
    just beyond the corners, 1.2e-4 at 2x, 1e-11 at 50x."""
    n, h = 32, 0.125
    kappa = lumpy_map(n, h)
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    half = 0.5 * (n - 1) * h
    # continuity: just inside vs just outside the box, along its edges and at corners
    s = np.linspace(-half, half, 25)
    edge_x = np.concatenate([np.full(25, half), np.full(25, -half), s, s])
    edge_y = np.concatenate([s, s, np.full(25, half), np.full(25, -half)])
    nx = np.sign(edge_x) * (np.abs(edge_x) >= half)
    ny = np.sign(edge_y) * (np.abs(edge_y) >= half)
    for f in (prof.deflection, prof.potential):
        inn = np.asarray(f(edge_x - 1e-9 * nx, edge_y - 1e-9 * ny, kappa=kappa))
        out = np.asarray(f(edge_x + 1e-9 * nx, edge_y + 1e-9 * ny, kappa=kappa))
        np.testing.assert_allclose(out, inn, atol=1e-8)
    # accuracy against the exact field of the pixels, on rings of growing size
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rel = []
    for factor in (1.05, 1.5, 2.0, 5.0, 50.0):
        r = factor * np.sqrt(2.0) * half  # beyond the corners: every point is outside
        px, py = r * np.cos(ang), r * np.sin(ang)
        ax, ay = prof.deflection(px, py, kappa=kappa)
        dax, day, _ = direct_sum(kappa, h, px, py)
        rel.append(np.max(np.hypot(ax - dax, ay - day) / np.hypot(dax, day)))
    assert rel[0] < 3e-3 and rel[2] < 3e-4 and rel[-1] < 1e-9, rel
    assert all(a > b for a, b in zip(rel[1:], rel[2:])), rel


def test_convergence_interpolation():
    """kappa is exact at the pixel centres, bilinear, falls linearly to 0 over one pixel
    beyond the outer centres, and is 0 further out."""
    n, h = 6, 0.5
    rng = np.random.default_rng(3)
    kappa = rng.uniform(0.5, 1.5, (n, n))
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    gx, gy = map_grid(n, h)
    np.testing.assert_allclose(prof.convergence(gx + 0.3, gy - 0.2, kappa=kappa,
                                                center_x=0.3, center_y=-0.2), kappa, atol=1e-15)
    half = 0.5 * (n - 1) * h
    y = centres(n, h)
    np.testing.assert_allclose(prof.convergence(np.full(n, half + 0.5 * h), y, kappa=kappa),
                               0.5 * kappa[:, -1], atol=1e-15)
    far = prof.convergence(np.array([half + h, half + 1.5 * h, 0.0, 10.0]),
                           np.array([0.0, 0.0, -half - 1.01 * h, 10.0]), kappa=kappa)
    np.testing.assert_allclose(far, 0.0, atol=0)
    mid = prof.convergence(np.array([y[1] + 0.25 * h]), np.array([y[2]]), kappa=kappa)
    np.testing.assert_allclose(mid, 0.75 * kappa[2, 1] + 0.25 * kappa[2, 2], atol=1e-15)


# ------------------------------------------------------- batching, jit, dtypes
def test_batching_equals_loop(rng):
    n, h, B = 12, 0.2, 3
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    kappa = rng.normal(size=(B, n, n))
    cx = rng.uniform(-0.3, 0.3, (B, 1, 1))
    cy = rng.uniform(-0.3, 0.3, (B, 1, 1))
    x2, y2 = rng.uniform(-1.8, 1.8, (2, 5, 7))          # shared [H, W] positions
    x3, y3 = rng.uniform(-1.8, 1.8, (2, B, 5, 7))       # per-lens [B, H, W] positions
    for method in ("deflection", "potential", "convergence", "hessian"):
        f = getattr(prof, method)
        for x, y in ((x2, y2), (x3, y3)):
            got = np.asarray(f(x, y, kappa=kappa, center_x=cx, center_y=cy))
            for b in range(B):
                xb, yb = (x, y) if x.ndim == 2 else (x[b], y[b])
                want = np.asarray(f(xb, yb, kappa=kappa[b], center_x=cx[b, 0, 0],
                                    center_y=cy[b, 0, 0]))
                assert got.shape[-3:] == (B, 5, 7) or got.shape == (B, 5, 7)
                np.testing.assert_allclose(got[..., b, :, :], want, rtol=1e-12, atol=1e-14)
    # a single map with batched scalar parameters, and a nested batch [2, B]
    ax = prof.deflection(x2, y2, kappa=kappa[0], center_x=cx, center_y=cy)[0]
    assert ax.shape == (B, 5, 7)
    ax = prof.deflection(x2, y2, kappa=np.stack([kappa, 2 * kappa]))[0]
    np.testing.assert_allclose(ax[1], 2 * np.asarray(ax[0]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_jit_equals_eager(dtype, rng):
    n, h = 16, 0.15
    prof = PixelatedConvergence(n, h, margin=2, dtype=dtype)
    kappa = tf.constant(rng.uniform(0, 1, (2, n, n)), dtype)
    x, y = (tf.constant(v, dtype) for v in rng.uniform(-2.5, 2.5, (2, 6, 6)))

    def everything(x, y, kappa):
        out = (prof.deflection(x, y, kappa=kappa), prof.potential(x, y, kappa=kappa),
               prof.convergence(x, y, kappa=kappa))
        if dtype == tf.float64:  # (one dtype only: compiling the hessian is slow)
            out += (prof.hessian(x, y, kappa=kappa),)
        return out

    eager = tf.nest.flatten(everything(x, y, kappa))
    jitted = tf.nest.flatten(tf.function(everything, jit_compile=True)(x, y, kappa))
    tol = 1e-5 if dtype == tf.float32 else 1e-12
    for got, want in zip(jitted, eager):
        assert got.dtype == dtype and got.shape == (2, 6, 6)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.max(np.abs(want)))


def test_float32_matches_float64(rng):
    n, h = 32, 0.1
    kappa = lumpy_map(n, h)
    x, y = rng.uniform(-2.0, 2.0, (2, 200))
    p32 = PixelatedConvergence(n, h)
    p64 = PixelatedConvergence(n, h, dtype=tf.float64)
    for method in ("deflection", "potential"):
        a = np.asarray(getattr(p32, method)(x, y, kappa=kappa))
        b = np.asarray(getattr(p64, method)(x, y, kappa=kappa))
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=2e-6 * np.max(np.abs(b)))  # float32 FFT rounding


# ------------------------------------------------------------------- gradients
def test_gradient_wrt_kappa_matches_finite_difference(rng):
    """The outputs are linear in kappa, so a central difference with unit step is exact up
    to rounding; compared for a few map pixels, with positions inside and outside."""
    n, h = 10, 0.2
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    x, y = rng.uniform(-1.5, 1.5, (2, 30))
    w = rng.normal(size=(3, 30))

    def loss(k):
        ax, ay = prof.deflection(x, y, kappa=k)
        psi = prof.potential(x, y, kappa=k)
        return tf.reduce_sum(w[0] * ax + w[1] * ay + w[2] * psi)

    k0 = tf.constant(rng.normal(size=(n, n)))
    with tf.GradientTape() as tape:
        tape.watch(k0)
        val = loss(k0)
    grad = tape.gradient(val, k0).numpy()
    assert np.all(np.isfinite(grad))
    for i, j in ((0, 0), (3, 7), (9, 9), (5, 0)):
        e = np.zeros((n, n))
        e[i, j] = 1.0
        fd = (loss(k0 + e) - loss(k0 - e)).numpy() / 2
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,jit", [(tf.float32, True), (tf.float64, False)])
def test_gradients_finite_everywhere(dtype, jit):
    """Finite gradients w.r.t. kappa, x, y and the centre at pixel centres, the map centre,
    the box edge and corner, just outside, and far away (compiled for float32; eager for
    float64 to save compile time)."""
    n, h = 8, 0.25
    prof = PixelatedConvergence(n, h, dtype=dtype)
    half = 0.5 * (n - 1) * h
    pts = np.array([[0.0, 0.0], [0.125, 0.125], [half, 0.0], [half, half], [-half, 0.3],
                    [half + 1e-3, 0.0], [half + 0.5 * h, half + h], [50.0, -40.0],
                    [0.5 * n * h, 0.0]])
    x = tf.constant(pts[:, 0], dtype)
    y = tf.constant(pts[:, 1], dtype)
    kappa = tf.constant(np.random.default_rng(1).uniform(0, 1, (n, n)), dtype)
    cx = tf.constant(0.0, dtype)

    def grads(x, y, kappa, cx):
        with tf.GradientTape() as tape:
            tape.watch([x, y, kappa, cx])
            ax, ay = prof.deflection(x, y, kappa=kappa, center_x=cx)
            psi = prof.potential(x, y, kappa=kappa, center_x=cx)
            kap = prof.convergence(x, y, kappa=kappa, center_x=cx)
            total = tf.reduce_sum(ax + 2 * ay + 3 * psi + kap)
        return total, tape.gradient(total, [x, y, kappa, cx])

    total, gs = (tf.function(grads, jit_compile=True) if jit else grads)(x, y, kappa, cx)
    assert np.isfinite(total.numpy())
    for g in gs:
        assert np.all(np.isfinite(g.numpy()))
    assert np.any(gs[2].numpy() != 0) and np.any(gs[3].numpy() != 0)
    hess = prof.hessian(x, y, kappa=kappa)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in hess)


# ------------------------------------------------------------------- simulator
def test_in_simulator_with_sie():
    grid = PixelGrid(24, 0.1, supersample=2, dtype=tf.float64)
    n = 20
    pix = PixelatedConvergence(n, 0.14, dtype=tf.float64)
    src = Gaussian(dtype=tf.float64)
    kw_sie = dict(theta_E=0.8, e1=0.1, e2=-0.05)
    kw_src = [dict(amp=5.0, sigma=0.15, center_x=0.05, center_y=0.02)]
    sim = Simulator(grid, lens=[SIE(dtype=tf.float64), pix], source=[src],
                    psf=GaussianPSF(0.1))
    ref = Simulator(grid, lens=[SIE(dtype=tf.float64)], source=[src], psf=GaussianPSF(0.1),
                    jit_compile=False)  # (saves a compile; jit == eager is tested above)
    # a batch of two maps (one zero) against a shared SIE: the zero map gives the SIE image
    gx, gy = map_grid(n, 0.14)
    blob = 0.3 * np.exp(-((gx - 0.4) ** 2 + (gy - 0.3) ** 2) / (2 * 0.1**2))
    kappa = tf.constant(np.stack([np.zeros((n, n)), blob]))
    img = sim(lens=[kw_sie, dict(kappa=kappa)], source=kw_src)
    assert img.shape == (2, 24, 24) and np.all(np.isfinite(img))
    img_sie = ref(lens=[kw_sie], source=kw_src)
    np.testing.assert_allclose(img[0], img_sie[0], rtol=0, atol=1e-14)
    assert np.max(np.abs(img[1] - img[0])) > 1e-3 * np.max(img[0])
    # config round trip (Simulator.from_config rebuilds the profile), uncompiled to keep
    # the test fast (compiled gradients are tested above); gradient of an image loss
    config = sim.get_config()
    config["jit_compile"] = False
    rebuilt = Simulator.from_config(config)
    with tf.GradientTape() as tape:
        tape.watch(kappa)
        img2 = rebuilt(lens=[kw_sie, dict(kappa=kappa)], source=kw_src)
        loss = tf.reduce_sum(img2**2)
    np.testing.assert_allclose(img2, img, atol=1e-14)
    g = tape.gradient(loss, kappa)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g[1])) > 0


def test_registry_and_config():
    prof = get_profile("PIXELATED_CONVERGENCE", num_pix=5, pixel_scale=0.2, margin=1)
    assert isinstance(prof, PixelatedConvergence)
    again = get_profile(**prof.get_config())
    assert (again.num_pix, again.pixel_scale, again.margin) == (5, 0.2, 1)
    assert again.get_config() == prof.get_config()
    assert "PixelatedConvergence" in repr(prof)


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,name", [
    (dict(num_pix=1, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=4.5, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=True, pixel_scale=0.1), "num_pix"),
    (dict(num_pix=8, pixel_scale=0.0), "pixel_scale"),
    (dict(num_pix=8, pixel_scale=-0.1), "pixel_scale"),
    (dict(num_pix=8, pixel_scale=float("nan")), "pixel_scale"),
    (dict(num_pix=8, pixel_scale=0.1, margin=-1), "margin"),
    (dict(num_pix=8, pixel_scale=0.1, dtype=tf.int32), "dtype"),
    (dict(num_pix=8, pixel_scale=0.1, supersample=0), "supersample"),
    (dict(num_pix=8, pixel_scale=0.1, interpolation="nearest"), "interpolation"),
    (dict(num_pix=8, pixel_scale=0.1, quadrature="simpson"), "quadrature"),
])
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PixelatedConvergence(**kwargs)


def test_bad_call_arguments():
    n = 6
    prof = PixelatedConvergence(n, 0.1)
    x = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"kappa must have shape \[\.\.\., 6, 6\]"):
        prof.deflection(x, x, kappa=np.zeros((n, n + 1)))
    with pytest.raises(ValueError, match="kappa"):
        prof.potential(x, x, kappa=np.zeros(n))
    bad = np.zeros((n, n))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="kappa must be finite"):
        prof.deflection(x, x, kappa=bad)
    with pytest.raises(ValueError, match="kappa"):  # batch 3 against positions of batch 2
        prof.deflection(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), kappa=np.zeros((3, n, n)))
    with pytest.raises(ValueError, match="missing"):
        prof.deflection(x, x)
    with pytest.raises(ValueError, match="x must be finite"):
        prof.convergence(np.full((2, 2), np.inf), x[:2, :2], kappa=np.zeros((n, n)))
    grid = PixelGrid(8, 0.1)
    sim = Simulator(grid, lens=[prof], source=[Gaussian()])
    with pytest.raises(ValueError, match="kappa"):
        sim(lens=[dict(kappa=np.zeros((n + 1, n + 1)))], source=[dict(amp=1.0, sigma=0.1)])


def test_unknown_kappa_rank_in_graph(rng):
    """Inside a tf.function whose kappa shape is relaxed to unknown rank (what
    ``reduce_retracing=True`` does after maps of different ranks), results are unchanged
    for positions of rank >= 2."""
    n, h = 8, 0.2
    prof = PixelatedConvergence(n, h, dtype=tf.float64)
    x, y = (tf.constant(v) for v in rng.uniform(-1.2, 1.2, (2, 5, 5)))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float64)])
    def run(kappa):
        return (prof._deflection(x, y, kappa=kappa, center_x=0.1, center_y=0.0)
                + (prof._potential(x, y, kappa=kappa, center_x=0.1, center_y=0.0),
                   prof._convergence(x, y, kappa=kappa, center_x=0.1, center_y=0.0)))

    for shape in ((n, n), (2, n, n)):
        kappa = tf.constant(rng.normal(size=shape))
        want = (prof.deflection(x, y, kappa=kappa, center_x=0.1)
                + (prof.potential(x, y, kappa=kappa, center_x=0.1),
                   prof.convergence(x, y, kappa=kappa, center_x=0.1)))
        for got, ref in zip(run(kappa), want):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
