"""``tfstronglens fit-many``: a catalogue of lenses fitted as an Apache Beam pipeline (one
folder per lens, as ``fit`` writes it; a summary table; reruns skip finished lenses; a
failing lens is recorded and does not stop the others)."""

import json
import os
import sys

import numpy as np
import pytest
from astropy.table import Table

import tfstronglens as tsl
from tfstronglens.inference import pipeline
from tfstronglens.cli_fit_many import lens_is_finished, read_lens_catalog
from tfstronglens.io import write_fits

# the fit tests' tiny MAP (2 starts x 5 Adam steps, no XLA) and their in-process runner
from test_fit_cli import TINY_MAP, _run  # noqa: E402

PIX = 0.1


def _ring(radius, seed, n=16):
    x = (np.arange(n) - (n - 1) / 2) * PIX
    r = np.hypot(*np.meshgrid(x, x))
    ring = 2.0 * np.exp(-0.5 * ((r - radius) / 0.1) ** 2)
    return (ring + np.random.default_rng(seed).normal(0.0, 0.05, ring.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def lenses(tmp_path_factory):
    """A folder of three 16 x 16 lenses as ``simulate`` writes them (noise, PSF and
    redshifts in the file): ``lens_a``, ``lens_b`` and ``lens_c``, whose image has a NaN
    pixel."""
    d = tmp_path_factory.mktemp("lenses")
    kernel = np.asarray(tsl.GaussianPSF(0.15).kernel(PIX), np.float32)
    broken = _ring(0.5, 2)
    broken[3, 4] = np.nan
    for name, image in (("lens_a", _ring(0.5, 0)), ("lens_b", _ring(0.6, 1)),
                        ("lens_c", broken)):
        write_fits(d / f"{name}.fits", image, pixel_scale=PIX, PSF=kernel,
                   header={"BKGRMS": 0.05, "ZLENS": 0.3, "ZSOURCE": 1.5})
    return d


def _catalog(path, lenses, rows):
    """Write an ECSV catalogue at ``path`` of ``rows`` (name, file relative to the
    catalogue, noise_rms, z_lens; NaN: none) and return its path."""
    path.parent.mkdir(exist_ok=True)
    rel = os.path.relpath(lenses, path.parent)
    names, files, noise, z_lens = zip(*rows)
    Table({"name": names, "path": [os.path.join(rel, f) for f in files],
           "noise_rms": noise, "z_lens": z_lens}).write(path, format="ascii.ecsv")
    return path


def _table(out):
    table = Table.read(out / "summary.ecsv", format="ascii.ecsv")
    for c in table.colnames:  # (ECSV reads empty text as masked)
        if table[c].dtype.kind == "U" and hasattr(table[c], "filled"):
            table[c] = table[c].filled("")
    return {str(row["name"]): row for row in table}


def _lines(stdout, name):
    return [line for line in stdout.splitlines() if line.startswith(f"fit-many: {name}:")]


@pytest.fixture(scope="module")
def runs(lenses, tmp_path_factory):
    """Two ``fit-many`` runs of a catalogue (Beam's DirectRunner with one worker): ``a``
    (lens_a with its own noise rms and lens redshift), ``b``, ``c`` (NaN pixels) and
    ``d`` (a missing file). The first fits in this process; writing b's samples fails
    there after its summary.json was written (as in a run killed mid-write). Before the
    second, which fits in a child process (the default), a killed run's temporary folder
    is left in ``--out``. Returns ``(out, first, second, a's
    summary.json after the first)``, each run ``(code, stdout, stderr, table, the files in
    out)``."""
    pytest.importorskip("apache_beam")
    tmp = tmp_path_factory.mktemp("fit_many")
    nan = float("nan")
    catalog = _catalog(tmp / "catalog" / "lenses.ecsv", lenses, [
        ("a", "lens_a.fits", 0.07, 0.4), ("b", "lens_b.fits", nan, nan),
        ("c", "lens_c.fits", nan, nan), ("d", "missing.fits", nan, nan)])
    out = tmp / "out"
    argv = ["fit-many", str(catalog), *TINY_MAP, "--out", str(out)]
    save_samples = pipeline.save_samples

    def failing_for_b(path, *a, **kw):
        if os.path.basename(os.path.dirname(path)) == "b":
            raise OSError("No space left on device (test)")
        return save_samples(path, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:  # (in this process: --lenses-per-process 0)
        mp.setattr(pipeline, "save_samples", failing_for_b)
        code, stdout, stderr = _run(argv + ["--lenses-per-process", "0"])
    first = (code, stdout, stderr, _table(out), sorted(os.listdir(out)))
    first_summary = (out / "a" / "summary.json").read_bytes()
    killed = out / ".tmp-killed" / "c"
    killed.mkdir(parents=True)
    (killed / "summary.json").write_text('{"parameters": {}}')
    code, stdout, stderr = _run(argv)
    second = (code, stdout, stderr, _table(out), sorted(os.listdir(out)))
    return out, first, second, first_summary


def test_fit_many_fits_each_lens_into_its_folder_and_records_failures(runs, lenses):
    out, (code, stdout, stderr, table, files), _, _ = runs
    assert code == 1, stderr  # some lenses failed; the others were fitted
    assert sorted(table) == ["a", "b", "c", "d"]
    assert table["a"]["status"] == "fitted" and table["a"]["error"] == ""
    # NaN pixels, a missing file: the fit's own errors, naming the file
    assert table["c"]["status"] == "failed"
    assert "non-finite pixels" in table["c"]["error"] and "lens_c.fits" in table["c"]["error"]
    assert table["d"]["status"] == "failed"
    assert "does not exist" in table["d"]["error"] and "missing.fits" in table["d"]["error"]
    # a lens whose outputs were half written when it failed leaves no folder behind
    assert table["b"]["status"] == "failed"
    assert "No space left on device" in table["b"]["error"]
    assert files == ["a", "fit_many.json", "fit_many_lenses.jsonl", "summary.ecsv",
                     "summary.parquet"]
    # one progress line per lens
    assert len(_lines(stdout, "a")) == 1 and "fitted in" in _lines(stdout, "a")[0]
    assert "failed: " in _lines(stdout, "c")[0]
    assert "1 fitted, 0 skipped (finished earlier), 3 failed" in stdout
    assert "(b, c, d)" in stderr
    # the lens's own columns replace the options; the header gives the rest
    assert lens_is_finished(out / "a")
    summary = json.loads((out / "a" / "summary.json").read_text())
    assert summary["settings"]["image"] == str(lenses / "lens_a.fits")
    assert (summary["settings"]["z_lens"], summary["settings"]["z_source"]) == (0.4, 1.5)
    assert "BKGRMS" not in " ".join(summary["settings"]["notes"])  # noise_rms 0.07
    # the table holds the posterior mean, std and MAP of every parameter
    row = table["a"]
    for p, stats in summary["parameters"].items():
        assert row[f"{p}.mean"] == pytest.approx(stats["mean"])
        assert row[f"{p}.std"] == pytest.approx(stats["std"])
        assert row[f"{p}.map"] == pytest.approx(summary["best_fit"][p])
    assert row["method"] == "map"
    assert row["time_s"] == pytest.approx(summary["timings"]["total"])
    assert np.isnan(table["c"]["lens.0.theta_E.mean"])
    # ... also as Parquet
    parquet = Table.read(out / "summary.parquet", format="parquet")
    assert list(parquet["name"]) == ["a", "b", "c", "d"]
    assert parquet["lens.0.theta_E.mean"][0] == pytest.approx(row["lens.0.theta_E.mean"])
    record = json.loads((out / "fit_many.json").read_text())
    assert record["fit_options"]["method"] == "map"


def test_fit_many_lens_folder_is_what_fit_writes(runs, lenses, tmp_path):
    out = runs[0]
    code, _, err = _run(["fit", str(lenses / "lens_a.fits"), *TINY_MAP, "--noise-rms",
                         "0.07", "--z-lens", "0.4", "--z-source", "1.5",
                         "--out", str(tmp_path / "fit")])
    assert code == 0, err
    assert sorted(os.listdir(out / "a")) == sorted(os.listdir(tmp_path / "fit"))
    many = json.loads((out / "a" / "summary.json").read_text())
    single = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert many["settings"] == single["settings"]
    for p, stats in single["parameters"].items():
        assert many["parameters"][p]["mean"] == pytest.approx(stats["mean"], rel=1e-4,
                                                              abs=1e-6)


def test_fit_many_rerun_skips_finished_lenses(runs):
    out, _, (code, stdout, stderr, table, files), first_summary = runs
    assert code == 1, stderr
    assert table["a"]["status"] == "skipped"
    assert (out / "a" / "summary.json").read_bytes() == first_summary  # not refitted
    assert "skipped" in _lines(stdout, "a")[0]
    # the lens that failed mid-write is fitted now; the broken ones fail again
    assert table["b"]["status"] == "fitted" and lens_is_finished(out / "b")
    assert [table[n]["status"] for n in "cd"] == ["failed", "failed"]
    assert "1 fitted, 1 skipped (finished earlier), 2 failed" in stdout
    # the skipped lens's row is the one of its fit
    assert table["a"]["lens.0.theta_E.mean"] == pytest.approx(
        json.loads(first_summary)["parameters"]["lens.0.theta_E"]["mean"])
    # the temporary folder of a killed run is gone, and was never taken for a lens
    assert files == ["a", "b", "fit_many.json", "fit_many_lenses.jsonl", "summary.ecsv",
                     "summary.parquet"]


def test_fit_many_refuses_other_options_in_the_same_folder(runs, lenses):
    out = runs[0]
    before = sorted(os.listdir(out))
    code, stdout, err = _run(["fit-many", str(lenses), *TINY_MAP, "--seed", "3",
                              "--map-steps", "6", "--out", str(out)])
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--map-steps 5 -> 6" in err and "--seed 0 -> 3" in err and "--overwrite" in err
    assert sorted(os.listdir(out)) == before


def test_fit_many_without_beam_runs_a_plain_loop(lenses, tmp_path, monkeypatch):
    # without Beam: one worker of the default runner runs a plain loop and says so (the
    # same rows and table); more workers are refused with the install command. (Lenses
    # that fail fast keep this test cheap; a stand-in fit plays a finished lens.)
    catalog = _catalog(tmp_path / "cat" / "lenses.ecsv", lenses,
                       [("c", "lens_c.fits", np.nan, np.nan),
                        ("d", "missing.fits", np.nan, np.nan)])
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails
    out = tmp_path / "out"
    argv = ["fit-many", str(catalog), *TINY_MAP, "--out", str(out), "--lenses-per-process", "0"]
    code, _, err = _run(argv + ["--num-workers", "2"])
    assert code == 2 and 'needs Apache Beam, which is not installed: pip install ' \
        '"tfstronglens[beam]"' in err, err
    assert not out.exists()
    code, stdout, err = _run(argv)
    assert code == 1, err
    assert "Apache Beam is not installed" in err and "one after another" in err
    rows = _table(out)
    assert [rows[n]["status"] for n in "cd"] == ["failed", "failed"]
    assert "does not exist" in rows["d"]["error"]
    assert "0 fitted, 0 skipped (finished earlier), 2 failed" in stdout
    # a finished lens is skipped, its row read from its summary.json
    (out / "d").mkdir()
    for name in ("samples.npz", "fit.png", "corner.png"):
        (out / "d" / name).write_bytes(b"")
    (out / "d" / "summary.json").write_text(json.dumps(
        {"method": "map", "problems": [], "timings": {"total": 7.0},
         "parameters": {"lens.0.theta_E": {"mean": 0.5, "std": 0.1}},
         "best_fit": {"lens.0.theta_E": 0.52}}))
    (out / "d" / "notes.txt").write_text("mine")
    code, stdout, _ = _run(argv)
    rows = _table(out)
    assert [rows[n]["status"] for n in "cd"] == ["failed", "skipped"]
    assert (rows["d"]["time_s"], rows["d"]["lens.0.theta_E.map"]) == (7.0, 0.52)
    # --overwrite refits every lens with the new options: the earlier fit's outputs go
    # when the run starts (here d then fails: its file is missing), other files stay
    code, stdout, err = _run(argv + ["--seed", "1", "--overwrite"])
    assert code == 1, err
    rows = _table(out)
    assert [rows[n]["status"] for n in "cd"] == ["failed", "failed"]
    assert sorted(os.listdir(out / "d")) == ["notes.txt"]
    assert json.loads((out / "fit_many.json").read_text())["fit_options"]["seed"] == 1


@pytest.mark.parametrize("case", ["missing", "no_path_column", "bad_value", "runner",
                                  "not_ours", "duplicate", "bad_option"])
def test_fit_many_bad_input_is_a_one_line_usage_error(case, lenses, tmp_path):
    out = tmp_path / "out"
    catalog = str(lenses)
    extra = []
    if case == "missing":
        catalog, expect = str(tmp_path / "nope.ecsv"), f"CATALOG {str(tmp_path / 'nope.ecsv')!r}"
    elif case == "no_path_column":
        catalog = str(tmp_path / "cat.ecsv")
        Table({"name": ["a"], "z_lens": [0.5]}).write(catalog, format="ascii.ecsv")
        expect = "has no path column"
    elif case == "bad_value":
        catalog = str(tmp_path / "cat.ecsv")
        Table({"path": [str(lenses / "lens_a.fits")], "noise_rms": ["-0.1"]}).write(
            catalog, format="ascii.ecsv")
        expect = "row 0 ('lens_a'): noise_rms must be a positive number, got '-0.1'"
    elif case == "runner":
        pytest.importorskip("apache_beam")
        extra, expect = ["--runner", "NoSuchRunner"], "--runner 'NoSuchRunner': not a Beam runner"
    elif case == "not_ours":
        out.mkdir()
        (out / "mine.txt").write_text("mine")
        expect = "is not a fit-many output folder"
    elif case == "duplicate":
        catalog = str(tmp_path / "cat.csv")
        Table({"image": [str(lenses / "lens_a.fits")] * 2}).write(catalog, format="ascii.csv")
        expect = "two lenses are named 'lens_a'"
    else:
        extra, expect = ["--neutra"], "--neutra applies to --method hmc"
    code, _, err = _run(["fit-many", catalog, *TINY_MAP, "--out", str(out), *extra])
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfstronglens fit-many: error: ") and expect in err, err
    assert not out.exists() or os.listdir(out) == ["mine.txt"]


def test_read_lens_catalog_takes_the_truth_table_of_simulate(lenses, tmp_path):
    # `simulate` writes truths.ecsv with a `filename` column beside the images
    Table({"index": [0, 1], "filename": ["lens_a.fits", "lens_b.fits"],
           "lens.0.theta_E": [0.5, 0.6]}).write(lenses / "truths.ecsv", format="ascii.ecsv")
    try:
        entries = read_lens_catalog(lenses / "truths.ecsv")
    finally:
        os.remove(lenses / "truths.ecsv")
    assert [e.name for e in entries] == ["lens_a", "lens_b"]
    assert entries[0].image == str(lenses / "lens_a.fits") and entries[0].options == {}
    assert [e.name for e in read_lens_catalog(lenses)] == ["lens_a", "lens_b", "lens_c"]


@pytest.mark.slow
def test_fit_many_in_two_worker_processes(lenses, tmp_path):
    pytest.importorskip("apache_beam")
    out = tmp_path / "out"
    code, stdout, err = _run(["fit-many", str(lenses), *TINY_MAP, "--out", str(out),
                              "--num-workers", "2"])
    assert code == 1, err
    rows = _table(out)
    assert [rows[n]["status"] for n in ("lens_a", "lens_b", "lens_c")] == \
        ["fitted", "fitted", "failed"]
    assert lens_is_finished(out / "lens_a") and lens_is_finished(out / "lens_b")
