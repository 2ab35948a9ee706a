"""The README's tour must run, and .ci/run must run exactly the README's test command."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def test_readme_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert blocks, "README has no python code block"
    ns = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102
    # the tour's claims: a batch of two images, and a gradient pulling theta_E to 1.0
    assert tuple(ns["images"].shape) == (2, 60, 60)
    assert np.all(np.isfinite(ns["images"].numpy()))
    assert float(ns["grad"]) > 0  # chi2 increases with theta_E above the truth


def test_ci_runs_the_readme_test_command():
    bash_blocks = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)
    test_cmds = [b.strip() for b in bash_blocks if "pytest" in b]
    assert len(test_cmds) == 1, test_cmds
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        ci_lines = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    assert test_cmds[0] in ci_lines, (test_cmds[0], ci_lines)


@pytest.mark.parametrize("name", ["setup.cfg", "setup.py", "tfstronglens", "tests", "notebooks",
                                  "datasets", "benchmarks", "README.md"])
def test_design_card_layout(name):
    assert os.path.exists(os.path.join(ROOT, name))
