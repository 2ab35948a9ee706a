r"""Sky coordinates of a fit (``tfstronglens.io.sky``) and images stored upside down.

#### Expected values

For a TAN (gnomonic) WCS whose reference pixel is the image centre, the offsets east and
north of the centre are exactly the intermediate world coordinates ``CD @ (dX, dY)``,
and RA/Dec follow from them by the inverse gnomonic projection

    Dec = asin((sin d0 + eta cos d0) / sqrt(1 + xi^2 + eta^2)),
    RA  = a0 + atan2(xi, cos d0 - eta sin d0)        (xi, eta in radians).

An image with the usual parity whose ``+y`` axis points at position angle ``theta`` east
of north has ``CD = s [[-cos theta, sin theta], [sin theta, cos theta]]``; the model
direction ``phi`` (from ``+x`` towards ``+y``) then points along
``(E, N) = s (-cos(theta + phi), sin(theta + phi))``, at ``PA = phi + theta + 90 deg``
(mod 180). North up, east left (``theta = 0``): ``PA = phi + 90``; mirrored (``CD =
diag(s, s)``): ``PA = 90 - phi``. Away from the reference point the local north turns by
``dRA sin(Dec)`` (a few 1e-6 deg here), hence the tolerances.
"""

import json
import math

import numpy as np
import pytest
from astropy.io import fits

import tfstronglens as tsl

from tfstronglens.cli import main
from tfstronglens.io import load_lens_image, write_fits
from tfstronglens.io.sky import SkyFrame, sky_summary, tangent_offsets

N = 16
PIX = 0.1
RA0, DEC0 = 150.1, 2.2


def _wcs(theta_deg=30.0, parity=1, crpix=(N + 1) / 2, ra0=RA0, dec0=DEC0, pc=False):
    """A TAN WCS whose +y axis points at PA ``theta_deg``; ``parity=-1`` mirrors it (east
    to the right of north); ``pc`` writes it as PC + CDELT instead of CD."""
    t, d = math.radians(theta_deg), PIX / 3600
    cd = d * np.array([[-parity * math.cos(t), math.sin(t)],
                       [parity * math.sin(t), math.cos(t)]])
    h = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
         "CRVAL1": ra0, "CRVAL2": dec0, "CRPIX1": crpix, "CRPIX2": crpix}
    if pc:
        h.update(CDELT1=d, CDELT2=d)
        h.update({f"PC{i + 1}_{j + 1}": cd[i, j] / d for i in range(2) for j in range(2)})
    else:
        h.update({f"CD{i + 1}_{j + 1}": cd[i, j] for i in range(2) for j in range(2)})
    return h, cd


def _frame(**kw):
    h, cd = _wcs(**kw)
    return SkyFrame.from_header(fits.Header(list(h.items())), N, PIX), cd


def _inverse_gnomonic(xi_arcsec, eta_arcsec, ra0=RA0, dec0=DEC0):
    xi, eta = np.radians(np.asarray(xi_arcsec) / 3600), np.radians(np.asarray(eta_arcsec) / 3600)
    d0 = math.radians(dec0)
    dec = np.arcsin((math.sin(d0) + eta * math.cos(d0)) / np.sqrt(1 + xi**2 + eta**2))
    ra = ra0 + np.degrees(np.arctan2(xi, math.cos(d0) - eta * math.sin(d0)))
    return ra, np.degrees(dec)


