"""FITS input/output: round trips, headers, truths, refusal to overwrite, atomic writes."""

import gzip
import os
import stat

import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits

import tfstronglens as tsl
from tfstronglens.io import params_from_header, params_to_header, read_fits, write_fits
from tfstronglens.io import _atomic


def _listing(directory):
    return sorted(os.listdir(directory))


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_data_header_and_extensions(tmp_path, rng, dtype):
    image = rng.normal(size=(12, 10)).astype(dtype)
    psf = rng.random((5, 5)).astype(np.float32)
    noise = np.full((12, 10), 0.25)
    header = {
        "OBJECT": "test lens",
        "LENS0_THETA_E": (1.234567890123, "lens[0] SIE theta_E"),
        "NITER": 7,
        "GOOD": (True, "a flag"),
        "source0_R_sersic": 0.15,  # lower case: stored upper case, looked up any case
        "HISTORY": ["made by a test", "second line"],
    }
    path = tmp_path / "lens.fits"
    out = write_fits(path, image, header, pixel_scale=0.05, bunit="electron/s", PSF=psf,
                     noise=(noise, {"BUNIT": "electron/s"}))
    assert out == str(path)

    data, hdr = read_fits(path)
    assert data.dtype == dtype and data.dtype.isnative
    np.testing.assert_array_equal(data, image)
    assert hdr["PIXSCALE"] == 0.05 and hdr["BUNIT"] == "electron/s"
    assert hdr["OBJECT"] == "test lens"
    assert hdr["LENS0_THETA_E"] == 1.234567890123
    assert hdr.comments["LENS0_THETA_E"] == "lens[0] SIE theta_E"
    assert hdr["lens0_theta_e"] == 1.234567890123
    assert hdr["NITER"] == 7 and type(hdr["NITER"]) is int
    assert hdr["GOOD"] is True
    assert hdr["SOURCE0_R_SERSIC"] == 0.15
    assert list(hdr["HISTORY"]) == ["made by a test", "second line"]

    psf_back, psf_hdr = read_fits(path, "psf")  # names are case-insensitive
    np.testing.assert_array_equal(psf_back, psf)
    assert psf_back.dtype == np.float32 and psf_hdr["EXTNAME"] == "PSF"
    noise_back, noise_hdr = read_fits(path, 2)
    np.testing.assert_array_equal(noise_back, noise)
    assert noise_hdr["EXTNAME"] == "NOISE" and noise_hdr["BUNIT"] == "electron/s"
    # the file is a standard FITS file for astropy
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "PSF", "NOISE"]
        assert hdul.verify("exception") is None


def test_tensor_input_header_roundtrip_and_float_precision(tmp_path, rng):
    image = tf.constant(rng.normal(size=(2, 6, 6)), tf.float32)  # a cube: batch of 2
    values = rng.normal(size=50) * 10.0 ** rng.integers(-6, 6, size=50)
    header = {f"HIERARCH P{i}_LONG_NAME": v for i, v in enumerate(values)}
    header["T"] = tf.constant(2.5)
    header["N"] = np.int64(3)
    path = tmp_path / "cube.fits"
    write_fits(path, image, header)
    data, hdr = read_fits(path)
    np.testing.assert_array_equal(data, image.numpy())
    back = np.array([hdr[f"P{i}_LONG_NAME"] for i in range(50)])
    # astropy writes at most 20 characters per float: 13-17 significant digits survive
    rel = np.max(np.abs(back - values) / np.abs(values))
    assert rel < 1e-12, rel
    assert hdr["T"] == 2.5 and hdr["N"] == 3


def test_gzip_name_is_honoured(tmp_path):
    """The temporary file keeps the extension, so astropy compresses .fits.gz."""
    path = tmp_path / "lens.fits.gz"
    write_fits(path, np.arange(16.0).reshape(4, 4))
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    with gzip.open(path) as f:
        assert f.read(6) == b"SIMPLE"
    np.testing.assert_array_equal(read_fits(path)[0], np.arange(16.0).reshape(4, 4))


def test_written_file_has_umask_permissions(tmp_path):
    path = tmp_path / "perm.fits"
    write_fits(path, np.zeros((3, 3)))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


# ------------------------------------------------------------ overwrite/atomic
def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "a.fits"
    write_fits(path, np.ones((4, 4)))
    with pytest.raises(FileExistsError, match="a.fits.*overwrite=True"):
        write_fits(path, np.zeros((4, 4)))
    np.testing.assert_array_equal(read_fits(path)[0], np.ones((4, 4)))
    write_fits(path, np.zeros((4, 4)), overwrite=True)
    np.testing.assert_array_equal(read_fits(path)[0], np.zeros((4, 4)))
    assert _listing(tmp_path) == ["a.fits"]  # no temporary files left behind


def _failing_writeto(self, fileobj, *args, **kwargs):
    """Write a partial file to the (temporary) target, then fail, as a full disk would."""
    with open(fileobj, "wb") as f:
        f.write(b"SIMPLE  =                    T" + b" " * 50)
    raise OSError(28, "No space left on device (simulated)")


