"""The package as a user installs it: a wheel built from the source distribution, installed
in a folder of its own and used from outside the checkout.

The module fixture copies the files of the checkout that a release is made of (those git
tracks, when git is there) to a temporary folder, builds the source distribution
(``setup.py sdist``, which reads MANIFEST.in) and from it the wheel (``pip wheel
--no-build-isolation``: nothing is downloaded), and installs the wheel with ``pip install
--no-deps --target``. The tests then run Python with only that folder on ``PYTHONPATH``
(the dependencies come from the environment) in a working directory outside the checkout,
so that an import of the checkout instead of the installed package, or a file that the
package needs at run time but the wheel lacks (the shipped models), fails them.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from tfstronglens.io import read_fits

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGE = os.path.join(REPO, "tfstronglens")
PRETRAINED = os.path.join(PACKAGE, "models", "pretrained")
#: Files of the checkout besides the package that the build reads.
BUILD_FILES = ("setup.py", "setup.cfg", "README.md", "MANIFEST.in")


def _package_files():
    """The package's files in the checkout, relative to the repository: those git tracks
    (what a clone, and so a release, has), or all files but bytecode without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                              "--", "tfstronglens"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # not a git checkout
        for root, dirs, names in os.walk(PACKAGE):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [os.path.relpath(os.path.join(root, n), REPO) for n in names
                      if not n.endswith((".pyc", ".pyo"))]
    # files another change deleted in the work tree but git still lists are not shipped
    return sorted(f for f in files if os.path.isfile(os.path.join(REPO, f)))


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _clean_env(site):
    """The environment of a user's process: only ``site`` added to the import path, no
    setting of the test suite that quiets TensorFlow."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "TFSTRONGLENS_QUIET")}
    env.update(PYTHONPATH=str(site), MPLBACKEND="Agg", PYTHONNOUSERSITE="1")
    return env


def _run(args, cwd, timeout=600, env=None):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(wheel path, install folder, package files)``: the wheel built from the sdist
    of a copy of the checkout, installed with ``pip install --target``."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    files = _package_files()
    for rel in [*BUILD_FILES, *files]:
        if os.path.isfile(os.path.join(REPO, rel)):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), src / rel)
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp / "sdist")], cwd=src)
    (sdist,) = glob.glob(str(tmp / "sdist" / "tfstronglens-*.tar.gz"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
          "-w", str(tmp / "wheel"), sdist], cwd=tmp)
    (wheel,) = glob.glob(str(tmp / "wheel" / "tfstronglens-*.whl"))
    site = tmp / "site"
    _run([*pip, "install", "--no-deps", "--no-cache-dir", "-q", "--target", str(site), wheel],
         cwd=tmp)
    return wheel, site, files


def test_wheel_holds_every_file_of_the_package(built):
    """Every file of the package in the checkout (modules and the shipped models) is in
    the wheel, byte for byte, and nothing from outside the package is."""
    wheel, _, files = built
    assert any(f.endswith(".keras") for f in files)  # the models are among the files
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = [f for f in files if f not in names]
        assert not missing, f"not in the wheel: {missing}"
        for f in files:
            if f.endswith(".keras"):
                assert hashlib.sha256(zf.read(f)).hexdigest() == _sha256(os.path.join(REPO, f))
    outside = [n for n in names
               if not n.startswith(("tfstronglens/", "tfstronglens-"))
               or "__pycache__" in n or n.endswith(".pyc")]
    assert not outside, outside
    metadata = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        assert "tfstronglens = tfstronglens.cli:main" in zf.read(metadata[0]).decode()


# slow (a TensorFlow start-up and four model loads): the default suite checks the wheel's
# files (test_wheel_holds_every_file_of_the_package) and runs the installed package
@pytest.mark.slow
def test_installed_package_imports_and_loads_its_models_outside_the_checkout(built, tmp_path):
    """``import tfstronglens`` in a process that runs outside the checkout finds the
    installed package, which has every shipped model file (the checkout's bytes), and
    each of them loads (Keras, with the package's classes)."""
    _, site, _ = built
    script = textwrap.dedent("""
        import hashlib, json, os, sys
        import keras
        import tfstronglens
        import tfstronglens.models
        from tfstronglens.models import load_pretrained_vae, pretrained_path

        PRETRAINED_DIR = os.path.dirname(pretrained_path())

        files = {}
        for name in sorted(os.listdir(PRETRAINED_DIR)):
            with open(os.path.join(PRETRAINED_DIR, name), "rb") as f:
                files[name] = hashlib.sha256(f.read()).hexdigest()
        loaded = {}
        for name in files:
            if name.endswith(".keras"):
                model = keras.models.load_model(os.path.join(PRETRAINED_DIR, name),
                                                compile=False)
                loaded[name] = type(model).__name__
        vae = load_pretrained_vae()
        print(json.dumps(dict(file=tfstronglens.__file__, pretrained_dir=PRETRAINED_DIR,
                              files=files, loaded=loaded, vae=type(vae).__name__,
                              version=tfstronglens.__version__)))
    """)
    proc = _run([sys.executable, "-c", script], cwd=tmp_path, env=_clean_env(site))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    installed = os.path.realpath(info["file"])
    assert installed.startswith(os.path.realpath(site) + os.sep), info["file"]
    assert not installed.startswith(REPO + os.sep)
    assert os.path.realpath(info["pretrained_dir"]).startswith(os.path.realpath(site))

    shipped = {n: _sha256(os.path.join(PRETRAINED, n)) for n in os.listdir(PRETRAINED)
               if os.path.isfile(os.path.join(PRETRAINED, n))}
    assert info["files"] == shipped
    assert set(info["loaded"]) == {n for n in shipped if n.endswith(".keras")}
    assert info["vae"] == "VAE"


def test_installed_command_line_simulates_the_example(built, tmp_path):
    """``python -m tfstronglens simulate-example`` of the installed package writes the
    example lens, and prints no TensorFlow start-up messages."""
    _, site, _ = built
    out = tmp_path / "example"
    proc = _run([sys.executable, "-m", "tfstronglens", "simulate-example", "--out", str(out),
                 "--num-pix", "16", "--supersample", "1", "--pixel-scale", "0.1"],
                cwd=tmp_path, env=_clean_env(site))
    assert proc.stderr == ""
    assert "peak S/N" in proc.stdout and str(out / "lens.fits") in proc.stdout
    image, hdr = read_fits(out / "lens.fits")
    assert image.shape == (16, 16) and np.all(np.isfinite(image))
    assert hdr["ORIGIN"].startswith("tfstronglens ")


@pytest.mark.slow
def test_installed_console_script(built, tmp_path):
    """The ``tfstronglens`` script that pip writes for the entry point runs the
    command line of the installed package, quietly. (Slow only for its TensorFlow import:
    the entry point is checked in the wheel's metadata, the recognition of the script in
    test_cli.py.)"""
    _, site, _ = built
    script = site / "bin" / "tfstronglens"
    assert script.is_file()
    proc = _run([sys.executable, str(script), "--version"], cwd=tmp_path, env=_clean_env(site))
    assert proc.stdout.strip().startswith("tfstronglens ") and proc.stderr == ""


@pytest.mark.slow
def test_installed_demo_runs(built, tmp_path):
    """``tfstronglens demo`` (the VAE source from the shipped model, a subhalo, the fit
    and the detection statistic) from the installed package, with a short MAP."""
    _, site, _ = built
    proc = _run([sys.executable, "-m", "tfstronglens", "demo", "--num-starts", "2",
                 "--map-steps", "20", "--no-progress"],
                cwd=tmp_path, env=_clean_env(site), timeout=1800)
    assert "subhalo detection" in proc.stdout and "theta_E" in proc.stdout


def _requirements(section_text):
    return [line.split("#")[0].strip() for line in section_text.splitlines()
            if line.split("#")[0].strip()]


def test_dependency_bounds_admit_the_tested_versions():
    """The versions installed here (the ones the suite tests) satisfy every bound of
    ``install_requires`` and of the ``test`` extra, including the requirements of the
    extras they name (``tensorflow-probability[tf]`` brings tf-keras); and the bounds do
    reject other versions (a lower bound below them, an upper bound above)."""
    import configparser
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    reqs = [Requirement(r) for r in _requirements(cfg["options"]["install_requires"])]
    reqs += [Requirement(r) for r in _requirements(cfg["options.extras_require"]["test"])]
    assert {"tensorflow", "tensorflow-probability", "keras", "numpy"} <= {r.name for r in reqs}

    def check(req, seen):
        if req.name in seen or (req.marker and not req.marker.evaluate()):
            return
        seen.add(req.name)
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req} vs installed {version}"
        for extra in req.extras:
            for sub in metadata.requires(req.name) or []:
                sub = Requirement(sub)
                if sub.marker and sub.marker.evaluate({"extra": extra}):
                    sub.marker = None
                    check(sub, seen)

    seen = set()
    for req in reqs:
        check(req, seen)
    assert "tf-keras" in seen or "tf_keras" in seen  # through tensorflow-probability[tf]
    bounded = {r.name: r.specifier for r in reqs}
    assert not bounded["keras"].contains("4.0") and not bounded["numpy"].contains("3.0")
    assert not bounded["tensorflow"].contains(str(Version("2.15")))