def test_rotated_wcs_positions_and_position_angles_are_analytic():
    frame, cd = _frame(theta_deg=30.0)
    x = np.array([0.0, 0.4, -0.55, 0.73])
    y = np.array([0.0, -0.25, 0.6, 0.31])
    east, north = frame.offsets(x, y)
    expected = 3600 * cd @ np.stack([x / PIX, y / PIX])
    np.testing.assert_allclose(east, expected[0], atol=1e-8)
    np.testing.assert_allclose(north, expected[1], atol=1e-8)
    ra, dec = frame.world(x, y)
    ra_e, dec_e = _inverse_gnomonic(*expected)
    np.testing.assert_allclose(ra, ra_e, rtol=0, atol=1e-11)
    np.testing.assert_allclose(dec, dec_e, rtol=0, atol=1e-11)
    assert frame.centre == pytest.approx((RA0, DEC0), abs=1e-12)
    # +x has turned 30 deg from west towards north: a source 0.5" along +x lies
    # 0.25" north and 0.433" west (a wrong sign of the rotation would put it south)
    e, n = frame.offsets(0.5, 0.0)
    assert (e, n) == pytest.approx((-0.5 * math.cos(math.radians(30)), 0.25), abs=1e-8)
    phi = np.radians([0.0, 20.0, 45.0, 100.0, -70.0])
    pa = frame.position_angle(phi, 0.3, -0.2)
    np.testing.assert_allclose(pa, np.mod(np.degrees(phi) + 30.0 + 90.0, 180.0), atol=1e-4)
    assert frame.y_axis_pa == pytest.approx(30.0, abs=1e-6)
    assert frame.parity == 1
    # the same WCS as PC + CDELT, and a reference pixel off the image centre
    frame_pc, _ = _frame(theta_deg=30.0, pc=True, crpix=3.0)
    np.testing.assert_allclose(frame_pc.position_angle(phi), pa, atol=1e-4)
    off = frame_pc.offsets(x, y)
    np.testing.assert_allclose(off[0], expected[0], atol=2e-6)  # tangent point moved
    np.testing.assert_allclose(off[1], expected[1], atol=2e-6)


def test_north_up_east_left_gives_pa_phi_plus_90_and_mirrored_90_minus_phi():
    phi_deg = np.array([0.0, 10.0, 45.0, 90.0, 135.0])
    standard, _ = _frame(theta_deg=0.0)
    np.testing.assert_allclose(standard.position_angle(np.radians(phi_deg)),
                               np.mod(phi_deg + 90.0, 180.0), atol=1e-6)
    assert standard.describe()["parity"].startswith("standard")
    mirrored, _ = _frame(theta_deg=0.0, parity=-1)
    np.testing.assert_allclose(mirrored.position_angle(np.radians(phi_deg)),
                               np.mod(90.0 - phi_deg, 180.0), atol=1e-6)
    assert mirrored.parity == -1 and mirrored.describe()["parity"].startswith("mirrored")
    # the standard frame puts +x west: its offsets are (-x, y)
    assert standard.offsets(0.3, 0.2) == pytest.approx((-0.3, 0.2), abs=1e-8)


def test_no_celestial_wcs_gives_no_frame(tmp_path):
    assert SkyFrame.from_header(fits.Header(), N, PIX) is None
    assert SkyFrame.from_header(fits.Header([("PIXSCALE", PIX)]), N, PIX) is None
    linear = fits.Header([("CTYPE1", "LINEAR"), ("CTYPE2", "LINEAR"), ("CDELT1", 1.0),
                          ("CDELT2", 1.0)])
    assert SkyFrame.from_header(linear, N, PIX) is None
    path = tmp_path / "plain.fits"
    write_fits(path, np.ones((N, N)), pixel_scale=PIX, header={"BKGRMS": 0.1})
    img = load_lens_image(path)
    assert img.sky_frame() is None
    assert not any("WCS" in n for n in img.notes)
    with pytest.raises(ValueError, match="pixel_scale"):
        SkyFrame.from_header(fits.Header(), N, 0.0)


