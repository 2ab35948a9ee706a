"""The command line interface: ``tfstronglens simulate-example`` and ``python -m tfstronglens``."""

import contextlib
import io
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfstronglens as tsl  # noqa: E402
from tfstronglens import cli  # noqa: E402
from tfstronglens.io import params_from_header, read_fits  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), "..")


def run_main(argv):
    """Call ``cli.main`` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "example"
    code, stdout, stderr = run_main(["simulate-example", "--out", str(out), "--num-pix", "40",
                                     "--seed", "7"])
    return out, code, stdout, stderr


def test_simulate_example_writes_fits_and_png(example):
    out, code, stdout, stderr = example
    assert code == 0, stderr
    assert sorted(os.listdir(out)) == ["lens.fits", "lens.png"]

    image, hdr = read_fits(out / "lens.fits")
    assert image.shape == (40, 40) and image.dtype == np.float32
    assert np.all(np.isfinite(image))
    assert hdr["PIXSCALE"] == 0.05 and hdr["SEED"] == 7 and hdr["SUPERSMP"] == 2
    assert hdr["BUNIT"] == "electron/s" and hdr["PSFFWHM"] == 0.1

    # the truths in the header are exactly the parameters of the example ...
    sim, params = cli.example_lens(40, 0.05, 2)
    assert params_from_header(hdr, sim) == {
        kind: [{**prof.defaults, **p} for prof, p in zip(sim.components(kind), params[kind])]
        for kind in params
    }
    assert hdr["LENS0_THETA_E"] == 1.2 and hdr["LENS1_GAMMA1"] == 0.03
    assert hdr["SOURCE0_R_SERSIC"] == 0.15 and hdr["LENS_LIGHT0_N_SERSIC"] == 4.0
    expected_model = "EPL" if hasattr(tsl, "EPL") else "SIE"
    assert hdr["LENS0_MODEL"] == expected_model == sim.lens[0].name

    # ... and they render the noise-free MODEL extension
    model, mhdr = read_fits(out / "lens.fits", "MODEL")
    assert mhdr["BUNIT"] == "electron/s" and model.dtype == np.float32
    rendered = sim(**params_from_header(hdr, sim)).numpy()[0]
    np.testing.assert_allclose(model, rendered, rtol=1e-6, atol=1e-7 * rendered.max())
    assert model.max() > 0.1  # a real lens, not an empty image

    # the noise is Gaussian with the documented sigma (1600 pixels: std known to ~2%)
    residual = image - model
    assert abs(residual.mean()) < 4 * cli.EXAMPLE_NOISE_SIGMA / 40
    assert residual.std() == pytest.approx(cli.EXAMPLE_NOISE_SIGMA, rel=0.08)

    psf, phdr = read_fits(out / "lens.fits", "PSF")
    np.testing.assert_allclose(psf, tsl.GaussianPSF(0.1).kernel(0.05), rtol=1e-6)
    assert psf.sum() == pytest.approx(1.0, rel=1e-6) and phdr["PIXSCALE"] == 0.05

    with open(out / "lens.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # the summary names the files, the shape, the peak S/N and the truths
    assert str(out / "lens.fits") in stdout and str(out / "lens.png") in stdout
    assert "40 x 40" in stdout
    assert f"peak S/N {model.max() / cli.EXAMPLE_NOISE_SIGMA:.1f}" in stdout
    assert "theta_E=1.2" in stdout and "R_sersic=0.15" in stdout


def test_refuses_non_empty_directory_then_overwrites(example):
    out, code, _, _ = example
    assert code == 0
    before = (out / "lens.fits").read_bytes()
    old_image, _ = read_fits(out / "lens.fits")
    code, stdout, stderr = run_main(["simulate-example", "--out", str(out), "--num-pix", "40"])
    assert code == 2 and stdout == ""
    assert "not empty" in stderr and "--overwrite" in stderr and str(out) in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert (out / "lens.fits").read_bytes() == before

    # --overwrite replaces the files; another seed gives another noise realisation
    code, _, stderr = run_main(["simulate-example", "--out", str(out), "--num-pix", "40",
                                "--seed", "8", "--overwrite"])
    assert code == 0, stderr
    image, hdr = read_fits(out / "lens.fits")
    assert hdr["SEED"] == 8
    assert not np.array_equal(image, old_image)
    # same model, independent noise: the difference has std sqrt(2) sigma
    assert np.std(image - old_image) == pytest.approx(np.sqrt(2) * cli.EXAMPLE_NOISE_SIGMA, rel=0.1)
    assert sorted(os.listdir(out)) == ["lens.fits", "lens.png"]


def test_refuses_a_file_as_output_directory(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, _, stderr = run_main(["simulate-example", "--out", str(target)])
    assert code == 2 and "not a directory" in stderr and target.read_text() == "keep me"


@pytest.mark.parametrize("argv, needle", [
    (["simulate-example", "--num-pix", "0"], "--num-pix"),
    (["simulate-example", "--num-pix", "abc"], "--num-pix"),
    (["simulate-example", "--num-pix", "100000"], "--num-pix"),
    (["simulate-example", "--pixel-scale", "-0.05"], "--pixel-scale"),
    (["simulate-example", "--pixel-scale", "nan"], "--pixel-scale"),
    (["simulate-example", "--supersample", "0"], "--supersample"),
    (["simulate-example", "--seed", "-1"], "--seed"),
    (["simulate-example", "--bogus"], "--bogus"),
    (["no-such-command"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_give_one_line_error_and_exit_code_2(tmp_path, argv, needle):
    out = tmp_path / "never"
    code, stdout, stderr = run_main(argv + (["--out", str(out)] if argv[:1] == ["simulate-example"]
                                            else []))
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert "error:" in stderr and needle in stderr and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize("command", [["simulate", "--n", "2"], ["train-cnn"],
                                     ["train-ratio", "--params", "kappa_sub"]])
@pytest.mark.parametrize("content, needle", [(None, "does not exist"),
                                             ("{not json", "not valid JSON"),
                                             ("[1, 2]", "must hold")])
def test_every_json_config_error_names_the_option_and_file(tmp_path, command, content, needle):
    """The simulation commands read ``--config`` through one function: a missing file,
    invalid JSON or a value of the wrong kind is one line naming ``--config`` and the
    path, exit code 2, nothing written."""
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "never"
    code, _, stderr = run_main([*command, "--config", str(path), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "--config" in stderr and str(path) in stderr and needle in stderr, stderr
    assert "Traceback" not in stderr


def test_version_and_help():
    code, stdout, _ = run_main(["--version"])
    assert code == 0 and stdout.strip() == f"tfstronglens {tsl.__version__}"
    code, stdout, _ = run_main(["simulate-example", "--help"])
    assert code == 0 and "--pixel-scale" in stdout and "--overwrite" in stdout


def test_python_m_entry_point(tmp_path):
    """The real entry, in a fresh interpreter: ``python -m tfstronglens simulate-example``."""
    out = tmp_path / "sub"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "tfstronglens", "simulate-example", "--out", str(out),
         "--num-pix", "16", "--supersample", "1", "--pixel-scale", "0.1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "peak S/N" in proc.stdout
    image, hdr = read_fits(out / "lens.fits")
    assert image.shape == (16, 16) and np.all(np.isfinite(image)) and hdr["PIXSCALE"] == 0.1


# ------------------------------------------------------------------ help and start-up

def _subparsers(parser):
    """``[(command, parser)]`` of ``parser``'s commands."""
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(name, p) for a in actions for name, p in a.choices.items()]


