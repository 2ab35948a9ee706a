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


# ------------------------------------------------------------------ corner plots
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.path import Path  # noqa: E402

from tfstronglens.plotting import (SIGMA_LEVELS_2D, density_levels,  # noqa: E402
                                   parameter_labels, plot_corner, save_corner)

_BACKENDS = ["own", pytest.param("corner", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("corner") is None,
    reason="the corner package is not installed"))]


def _panel(fig, k, i, j, backend):
    """The axes of row ``i``, column ``j`` (the own backend adds the lower triangle only,
    row by row; ``corner`` makes all ``k x k``)."""
    return fig.axes[i * (i + 1) // 2 + j if backend == "own" else i * k + j]


def test_sigma_levels_are_those_of_a_2d_gaussian():
    # 1 - exp(-r^2/2) at r = 1, 2: not the 68/95% of a 1D interval
    assert SIGMA_LEVELS_2D == pytest.approx((0.3935, 0.8647), abs=1e-4)
    hist = np.array([[4.0, 3.0], [2.0, 1.0]])
    # the densest cells holding 40% (4 of 10) and 70% (4 + 3) of the mass
    np.testing.assert_array_equal(density_levels(hist, [0.4, 0.7]), [4.0, 3.0])
    assert density_levels(hist, [0.55])[0] == pytest.approx(3.5)  # interpolated
    assert density_levels(hist, [0.35], total=20.0)[0] == 3.0  # 7 of 20 in 4 + 3
    assert density_levels(hist, [0.45], total=20.0)[0] == 2.0  # 9 of 20 in 4 + 3 + 2
    with pytest.raises(ValueError, match="fractions"):
        density_levels(hist, [1.0])


@pytest.mark.parametrize("backend", _BACKENDS)
def test_corner_contours_enclose_the_stated_fractions_of_gaussian_draws(backend):
    rng = np.random.default_rng(5)
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    draws = rng.multivariate_normal([1.0, -2.0], cov, size=20000)
    fig = plot_corner(draws, ["lens.0.e1", "lens.0.e2"], fig=Figure(figsize=(5, 5)),
                      backend=backend)
    ax = _panel(fig, 2, 1, 0, backend)
    (lines,) = [c for c in ax.collections if isinstance(c, ContourSet) and not c.filled]
    assert len(lines.levels) == 2
    fresh = rng.multivariate_normal([1.0, -2.0], cov, size=50000)
    # paths in increasing density: the 2 sigma (86.5%) region, then the 1 sigma (39.3%)
    paths = [Path.make_compound_path(p) if isinstance(p, list) else p
             for p in lines.get_paths()]
    inside = [paths[k].contains_points(fresh).mean() for k in (1, 0)]
    np.testing.assert_allclose(inside, SIGMA_LEVELS_2D, atol=0.02)
    # (the 68% / 95% contours of a 1D convention would hold 0.68 and 0.95)
    assert abs(inside[0] - 0.68) > 0.2 and abs(inside[1] - 0.95) > 0.05


def _vlines(ax):
    """x of the vertical lines (axvline) of ``ax``."""
    return [line.get_xdata()[0] for line in ax.get_lines()
            if len(line.get_xdata()) == 2 and len(set(line.get_xdata())) == 1]


@pytest.mark.parametrize("backend", _BACKENDS)
def test_corner_marks_truths_and_percentiles(backend):
    names = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "subhalo.0.mass"]
    k = len(names)
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(2000, k)) * 0.01 + 1.0
    truths = [1.02, None, 0.99, 1.0]
    fig = plot_corner(draws, names, truths=truths, fig=Figure(figsize=(7, 7)),
                      backend=backend)
    diag = _panel(fig, k, 0, 0, backend)
    assert any(abs(x - 1.02) < 1e-12 for x in _vlines(diag))  # the truth
    for q in np.percentile(draws[:, 0], [16, 50, 84]):
        assert any(abs(x - q) < 1e-9 for x in _vlines(diag)), q
    low = _panel(fig, k, k - 1, 0, backend)
    assert any(abs(x - 1.02) < 1e-12 for x in _vlines(low))
    # no truth for e1: no line in its column
    assert not any(abs(x - 1.02) < 0.05 for x in _vlines(_panel(fig, k, k - 1, 1, backend)))
    assert any(abs(x - 0.99) < 1e-12 for x in _vlines(_panel(fig, k, k - 1, 2, backend)))
    assert [_panel(fig, k, k - 1, j, backend).xaxis.label.get_text() for j in range(k)] == \
        parameter_labels(names)


