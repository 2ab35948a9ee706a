"""Plotting: astronomical defaults, PNG output of the expected size, atomic writes."""

import os
import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import tfstronglens as tsl  # noqa: E402
from tfstronglens.plotting import plot_image, save_png  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, "not a PNG file"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _blob(n=20):
    c = np.arange(n) - (n - 1) / 2
    return np.exp(-(c[None, :] ** 2 + c[:, None] ** 2) / 8.0)


def test_plot_image_defaults_with_grid():
    grid = tsl.PixelGrid(20, 0.05)
    image = _blob()
    image[0, 0] = 2.0  # row 0 must end up at the bottom-left with origin="lower"
    ax = plot_image(tf.constant(image[None]), grid, title="lens")  # batch of one accepted
    (im,) = ax.images
    assert im.origin == "lower"
    np.testing.assert_allclose(im.get_extent(), grid.extent)
    np.testing.assert_array_equal(im.get_array(), image)
    assert ax.get_xlabel() == "x [arcsec]" and ax.get_ylabel() == "y [arcsec]"
    assert ax.get_title() == "lens"
    assert len(ax.figure.axes) == 2  # image + colorbar


def test_plot_image_pixels_extent_log_and_no_colorbar():
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_image(_blob(21) - 0.1, ax=ax, log=True, colorbar=False, log_range=100.0)
    assert out is ax and len(fig.axes) == 1
    (im,) = ax.images
    assert isinstance(im.norm, LogNorm)
    assert im.norm.vmax == pytest.approx(0.9) and im.norm.vmin == pytest.approx(0.009)
    assert ax.get_xlabel() == "x [pixel]"
    ax2 = Figure().add_subplot()
    plot_image(_blob(), (-1, 1, -2, 2), ax=ax2, vmin=0.0, vmax=0.5)
    np.testing.assert_allclose(ax2.images[0].get_extent(), (-1, 1, -2, 2))
    assert ax2.images[0].norm.vmax == 0.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=np.zeros((3, 4, 5))), "2D array"),
    (dict(image=np.zeros((4, 4)), grid_or_extent=tsl.PixelGrid(5, 0.1)), r"grid has 5 x 5"),
    (dict(image=np.zeros((4, 4)), grid_or_extent=(0, 1, 2)), "extent"),
    (dict(image=-np.ones((4, 4)), log=True), "log=True needs an image with positive pixels"),
    (dict(image=np.array([["a", "b"], ["c", "d"]])), "real-valued"),
])
def test_plot_image_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_image(ax=Figure().add_subplot(), **kwargs)


def test_save_png_writes_png_of_expected_size(tmp_path):
    grid = tsl.PixelGrid(20, 0.05)
    path = tmp_path / "lens.png"
    out = save_png(path, _blob(), grid, title="t", figsize=(4, 3), dpi=50)
    assert out == str(path)
    assert png_size(path) == (200, 150)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (150, 200)
    assert pixels[..., :3].std() > 0.05  # something was drawn
    assert sorted(os.listdir(tmp_path)) == ["lens.png"]
    # pyplot's global state is untouched by save_png
    assert plt.get_fignums() == []


def test_save_png_refuses_overwrite_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "lens.png"
    save_png(path, _blob(), figsize=(2, 2), dpi=40)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="lens.png"):
        save_png(path, _blob() * 0, figsize=(2, 2), dpi=40)
    assert path.read_bytes() == before

    def failing_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE)  # a truncated file ...
        raise OSError("simulated failure while writing")  # ... then the failure

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="simulated"):
        save_png(path, _blob() * 0, figsize=(2, 2), dpi=40, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["lens.png"]
    save_png(path, _blob() * 0, figsize=(3, 2), dpi=40, overwrite=True)
    assert png_size(path) == (120, 80)


def test_save_png_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="figsize"):
        save_png(tmp_path / "a.png", _blob(), figsize=(0, 3))
    with pytest.raises(ValueError, match="dpi"):
        save_png(tmp_path / "a.png", _blob(), dpi=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_png(tmp_path / "nowhere" / "a.png", _blob())
    assert os.listdir(tmp_path) == []