def test_every_option_of_every_command_has_help():
    """``--help`` of every command explains every option and argument: each has a help
    text, in the command line's own words (``--num-pix``, not ``num_pix=``), and the
    command itself has a one-line help in ``tfstronglens --help``."""
    import argparse
    import re

    # a keyword argument (amp_scale=2); an option (--project=P) or an environment
    # variable (TF_CONFIG='...') is the command line's spelling
    python_spelling = re.compile(r"(?<![-\w])[a-z_][a-z0-9_]*=(?!=)")
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert len(commands) >= 10 and "simulate-example" in dict(commands)
    listed = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    problems = [f"{name}: no help line" for name, _ in commands if not listed.get(name)]
    for name, sub in [("tfstronglens", parser), *commands]:
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                problems.append(f"{what}: no help")
            elif python_spelling.search(action.help):
                problems.append(f"{what}: Python spelling in {action.help!r}")
            if (action.option_strings or [action.metavar or action.dest])[0] not in text:
                problems.append(f"{what}: not in --help")
        assert "--verbose" in text, name
    assert not problems, "\n".join(problems)
    # the check rejects what it must
    assert python_spelling.search("scale of the amplitude (amp_scale=2)")
    assert not python_spelling.search("e.g. --beam-options='--temp_location=gs://B'")
    assert not python_spelling.search("TF_CONFIG='{...}' (default: %(default)s)")