def test_corner_labels_stay_readable_at_15_parameters():
    names = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x", "lens.0.center_y",
             "lens.1.gamma1", "lens.1.gamma2", "source.0.amp", "source.0.R_sersic",
             "source.0.n_sersic", "source.0.e1", "source.0.e2", "source.0.center_x",
             "source.0.center_y", "subhalo.0.mass"]
    k = len(names)
    draws = np.random.default_rng(0).normal(size=(300, k))
    size = 1.6 * k + 1.2  # save_corner's figure: the panels keep their size
    fig = plot_corner(draws, names, fig=Figure(figsize=(size, size)), backend="own")
    bottom = [_panel(fig, k, k - 1, j, "own").xaxis.label for j in range(k)]
    assert [t.get_text() for t in bottom] == parameter_labels(names)
    assert bottom[0].get_text() == r'$\theta_{\rm E}$ ["]'
    # 10 pt labels on 1.68" panels (the old plot: 6 pt); ticks 7.5 pt (old: 5 pt)
    assert min(t.get_fontsize() for t in bottom) >= 9.5
    ticks = _panel(fig, k, k - 1, 0, "own").get_xticklabels()
    assert ticks and min(t.get_fontsize() for t in ticks) >= 7.0
    assert _panel(fig, k, 0, 0, "own").title.get_fontsize() >= 8.0


def test_parameter_labels_tell_components_apart():
    labels = parameter_labels(["lens.0.center_x", "source.0.center_x", "lens.1.gamma1",
                               "subhalo.0.mass", "lens_light.0.R_sersic", "other"])
    assert labels == ['$x$ (lens) ["]', '$x$ (src) ["]', r"$\gamma_1$",
                      r"$M$ (sub0) [M$_\odot$]", r'$R_{\rm S}$ ["]', "other"]


def test_save_corner_writes_atomically_and_checks_its_input(tmp_path, monkeypatch):
    draws = np.random.default_rng(1).normal(size=(500, 3))
    names = ["lens.0.theta_E", "lens.0.e1", "lens.0.e2"]
    path = tmp_path / "corner.png"
    save_corner(path, draws, names, truths=[0.0, None, 0.1], dpi=40, backend="own")
    assert png_size(path) == (int(round((1.6 * 3 + 1.2) * 40)),) * 2
    before = path.read_bytes()

    def failing_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE)
        raise OSError("simulated failure while writing")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="simulated"):
        save_corner(path, draws * 2, names, dpi=40, overwrite=True, backend="own")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["corner.png"]
    with pytest.raises(FileExistsError):
        save_corner(path, draws, names, dpi=40)
    for kwargs, match in ((dict(levels=(0.4, 1.2)), "levels"), (dict(backend="x"), "backend"),
                          (dict(truths=[1.0]), "truths")):
        with pytest.raises(ValueError, match=match):
            plot_corner(draws, names, fig=Figure(), **kwargs)
    bad = draws.copy()
    bad[3, 1] = np.nan  # a draw with a NaN is left out
    fig = plot_corner(bad, names, fig=Figure(), backend="own")
    assert fig.axes[0].patches[0].get_path().vertices[:, 1].max() > 0
    bad[:, 1] = np.nan
    with pytest.raises(ValueError, match="finite draws"):
        plot_corner(bad, names, fig=Figure())
