"""Execute every notebook in notebooks/ without Jupyter.

Code cells run in order in one namespace, as in a kernel. IPython-only lines (``!shell``
and ``%magic``) are replaced by ``pass`` (so an indented block stays valid); matplotlib
uses the Agg backend. The working directory is notebooks/, as for Jupyter. A cell that
raises fails the test, naming the notebook and the cell.
"""

import glob
import json
import os
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

NOTEBOOK_DIR = os.path.join(os.path.dirname(__file__), "..", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


class NotebookCellError(AssertionError):
    pass


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_magics(source: str) -> str:
    """Replace lines starting with ``!`` or ``%`` by ``pass`` at the same indentation."""
    out = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            out.append(line[: len(line) - len(stripped)] + "pass")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def run_notebook(path: str) -> dict:
    """Run the code cells of ``path`` in one namespace; raise NotebookCellError on failure."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    namespace = {"__name__": "__main__"}
    name = os.path.basename(path)
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        source = strip_magics(_cell_source(cell))
        try:
            code = compile(source, f"<{name} cell {index}>", "exec")
            with warnings.catch_warnings():
                # plt.show() under Agg warns that the backend is non-interactive
                warnings.filterwarnings("ignore", message=".*non-interactive.*")
                exec(code, namespace)  # noqa: S102 - running our own notebooks is the point
        except Exception as exc:
            raise NotebookCellError(
                f"{name}: code cell {index} raised {type(exc).__name__}: {exc}\n--- cell ---\n{source}"
            ) from exc
        finally:
            plt.close("all")
    return namespace


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    """Valid nbformat-4 JSON with outputs cleared, and a first cell that installs."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells, "a notebook without code"
    for c in code_cells:
        assert c.get("outputs") == [], f"outputs not cleared in {path}"
        assert c.get("execution_count") is None, f"execution_count not cleared in {path}"
    first = _cell_source(code_cells[0])
    assert "pip" in first and "install" in first, "the first code cell must install the package"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.chdir(NOTEBOOK_DIR)
    ns = run_notebook(path)
    assert ns, "the notebook defined nothing"


def _write_nb(tmp_path, sources):
    nb = {"cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [],
                     "execution_count": None} for s in sources],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "t.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def test_runner_fails_on_a_raising_cell(tmp_path):
    path = _write_nb(tmp_path, ["x = 1\n", "y = x / 0\n", "z = 3\n"])
    with pytest.raises(NotebookCellError, match=r"cell 1 raised ZeroDivisionError") as info:
        run_notebook(path)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_runner_shares_namespace_and_skips_magics(tmp_path):
    path = _write_nb(tmp_path, [
        ["%pip install -q nothing\n", "a = 2\n"],
        ["if a == 2:\n", "    !echo shell\n", "b = a * 3\n"],
        "%%timeit\nc = b + 1\n",
    ])
    ns = run_notebook(path)
    assert (ns["a"], ns["b"], ns["c"]) == (2, 6, 7)
    assert strip_magics("if x:\n    !ls\n") == "if x:\n    pass\n"