def test_failure_midway_keeps_original_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    original = np.arange(9.0).reshape(3, 3)
    write_fits(path, original, {"OBJECT": "original"})
    monkeypatch.setattr(fits.HDUList, "writeto", _failing_writeto)
    with pytest.raises(OSError, match="simulated"):
        write_fits(path, np.zeros((3, 3)), overwrite=True)
    with pytest.raises(OSError, match="simulated"):
        write_fits(tmp_path / "new.fits", np.zeros((3, 3)))
    monkeypatch.undo()
    data, hdr = read_fits(path)
    np.testing.assert_array_equal(data, original)
    assert hdr["OBJECT"] == "original"
    assert _listing(tmp_path) == ["a.fits"]


def test_failure_in_replace_keeps_original(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    write_fits(path, np.ones((2, 2)))

    def broken_replace(src, dst):
        raise PermissionError("simulated replace failure")

    monkeypatch.setattr(_atomic.os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        write_fits(path, np.zeros((2, 2)), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_fits(path)[0], np.ones((2, 2)))
    assert _listing(tmp_path) == ["a.fits"]


# ----------------------------------------------------- files made by astropy
@pytest.fixture
def mef_path(tmp_path):
    """A multi-extension file as an observatory pipeline writes it: header-only primary,
    a binary table, big-endian int16 science data with BSCALE, and a float error map."""
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "HST"
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=[1.0, 2.0])],
                                          name="CAT")
    sci = fits.ImageHDU(data=np.arange(12, dtype=">i2").reshape(3, 4), name="SCI")
    sci.header["BUNIT"] = "count"
    err = fits.ImageHDU(data=np.full((3, 4), 0.5, dtype=">f8"), name="ERR")
    path = tmp_path / "mef.fits"
    fits.HDUList([primary, table, sci, err]).writeto(path)
    return path


def test_read_multi_extension_file_made_by_astropy(mef_path):
    data, hdr = read_fits(mef_path)  # first HDU with image data: SCI
    np.testing.assert_array_equal(data, np.arange(12).reshape(3, 4))
    assert data.dtype.isnative and hdr["EXTNAME"] == "SCI" and hdr["BUNIT"] == "count"
    err, ehdr = read_fits(mef_path, "Err")
    assert err.dtype == np.float64 and err.dtype.isnative and np.all(err == 0.5)
    np.testing.assert_array_equal(read_fits(mef_path, 3)[0], err)
    np.testing.assert_array_equal(read_fits(mef_path, -1)[0], err)
    with pytest.raises(ValueError, match="HDU 'CAT'.*BinTableHDU, not an image"):
        read_fits(mef_path, "CAT")
    with pytest.raises(ValueError, match="no HDU named 'NOPE'.*SCI"):
        read_fits(mef_path, "NOPE")
    with pytest.raises(ValueError, match="HDU 0 .*no image data"):
        read_fits(mef_path, 0)
    with pytest.raises(ValueError, match="HDU 'primary' .*no image data"):
        read_fits(mef_path, "primary")
    with pytest.raises(ValueError, match="index 7 is out of range.*4 HDU"):
        read_fits(mef_path, 7)
    with pytest.raises(ValueError, match="hdu must be"):
        read_fits(mef_path, 1.5)


def test_bscale_data_is_scaled(tmp_path):
    hdu = fits.PrimaryHDU(data=np.array([[1.0, 2.0], [3.0, 4.0]]))
    hdu.scale("int16", bscale=0.5, bzero=10.0)  # stored as int16 (value - 10) / 0.5
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        assert hdul[0].data.dtype.kind == "i" and hdul[0].header["BSCALE"] == 0.5
    data, _ = read_fits(path)
    assert data.dtype.kind == "f"
    np.testing.assert_array_equal(data, [[1.0, 2.0], [3.0, 4.0]])


def test_read_errors(tmp_path):
    missing = tmp_path / "missing.fits"
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        read_fits(missing)
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file\n")
    with pytest.raises(ValueError, match="notes.fits.*not a readable FITS file"):
        read_fits(text)
    empty = tmp_path / "empty.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="J", array=[1])])]).writeto(empty)
    with pytest.raises(ValueError, match="empty.fits.*no HDU with image data"):
        read_fits(empty)
    with pytest.raises(ValueError, match="directory"):
        read_fits(tmp_path)


# --------------------------------------------------------------- bad writes
@pytest.mark.parametrize("header, match", [
    ({"BAD": float("nan")}, "'BAD' must be finite"),
    ({"INF": np.inf}, "'INF' must be finite"),
    ({"NAXIS": 3}, "'NAXIS' is reserved"),
    ({"BZERO": 3}, "'BZERO' is reserved"),
    ({"ARR": np.ones(3)}, "'ARR' must be a scalar"),
    ({"OBJ": object()}, "'OBJ' must be a number"),
    ({"K" * 70: 1.0}, "does not fit in an 80-character"),
    ({"S": "caf\u00e9"}, "printable ASCII"),
    ({"A=B": 1}, "without '='"),
    ({"X": (1, 2, 3)}, "value, comment"),
])
def test_bad_header_raises(tmp_path, header, match):
    with pytest.raises(ValueError, match=match):
        write_fits(tmp_path / "x.fits", np.zeros((2, 2)), header)
    assert _listing(tmp_path) == []