def _user_env():
    """The environment of a user's shell: none of the test suite's quieting."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFSTRONGLENS_QUIET")}
    return dict(env, MPLBACKEND="Agg")


# slow (two TensorFlow start-ups): the default suite checks the quiet start-up through
# test_packaging's installed simulate-example (empty stderr)
@pytest.mark.slow
def test_command_line_starts_without_tensorflow_messages(tmp_path):
    """``python -m tfstronglens`` prints none of TensorFlow's start-up lines (oneDNN,
    CUDA, CPU features, absl) by default; ``--verbose`` brings them back (so they are
    really hidden, not absent)."""
    from tfstronglens.cli_startup import is_tensorflow_startup_line

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tfstronglens", *args], cwd=REPO,
                              env=_user_env(), capture_output=True, text=True, timeout=300)

    quiet = run("simulate-example", "--help")
    assert quiet.returncode == 0 and "--pixel-scale" in quiet.stdout
    assert quiet.stderr == ""
    loud = run("simulate-example", "--help", "--verbose")
    assert loud.returncode == 0 and loud.stdout == quiet.stdout
    noise = [line for line in loud.stderr.splitlines() if is_tensorflow_startup_line(line)]
    assert noise, loud.stderr
    assert any("InitializeLog" in line or "cuda" in line.lower() or "oneDNN" in line
               for line in noise)


def test_tensorflow_warnings_hidden_during_a_command_unless_verbose(monkeypatch):
    """During a command the ``tensorflow`` logger (``tf.function`` retracing warnings)
    shows errors only, unless ``--verbose``; its level is restored afterwards."""
    import logging

    seen = []

    def fake_command(args):
        seen.append(logging.getLogger("tensorflow").isEnabledFor(logging.WARNING))
        return 0

    monkeypatch.setattr(cli, "_simulate_example", fake_command)
    before = logging.getLogger("tensorflow").level
    assert run_main(["simulate-example"])[0] == 0
    assert run_main(["simulate-example", "--verbose"])[0] == 0
    assert run_main(["--verbose", "simulate-example"])[0] == 0
    assert seen == [False, True, True]
    assert logging.getLogger("tensorflow").level == before


def test_the_command_line_is_recognised_before_tensorflow_is_imported():
    """:func:`command_line_argv` tells the command line (console script, ``python -m
    tfstronglens``) from any other program that imports the package."""
    from tfstronglens.cli_startup import command_line_argv, quiet_startup_requested

    py = "/usr/bin/python3"
    script = "/venv/bin/tfstronglens"
    assert command_line_argv([script, "fit", "x.fits"], [py, script, "fit", "x.fits"]) == [
        "fit", "x.fits"]
    # python -m: while the package is imported argv[0] is "-m"
    assert command_line_argv(["-m", "demo"], [py, "-m", "tfstronglens", "demo"]) == ["demo"]
    assert command_line_argv(["-m"], [py, "-X", "importtime", "-mtfstronglens", "-h"]) == ["-h"]
    assert command_line_argv(["-m"], [py, "-W", "ignore", "-m", "tfstronglens.cli"]) == []
    # other programs
    assert command_line_argv(["-m"], [py, "-m", "pytest", "-q"]) is None
    assert command_line_argv(["run.py"], [py, "run.py", "-m", "tfstronglens"]) is None
    assert command_line_argv(["-c"], [py, "-c", "import tfstronglens"]) is None
    assert command_line_argv(["/venv/bin/tfstronglens-tools"], [py]) is None
    # quiet: the command line without --verbose, or a process it started
    env = {}
    assert quiet_startup_requested([script, "demo"], [py, script, "demo"], env)
    assert not quiet_startup_requested([script, "demo", "--verbose"], [py], env)
    assert quiet_startup_requested([script, "fit", "--", "--verbose"], [py], env)
    assert not quiet_startup_requested(["-c"], [py, "-c", "pass"], env)
    assert quiet_startup_requested(["-c"], [py, "-c", "pass"], {"TFSTRONGLENS_QUIET": "1"})
    assert not quiet_startup_requested([script], [py, script], {"TFSTRONGLENS_QUIET": "0"})


def test_quiet_import_hides_tensorflow_lines_only(capfd, monkeypatch):
    """:func:`quiet_tensorflow_import` drops TensorFlow's log lines written to file
    descriptor 2 in its block and writes every other line back (an error is seen)."""
    from tfstronglens.cli_startup import is_tensorflow_startup_line, quiet_tensorflow_import

    monkeypatch.delenv("TFSTRONGLENS_QUIET", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to "
        "STDERR",
        "I0000 00:00:1796645429.054455   29099 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796645429.054943   29099 cudart_stub.cc:31] Could not find cuda "
        "drivers on your machine, GPU will not be used.",
        "E0000 00:00:1796645478.278219   30055 cuda_platform.cc:52] failed call to cuInit",
        "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] "
        "Could not find cuda drivers on your machine, GPU will not be used.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
    ]
    kept = ["Traceback (most recent call last):",
            "F0000 00:00:1796645478.278219   30055 main.cc:1] fatal: kept",
            "ImportError: libfoo.so: cannot open shared object file",
            "UserWarning: I0000 is not a log line here"]
    assert all(is_tensorflow_startup_line(line) for line in noise)
    assert not any(is_tensorflow_startup_line(line) for line in kept)

    capfd.readouterr()
    with quiet_tensorflow_import(quiet=True):
        os.write(2, ("\n".join(noise[:3] + kept[:2] + noise[3:] + kept[2:]) + "\n").encode())
        print("python stderr line", file=sys.stderr)
    err = capfd.readouterr().err.splitlines()
    # (under pytest sys.stderr is not file descriptor 2, so its line comes first)
    assert [line for line in err if line != "python stderr line"] == kept
    assert "python stderr line" in err
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"  # a user's setting is kept
    assert os.environ["TFSTRONGLENS_QUIET"] == "1"  # child processes start quietly

    with quiet_tensorflow_import(quiet=False):  # not the command line: nothing is touched
        os.write(2, (noise[1] + "\n").encode())
    assert capfd.readouterr().err == noise[1] + "\n"