def test_sky_summary_statistics_come_from_the_transformed_draws():
    frame, cd = _frame(theta_deg=30.0)
    rng = np.random.default_rng(0)
    n = 4000
    # major axis at phi = 58 +- 4 deg: PA = 58 + 30 + 90 = 178 deg, straddling 0/180
    phi = np.radians(58.0 + 4.0 * rng.standard_normal(n))
    e = 0.2
    names = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x",
             "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2", "source.0.center_x",
             "source.0.center_y", "subhalo.0.center_x", "subhalo.0.center_y"]
    cx = 0.1 + 0.01 * rng.standard_normal(n)
    cy = -0.2 + 0.02 * rng.standard_normal(n)
    draws = np.stack([np.full(n, 1.0), e * np.cos(2 * phi), e * np.sin(2 * phi), cx, cy,
                      np.full(n, 0.03), np.full(n, 0.0), np.full(n, 0.05), np.full(n, 0.02),
                      np.full(n, 0.7), np.full(n, 0.6)], axis=-1)
    best = {"lens.0.center_x": 0.1, "lens.0.center_y": -0.2,
            "lens.0.e1": e * math.cos(math.radians(116)),
            "lens.0.e2": e * math.sin(math.radians(116))}
    sky = sky_summary(frame, names, draws.reshape(n // 4, 4, -1), best)
    assert set(sky["positions"]) == {"lens.0", "source.0", "subhalo.0"}
    assert set(sky["position_angles"]) == {"lens.0", "lens.1"}
    pa = sky["position_angles"]["lens.0"]
    assert pa["of"] == "ellipticity"
    # unwrapped around the circular mean: 178 +- 4, not 90 +- 88
    assert pa["pa_deg"]["mean"] == pytest.approx(178.0, abs=0.3)
    assert pa["pa_deg"]["std"] == pytest.approx(4.0, rel=0.05)
    assert pa["pa_deg"]["p84"] > 180.0 > pa["pa_deg"]["p16"]
    assert pa["pa_deg"]["best_fit"] == pytest.approx(178.0, abs=1e-4)
    # shear along +x: stretches images towards PA 30 + 90 = 120
    assert sky["position_angles"]["lens.1"]["of"] == "shear"
    assert sky["position_angles"]["lens.1"]["pa_deg"]["mean"] == pytest.approx(120.0,
                                                                               abs=1e-4)
    lens = sky["positions"]["lens.0"]
    jac = 3600 * cd / PIX
    cov = jac @ np.diag([0.01**2, 0.02**2]) @ jac.T  # linear map of the draws' covariance
    assert lens["dra_cosdec_arcsec"]["std"] == pytest.approx(math.sqrt(cov[0, 0]), rel=0.05)
    assert lens["ddec_arcsec"]["std"] == pytest.approx(math.sqrt(cov[1, 1]), rel=0.05)
    mean_e, mean_n = jac @ [0.1, -0.2]
    assert lens["dra_cosdec_arcsec"]["mean"] == pytest.approx(mean_e, abs=1e-3)
    assert lens["ddec_arcsec"]["mean"] == pytest.approx(mean_n, abs=1e-3)
    ra_b, dec_b = _inverse_gnomonic(mean_e, mean_n)
    assert lens["ra_deg"]["best_fit"] == pytest.approx(ra_b, abs=1e-11)
    assert lens["dec_deg"]["best_fit"] == pytest.approx(dec_b, abs=1e-11)
    assert lens["ra_deg"]["std"] * 3600 * math.cos(math.radians(DEC0)) == pytest.approx(
        math.sqrt(cov[0, 0]), rel=0.05)
    assert sky["frame"]["y_axis_pa_deg"] == pytest.approx(30.0, abs=1e-6)
    json.dumps(sky)  # JSON-ready
    with pytest.raises(ValueError, match="samples must have shape"):
        sky_summary(frame, names[:-1], draws)


def test_ra_is_unwrapped_at_zero():
    h, _ = _wcs(theta_deg=0.0, ra0=0.0, dec0=-30.0)
    frame = SkyFrame.from_header(fits.Header(list(h.items())), N, PIX)
    x = np.linspace(-0.5, 0.5, 101)  # east and west of RA = 0
    sky = sky_summary(frame, ["lens.0.center_x", "lens.0.center_y"],
                      np.stack([x, np.zeros_like(x)], -1))
    ra = sky["positions"]["lens.0"]["ra_deg"]
    assert ra["mean"] == pytest.approx(0.0, abs=1e-9) or ra["mean"] == pytest.approx(360.0)
    assert ra["std"] * 3600 < 0.5  # not ~180 deg
    xi, _ = tangent_offsets(ra["p84"], -30.0, 0.0, -30.0)
    assert xi == pytest.approx(-np.percentile(x, 16), abs=1e-6)  # east = -x


# ------------------------------------------------------------------ flipped files
def _arc():
    """An off-centre arc (no up-down symmetry), a lopsided PSF and a noise map."""
    c = (np.arange(N) - (N - 1) / 2) * PIX
    xx, yy = np.meshgrid(c, c)
    r, t = np.hypot(xx, yy), np.arctan2(yy, xx)
    arc = 2.0 * np.exp(-0.5 * ((r - 0.5) / 0.1) ** 2) * (1 + np.sin(t - 0.4)) + 0.05
    arc = arc + np.random.default_rng(1).normal(0.0, 0.05, arc.shape)
    kernel = np.outer([1.0, 3.0, 2.0, 1.0, 0.5], [1.0, 2.0, 3.0, 2.0, 1.0]).astype(np.float32)
    sigma = 0.05 + 0.01 * np.arange(N)[:, None] * np.ones((1, N))
    return arc.astype(np.float32), kernel, sigma


# truth cards as params_to_header writes them (the profile of lens[0] and source[0] only)
TRUTH_CARDS = {"LENS0_MODEL": "SIE", "LENS0_THETA_E": 0.5, "LENS0_CENTER_Y": 0.02,
               "SOURCE0_MODEL": "SERSIC_ELLIPSE", "SOURCE0_R_SERSIC": 0.2,
               "LENS1_GAMMA1": 0.01}  # (no LENS1_MODEL: not taken)


def _write_pair(tmp_path):
    """The arc written the FITS way and upside down (arrays and WCS), and its noise
    maps: ``(standard, upside_down, noise, noise_upside_down)`` paths."""
    arc, kernel, sigma = _arc()
    h, _ = _wcs(theta_deg=30.0, crpix=5.0)
    flipped_h = dict(h, CRPIX2=N + 1 - h["CRPIX2"], CD1_2=-h["CD1_2"], CD2_2=-h["CD2_2"])
    std, up = tmp_path / "std.fits", tmp_path / "up.fits"
    write_fits(std, arc, pixel_scale=PIX, header={**h, "BKGRMS": 0.05}, PSF=kernel)
    write_fits(up, arc[::-1], pixel_scale=PIX, header={**flipped_h, "BKGRMS": 0.05,
                                                       **TRUTH_CARDS}, PSF=kernel[::-1])
    write_fits(tmp_path / "noise.fits", sigma)
    write_fits(tmp_path / "noise_up.fits", sigma[::-1])
    return std, up, tmp_path / "noise.fits", tmp_path / "noise_up.fits"


def test_flip_y_reads_an_upside_down_file_as_the_standard_one(tmp_path):
    std, up, noise, noise_up = _write_pair(tmp_path)
    a = load_lens_image(std, noise_map=noise)
    b = load_lens_image(up, noise_map=noise_up, flip_y=True)
    assert b.flip_y and not a.flip_y
    np.testing.assert_array_equal(b.data, a.data)
    np.testing.assert_array_equal(b.noise_map, a.noise_map)
    ka, kb = a.observation.psf.kernel(), b.observation.psf.kernel()
    np.testing.assert_allclose(kb, ka, rtol=1e-12)
    assert b.observation.get_config() == a.observation.get_config()
    assert any("rows reversed" in n for n in b.notes)
    # the WCS describes the stored array: both frames put a model point at the same place
    fa, fb = a.sky_frame(), b.sky_frame()
    x, y = np.array([0.3, -0.2]), np.array([0.45, -0.1])
    np.testing.assert_allclose(fb.world(x, y), fa.world(x, y), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fb.position_angle(0.3), fa.position_angle(0.3), atol=1e-9)
    assert fb.y_axis_pa == pytest.approx(30.0, abs=1e-5) and fb.parity == 1
    # the WCS note is that of the flipped frame (one note only)
    assert sum("WCS" in n for n in b.notes) == 1 and "PA 30.0" in b.notes[-1]
    # read without the flag, the upside-down file is another image (the mirrored lens)
    c = load_lens_image(up, noise_map=noise_up)
    assert not np.allclose(c.data, a.data)
    np.testing.assert_array_equal(c.data, a.data[::-1])
    assert c.sky_frame().parity == -1  # its frame is mirrored on the sky
    back = b.flipped()
    assert not back.flip_y
    np.testing.assert_array_equal(back.data, c.data)
    np.testing.assert_allclose(back.observation.psf.kernel(), c.observation.psf.kernel())
    with pytest.raises(ValueError, match="flip_y"):
        load_lens_image(std, flip_y="yes")


TINY_MAP = ["--lens", "sie+shear", "--source", "sersic", "--method", "map", "--num-starts",
            "2", "--map-steps", "5", "--map-polish-steps", "0", "--no-xla", "--no-progress"]


def test_fit_flip_y_reports_the_sky_of_the_map_fit(tmp_path, capsys, monkeypatch):
    from tfstronglens import plotting

    _, up, _, _ = _write_pair(tmp_path)
    out = tmp_path / "up"
    drawn = {}
    save_corner = plotting.save_corner

    def recording_save_corner(path, samples, names, truths=None, **kwargs):
        drawn.update(zip(names, truths))
        return save_corner(path, samples, names, truths=truths, **kwargs)

    monkeypatch.setattr(plotting, "save_corner", recording_save_corner)
    assert main(["fit", str(up), "--flip-y", *TINY_MAP, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(out / "summary.json"))
    assert summary["settings"]["flip_y"] is True
    # the header's truths (a simulated image) go to the summary and the corner plot
    assert summary["truths"] == {"lens.0.theta_E": 0.5, "lens.0.center_y": 0.02,
                                 "source.0.R_sersic": 0.2}
    assert drawn["lens.0.theta_E"] == 0.5 and drawn["lens.0.e1"] is None
    assert (out / "corner.png").exists()
    sky = summary["sky"]
    assert set(sky["positions"]) == {"lens.0", "source.0"}
    assert set(sky["position_angles"]) == {"lens.0", "lens.1", "source.0"}
    assert sky["frame"]["flip_y"] is True
    assert sky["frame"]["y_axis_pa_deg"] == pytest.approx(30.0, abs=1e-5)
    # the MAP's lens centre and ellipticity, through the analytic frame of the WCS
    # (the standard file's: the flipped one describes the same sky)
    b = summary["best_fit"]
    frame, _ = _frame(theta_deg=30.0, crpix=5.0)
    pa = math.degrees(0.5 * math.atan2(b["lens.0.e2"], b["lens.0.e1"])) + 30.0 + 90.0
    got = sky["position_angles"]["lens.0"]["pa_deg"]["best_fit"]
    assert (got - pa + 90.0) % 180.0 - 90.0 == pytest.approx(0.0, abs=1e-3)
    e, n = frame.offsets(b["lens.0.center_x"], b["lens.0.center_y"])
    lens = sky["positions"]["lens.0"]
    assert lens["dra_cosdec_arcsec"]["best_fit"] == pytest.approx(e, abs=1e-6)
    assert lens["ddec_arcsec"]["best_fit"] == pytest.approx(n, abs=1e-6)
    ra, dec = frame.world(b["lens.0.center_x"], b["lens.0.center_y"])
    assert lens["ra_deg"]["best_fit"] == pytest.approx(float(ra), abs=1e-10)
    assert lens["dec_deg"]["best_fit"] == pytest.approx(float(dec), abs=1e-10)
    # statistics of the Laplace draws, with the posterior's spread
    assert 0 < lens["dra_cosdec_arcsec"]["std"] < 1.0
    assert "sky (from the image's WCS)" in printed and "ellipticity PA" in printed
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--flip-y" in text and "row 0 at +y" in text and "first row is the bottom" in text


def test_truths_from_header_needs_the_same_profiles():
    from tfstronglens.io import params_to_header
    from tfstronglens.io.fits import truths_from_header

    sim = tsl.Simulator(tsl.PixelGrid(8, 0.1), lens=[tsl.SIE(), tsl.Shear()],
                        source=[tsl.SersicEllipse()], jit_compile=False)
    lens = [dict(theta_E=1.1, e1=0.1, e2=0.0, center_x=0.01, center_y=0.0),
            dict(gamma1=0.03, gamma2=-0.01)]
    source = [dict(amp=5.0, R_sersic=0.2, n_sersic=1.5, e1=0.0, e2=0.1, center_x=0.05,
                   center_y=0.0)]
    header = fits.Header()
    for k, (v, c) in params_to_header(sim, lens=lens, source=source, lens_light=[]).items():
        header[f"HIERARCH {k}"] = (v, c)
    names = ["lens.0.theta_E", "lens.0.e1", "lens.1.gamma2", "source.0.R_sersic",
             "source.z.0", "subhalo.0.mass"]
    profiles = {"lens.0": "SIE", "lens.1": "SHEAR", "source.0": "SERSIC_ELLIPSE"}
    assert truths_from_header(header, names, profiles) == {
        "lens.0.theta_E": 1.1, "lens.0.e1": 0.1, "lens.1.gamma2": -0.01,
        "source.0.R_sersic": 0.2}
    # another main deflector (EPL): its truths are not those of this model
    assert truths_from_header(header, names, dict(profiles, **{"lens.0": "EPL"})) == {
        "lens.1.gamma2": -0.01, "source.0.R_sersic": 0.2}
    assert truths_from_header(fits.Header(), names, profiles) == {}
