"""Execute entries 1, 3, 5, ... of the sorted notebooks/ (see tests/test_notebooks.py, which runs
the other half and holds the runner and the per-notebook checks)."""

import os

import pytest

from test_notebooks import NOTEBOOKS_ODD, run_and_check


@pytest.mark.parametrize("path", NOTEBOOKS_ODD, ids=[os.path.basename(p) for p in NOTEBOOKS_ODD])
def test_notebook_runs(path, monkeypatch):
    run_and_check(path, monkeypatch)