def test_bad_write_arguments(tmp_path):
    with pytest.raises(ValueError, match="image must be a real-valued"):
        write_fits(tmp_path / "x.fits", np.zeros((2, 2), complex))
    with pytest.raises(ValueError, match="image must be a non-empty"):
        write_fits(tmp_path / "x.fits", np.float64(3.0))
    with pytest.raises(ValueError, match="pixel_scale must be a positive number.*-0.1"):
        write_fits(tmp_path / "x.fits", np.zeros((2, 2)), pixel_scale=-0.1)
    with pytest.raises(ValueError, match="'PSF' is used twice"):
        write_fits(tmp_path / "x.fits", np.zeros((2, 2)), psf=np.ones((3, 3)), PSF=np.ones((3, 3)))
    with pytest.raises(ValueError, match="extension 'NOISE'"):
        write_fits(tmp_path / "x.fits", np.zeros((2, 2)), NOISE="abc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_fits(tmp_path / "no_dir" / "x.fits", np.zeros((2, 2)))
    with pytest.raises(IsADirectoryError):
        write_fits(tmp_path, np.zeros((2, 2)))
    assert _listing(tmp_path) == []
    # float16 is widened to float32, None extensions are skipped
    write_fits(tmp_path / "h.fits", np.ones((2, 2), np.float16), MODEL=None)
    data, _ = read_fits(tmp_path / "h.fits")
    assert data.dtype == np.float32
    with fits.open(tmp_path / "h.fits") as hdul:
        assert len(hdul) == 1


# ------------------------------------------------------------------- truths
def _sim():
    grid = tsl.PixelGrid(8, 0.1)
    return tsl.Simulator(grid, lens=[tsl.SIE(), tsl.Shear()], source=[tsl.SersicEllipse()],
                         lens_light=[tsl.Sersic()])


def test_truth_parameters_round_trip(tmp_path):
    sim = _sim()
    params = {
        "lens": [dict(theta_E=1.2345678901234567, e1=0.1, e2=-0.05, center_x=0.01),
                 dict(gamma1=0.03, gamma2=-0.02)],
        "source": [dict(amp=40.0, R_sersic=0.15, n_sersic=1.2, e1=0.1, e2=0.08,
                        center_x=0.08, center_y=np.float32(0.05))],
        "lens_light": [dict(amp=8.0, R_sersic=0.8, n_sersic=4.0)],
    }
    cards = params_to_header(sim, **params)
    assert cards["LENS0_MODEL"][0] == "SIE"
    assert cards["LENS0_THETA_E"] == (1.2345678901234567, "lens[0] SIE theta_E")
    assert cards["LENS0_CENTER_Y"][0] == 0.0  # default filled in
    assert cards["LENS_LIGHT0_N_SERSIC"][0] == 4.0
    path = tmp_path / "t.fits"
    write_fits(path, np.zeros((8, 8)), cards)
    _, hdr = read_fits(path)
    back = params_from_header(hdr, sim)
    expected = {
        kind: [{**prof.defaults, **{k: float(v) for k, v in p.items()}}
               for prof, p in zip(sim.components(kind), params[kind])]
        for kind in params
    }
    assert back == expected
    # the values read back give the simulator the same tensors as the originals
    for kind in params:
        for a, b in zip(sim.prepare(kind, back[kind]), sim.prepare(kind, params[kind])):
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())


def test_truth_parameter_errors():
    sim = _sim()
    src = [dict(amp=1.0, R_sersic=0.1, n_sersic=1.0, e1=0.0, e2=0.0)]
    light = [dict(amp=1.0, R_sersic=0.5, n_sersic=4.0)]
    with pytest.raises(ValueError, match=r"lens\[0\].theta_E must be a single value.*shape \[3\]"):
        params_to_header(sim, lens=[dict(theta_E=np.ones(3), e1=0.0, e2=0.0),
                                    dict(gamma1=0.0, gamma2=0.0)], source=src, lens_light=light)
    with pytest.raises(ValueError, match="missing required"):
        params_to_header(sim, lens=[dict(theta_E=1.0), dict(gamma1=0.0, gamma2=0.0)],
                         source=src, lens_light=light)
    hdr = fits.Header()
    hdr["HIERARCH LENS0_MODEL"] = "SIS"
    with pytest.raises(ValueError, match=r"lens\[0\] is 'SIS' but the simulator has 'SIE'"):
        params_from_header(hdr, sim)
    with pytest.raises(ValueError, match="LENS0_THETA_E"):
        params_from_header(fits.Header(), sim)
