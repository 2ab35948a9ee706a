"""The ``fit-many`` command: fit a catalogue of lenses as an Apache Beam pipeline.

``tfstronglens fit-many CATALOG.ecsv|FOLDER --out DIR [fit options] [--runner R]
[--num-workers N]`` fits every lens of a catalogue with the options of ``fit`` and the
per-lens code path of ``fit`` (:func:`tfstronglens.cli_fit.fit_image`), so that each lens
folder ``DIR/<name>/`` holds exactly what ``tfstronglens fit IMAGE.fits --out
DIR/<name>`` writes. The lenses are the elements of a Beam pipeline: the same command
runs them in this process (``--num-workers 1``), in ``N`` local worker processes
(``--num-workers N``: Beam's ``DirectRunner`` in ``multi_processing`` mode) or on a
cluster (``--runner DataflowRunner|FlinkRunner|SparkRunner|...`` with
``--beam-options``), without code changes. Each worker process keeps its own TensorFlow
state.

Why these choices:

* **Resumable at lens granularity.** A lens is fitted into a temporary folder beside
  ``DIR/<name>`` and renamed into place when all its files are written
  (:func:`tfstronglens.io._atomic.atomic_directory`), so a killed run never leaves a
  half-written lens folder that a rerun would take for finished. A rerun skips the lenses
  whose folder holds a complete fit (:func:`lens_is_finished`) and fits the others.
* **Failures stay local.** A lens whose fit raises (a missing file, NaN pixels, a fit
  that fails) is recorded with its error in the summary table; the others go on. It has
  no folder, so a rerun tries it again.
* **One table.** ``DIR/summary.ecsv`` (and ``DIR/summary.parquet`` when pyarrow is
  installed) has one row per lens of the catalogue: ``name``, ``status`` (``fitted`` in
  this run, ``skipped``: finished in an earlier run, or ``failed``), ``error``,
  ``time_s`` (seconds of the fit, :func:`~tfstronglens.inference.fit_lens`' total), the
  ``image`` path, the ``method``, HMC ``problems`` and per scalar parameter
  ``<name>.mean``, ``<name>.std`` (posterior: Laplace, VI or HMC draws) and ``<name>.map``
  (the MAP), and the subhalo detection statistic when run (the VAE latents
  ``source.z.*`` are left out: they stay in each ``summary.json``).
* **Options are recorded.** ``DIR/fit_many.json`` holds the fit options of the run; a
  rerun with other options is refused (it would mix fits of two settings) unless
  ``--overwrite``, which refits every lens, replacing its folder when the new fit is
  complete.

Apache Beam is an optional dependency (``pip install "tfstronglens[beam]"``). Without
it, ``fit-many`` with the default runner and one worker falls back to a plain loop in
this process (same outputs) and says so; other runners or ``--num-workers`` above 1 are
refused with the install command.

The output folder must be one file system that every worker writes (local disk for the
``DirectRunner``; a shared mount on a cluster): the fits write with ordinary file I/O.
Run one ``fit-many`` per output folder at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import sys
import time

import numpy as np

from .beam_runner import is_direct_runner
from .cli import _UserError, _positive_int, _seed

__all__ = ["add_parsers", "LensEntry", "read_lens_catalog", "lens_is_finished",
           "fit_catalog_lens", "summary_row", "progress_line", "LensFitter",
           "write_summary_table", "setup_worker", "run_fit_many",
           "CATALOG_PATH_COLUMNS", "CATALOG_OPTION_COLUMNS", "SUMMARY_TABLE", "RUN_RECORD",
           "LENS_LIST"]

#: Names of the catalogue column that holds each lens's FITS file (the first one present
#: is used; ``filename`` is the column of ``tfstronglens simulate``'s ``truths.ecsv``).
CATALOG_PATH_COLUMNS = ("path", "image", "filename", "file")
#: Optional catalogue columns that set a lens's own value of a ``fit`` option (the
#: option's ``args`` name); an empty, masked or NaN cell keeps the command-line value.
#: ``psf`` and ``noise_map`` are file paths, relative to the catalogue's folder.
CATALOG_OPTION_COLUMNS = ("hdu", "psf", "psf_fwhm", "noise_rms", "noise_map", "exposure",
                          "pixel_scale", "z_lens", "z_source")
# Option pairs of which a lens's own value of one replaces the command line's other
# (they are mutually exclusive in ``fit``).
_EXCLUSIVE = {"psf": "psf_fwhm", "psf_fwhm": "psf", "noise_rms": "noise_map",
              "noise_map": "noise_rms"}
_FILE_COLUMNS = ("psf", "noise_map")
_NUMBER_COLUMNS = ("psf_fwhm", "noise_rms", "exposure", "pixel_scale", "z_lens", "z_source")
#: The summary table in ``--out`` (``.ecsv``, and ``.parquet`` when pyarrow is installed).
SUMMARY_TABLE = "summary"
#: The record of a run's fit options in ``--out``.
RUN_RECORD = "fit_many.json"
#: The lenses of the last run in ``--out``, one :class:`LensEntry` as JSON per line: what
#: the pipeline reads (a file rather than a list inside the pipeline, so that the job a
#: cluster runner receives stays small for any number of lenses).
LENS_LIST = "fit_many_lenses.jsonl"
# Options that do not change a lens's fit (left out of the run record).
_NOT_FIT_OPTIONS = ("catalog", "out", "overwrite", "runner", "num_workers", "beam_options",
                    "lenses_per_process", "no_progress", "func", "command", "spec")
# The files of a finished lens folder besides summary.json (samples.nc needs ArviZ).
_FINISHED_FILES = ("samples.npz", "fit.png", "corner.png")
_STATUSES = ("fitted", "skipped", "failed")
_INSTALL = 'pip install "tfstronglens[beam]"'


@dataclasses.dataclass(frozen=True)
class LensEntry:
    """One lens of a catalogue: its folder ``name`` in ``--out``, its FITS ``image`` (an
    absolute path) and ``options``, its own values of ``fit`` options (``args`` names,
    e.g. ``{"noise_rms": 0.05, "z_lens": 0.4}``) that replace the command line's."""

    name: str
    image: str
    options: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """One line of JSON (a line of :data:`LENS_LIST`)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "LensEntry":
        """The entry of a line that :meth:`to_json` wrote."""
        return cls(**json.loads(line))


def _cell(value):
    """A catalogue cell as a Python value, ``None`` when empty, masked or NaN."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, (str, np.str_)):
        value = str(value).strip()
        return value or None
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    return value


def _check_names(entries, where):
    """Refuse lens names that are not plain folder names, or that repeat."""
    seen = {}
    for e in entries:
        if (not e.name or e.name in (".", "..") or e.name.startswith(".")
                or os.sep in e.name or (os.altsep and os.altsep in e.name)):
            raise _UserError(f"{where}: lens name {e.name!r} (image {e.image!r}) is not a "
                             "plain folder name (no path separators, no leading '.')")
        if e.name in seen:
            raise _UserError(f"{where}: two lenses are named {e.name!r} ({seen[e.name]!r} "
                             f"and {e.image!r}); give the catalogue a unique 'name' column")
        seen[e.name] = e.image


def read_lens_catalog(source) -> list:
    """The lenses to fit, as :class:`LensEntry` objects in catalogue order.

    Args:
      source: a folder (every ``*.fits`` file in it, sorted by name, each lens named after
        its file without ``.fits``; e.g. the output of ``tfstronglens simulate``, whose
        images carry their noise and redshifts in the header), or a table that astropy
        reads (``.ecsv``, ``.csv``) with a path column (:data:`CATALOG_PATH_COLUMNS`;
        relative paths are relative to the table's folder), an optional ``name`` column
        (default: the file name without ``.fits``) and optional per-lens option columns
        (:data:`CATALOG_OPTION_COLUMNS`). Other columns (e.g. truths) are ignored.

    Raises ``_UserError`` naming ``CATALOG`` and the value for a source that does not
    exist, cannot be read, has no path column or no lens, or names two lenses alike.
    Missing image files are not refused here: their lenses fail one by one.
    """
    source = os.fspath(source)
    where = f"CATALOG {source!r}"
    if os.path.isdir(source):
        files = sorted(f for f in os.listdir(source) if f.endswith(".fits")
                       and os.path.isfile(os.path.join(source, f)))
        if not files:
            raise _UserError(f"{where} is a folder with no .fits files")
        entries = [LensEntry(f[:-len(".fits")], os.path.abspath(os.path.join(source, f)))
                   for f in files]
        _check_names(entries, where)
        return entries
    if not os.path.isfile(source):
        raise _UserError(f"{where} does not exist (give a table of lenses, e.g. an .ecsv "
                         "file, or a folder of .fits files)")
    from astropy.table import Table

    formats = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv"}
    fmt = formats.get(os.path.splitext(source)[1].lower())
    if fmt is None:
        raise _UserError(f"{where}: unknown table format; give an .ecsv or .csv table, or a "
                         "folder of .fits files")
    try:
        table = Table.read(source, format=fmt)
    except Exception as exc:  # astropy raises many kinds for a malformed table
        raise _UserError(f"{where} could not be read as {fmt}: {exc}") from None
    column = next((c for c in CATALOG_PATH_COLUMNS if c in table.colnames), None)
    if column is None:
        raise _UserError(f"{where} has no path column: name the column of the FITS files "
                         f"one of {list(CATALOG_PATH_COLUMNS)} (columns: {table.colnames})")
    if len(table) == 0:
        raise _UserError(f"{where} holds no lenses")
    base = os.path.dirname(os.path.abspath(source))
    entries = []
    for i, row in enumerate(table):
        path = _cell(row[column])
        if path is None:
            raise _UserError(f"{where}: row {i} has no {column!r}")
        path = os.path.join(base, os.path.expanduser(str(path)))
        name = _cell(row["name"]) if "name" in table.colnames else None
        if name is None:
            stem = os.path.basename(path)
            name = stem[:-len(".fits")] if stem.endswith(".fits") else stem
        options = {}
        for key in CATALOG_OPTION_COLUMNS:
            value = _cell(row[key]) if key in table.colnames else None
            if value is None:
                continue
            if key in _FILE_COLUMNS:
                value = os.path.join(base, os.path.expanduser(str(value)))
            elif key == "hdu":
                value = str(value)  # as the --hdu option (index or EXTNAME)
            else:
                number = _number(value)
                if not (math.isfinite(number) and number > 0):
                    raise _UserError(f"{where}: row {i} ({name!r}): {key} must be a positive "
                                     f"number, got {value!r}")
                value = number
            options[key] = value
        entries.append(LensEntry(str(name), os.path.abspath(path), options))
    _check_names(entries, where)
    return entries


def lens_is_finished(folder) -> bool:
    """Whether ``folder`` holds a complete fit: a ``summary.json`` that is a JSON object
    with ``parameters``, beside the samples and both PNGs."""
    try:
        with open(os.path.join(folder, "summary.json")) as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and isinstance(summary.get("parameters"), dict)
            and all(os.path.isfile(os.path.join(folder, f)) for f in _FINISHED_FILES))


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def summary_row(name: str, image: str, folder, status: str, error: str = "",
                time_s: float = float("nan")) -> dict:
    """One row of the summary table: ``name``, ``status``, ``error``, ``time_s``,
    ``image`` and, read from ``folder/summary.json`` when ``status`` is not
    ``"failed"``, ``method``, ``problems``, per scalar parameter ``<p>.mean``,
    ``<p>.std``, ``<p>.map`` and the subhalo detection's ``delta_log_likelihood`` and
    ``significance_sigma``. ``time_s`` of a finished lens is its fit's total time."""
    if status not in _STATUSES:
        raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
    row = {"name": name, "status": status, "error": error, "time_s": _number(time_s),
           "image": image, "method": "", "problems": ""}
    if status == "failed":
        return row
    with open(os.path.join(folder, "summary.json")) as fh:
        summary = json.load(fh)
    row["method"] = str(summary.get("method") or "")
    row["problems"] = "; ".join(summary.get("problems") or [])
    row["time_s"] = _number((summary.get("timings") or {}).get("total"))
    best = summary.get("best_fit") or {}
    for p, stats in (summary.get("parameters") or {}).items():
        if p.startswith("source.z."):
            continue
        row[f"{p}.mean"] = _number(stats.get("mean"))
        row[f"{p}.std"] = _number(stats.get("std"))
        row[f"{p}.map"] = _number(best.get(p)) if np.ndim(best.get(p)) == 0 else np.nan
    det = summary.get("subhalo_detection")
    if det:
        for key in ("delta_log_likelihood", "significance_sigma"):
            row[f"subhalo_detection.{key}"] = _number(det.get(key))
    return row


def _lens_args(entry: LensEntry, options: dict) -> argparse.Namespace:
    """The ``fit`` arguments of one lens: the command line's ``options`` with the lens's
    image and its own option values (a lens's value of one of two exclusive options
    clears the command line's other); without a value anywhere, the redshifts come from
    the image header's ``ZLENS``/``ZSOURCE`` (``simulate`` writes them) unless
    ``--model`` gives the model."""
    args = argparse.Namespace(**options)
    args.image, args.command, args.no_progress = entry.image, "fit-many", True
    for key, value in entry.options.items():
        setattr(args, key, value)
        other = _EXCLUSIVE.get(key)
        if other is not None and other not in entry.options:
            setattr(args, other, None)
    if args.model is None and (args.z_lens is None or args.z_source is None):
        header = _primary_header(entry.image)
        for key, card in (("z_lens", "ZLENS"), ("z_source", "ZSOURCE")):
            value = _number(header.get(card)) if getattr(args, key) is None else None
            if value is not None and math.isfinite(value) and value > 0:
                setattr(args, key, value)
    return args


def _primary_header(path) -> dict:
    """The primary FITS header of ``path`` as a dict; empty when it cannot be read (the
    fit then says why, naming the file)."""
    try:
        from astropy.io import fits

        return dict(fits.getheader(path, 0))
    except Exception:  # a missing or broken file: the fit reports it
        return {}


def _one_line(exc: BaseException) -> str:
    """An exception as one line: the message of a user-facing error, else its type too."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (_UserError, ValueError, FileNotFoundError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clear_fit_outputs(folder):
    """Delete the fit outputs (not other files) of an earlier fit in ``folder``."""
    from .cli_fit import HMC_CHECKPOINT
    from .inference import FIT_OUTPUT_FILES

    for name in (*FIT_OUTPUT_FILES, HMC_CHECKPOINT):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(os.path.join(folder, name))


def fit_catalog_lens(entry: LensEntry, options: dict, out: str, *,
                     overwrite: bool = False) -> dict:
    """Fit one lens of a catalogue into ``out/<entry.name>/`` and return its
    :func:`summary_row`; the unit of work of the ``fit-many`` pipeline.

    A lens whose folder holds a complete fit (:func:`lens_is_finished`) is skipped
    unless ``overwrite``. Otherwise it is fitted by ``fit``'s per-lens code path
    (:func:`tfstronglens.cli_fit.fit_image`) with the fit options ``options`` (``args``
    names) and the lens's own values, into a temporary folder that replaces
    ``out/<name>`` only when every file is written. Any exception of the fit is caught and
    recorded in the row (status ``"failed"``); with ``overwrite`` the outputs of an
    earlier fit in ``out/<name>`` are then deleted, so that a rerun does not take a fit of
    other options for finished. Nothing is printed (:func:`progress_line` says what
    happened).
    """
    from .cli_fit import fit_image
    from .io._atomic import atomic_directory

    folder = os.path.join(out, entry.name)
    if not overwrite and lens_is_finished(folder):
        return summary_row(entry.name, entry.image, folder, "skipped")
    t0 = time.perf_counter()
    try:
        args = _lens_args(entry, options)
        with atomic_directory(folder, overwrite=True) as tmp:
            os.makedirs(tmp)
            args.out, args.overwrite = tmp, False
            fit_image(args, log=io.StringIO())  # (its notes are in summary.json)
        return summary_row(entry.name, entry.image, folder, "fitted")
    except Exception as exc:  # one lens's failure must not stop the others
        if overwrite:
            _clear_fit_outputs(folder)
        return summary_row(entry.name, entry.image, folder, "failed", error=_one_line(exc),
                           time_s=time.perf_counter() - t0)


def progress_line(row: dict) -> str:
    """The line ``fit-many`` prints when a lens is done (its :func:`summary_row`)."""
    if row["status"] == "fitted":
        return f"fit-many: {row['name']}: fitted in {row['time_s']:.1f} s"
    if row["status"] == "skipped":
        return f"fit-many: {row['name']}: skipped (finished earlier)"
    return f"fit-many: {row['name']}: failed: {row['error']}"


class LensFitter:
    """Fits the lenses of a catalogue one at a time (:func:`fit_catalog_lens`) in a child
    process that is replaced after ``lenses_per_process`` lenses, and prints one
    :func:`progress_line` per lens; what each ``fit-many`` worker runs.

    Why a child process: every fit builds and compiles its own model, and TensorFlow
    keeps what it compiled for the life of the process (measured: about 0.25-0.45 GB
    more resident memory per lens of 64 x 64 pixels with XLA), so a long-lived process
    that fits thousands of lenses would run out of memory. A fresh process per
    ``lenses_per_process`` lenses bounds that, at the cost of one TensorFlow import
    (~10 s) each time; a lens whose process dies (out of memory, a crash) is recorded as
    failed and the next lens gets a new process. ``lenses_per_process=0`` fits in this
    process instead (no import cost; for a few small lenses, and for tests).

    Args:
      options: the fit options (``args`` names of ``fit``).
      out: the output folder.
      overwrite: refit lenses that are finished.
      lenses_per_process: lenses per child process; 0 for this process.
      threads: TensorFlow threads of the process that fits (:func:`setup_worker`).

    Use as a context manager (or call :meth:`close`) to end the child process.
    """

    def __init__(self, options: dict, out: str, *, overwrite: bool = False,
                 lenses_per_process: int = 4, threads: int | None = None):
        if isinstance(lenses_per_process, bool) or not isinstance(lenses_per_process, int) \
                or lenses_per_process < 0:
            raise ValueError(f"lenses_per_process must be a non-negative integer, got "
                             f"{lenses_per_process!r}")
        self.options, self.out, self.overwrite = options, out, overwrite
        self.lenses_per_process, self.threads = lenses_per_process, threads
        self._pool = None
        if lenses_per_process == 0:
            setup_worker(threads)

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self.lenses_per_process, initializer=setup_worker,
                initargs=(self.threads,))
        return self._pool

    def fit(self, entry: LensEntry) -> dict:
        """Fit (or skip) one lens; returns its :func:`summary_row`."""
        from concurrent.futures.process import BrokenProcessPool

        folder = os.path.join(self.out, entry.name)
        if self.lenses_per_process == 0 or (not self.overwrite
                                            and lens_is_finished(folder)):
            row = fit_catalog_lens(entry, self.options, self.out, overwrite=self.overwrite)
        else:
            t0 = time.perf_counter()
            try:
                row = self._executor().submit(fit_catalog_lens, entry, self.options,
                                              self.out, overwrite=self.overwrite).result()
            except BrokenProcessPool:
                self.close()
                row = summary_row(entry.name, entry.image, folder, "failed",
                                  error="the process fitting this lens died (out of memory, "
                                        "or a crash)", time_s=time.perf_counter() - t0)
        print(progress_line(row), flush=True)
        return row

    def close(self):
        """End the child process (a later :meth:`fit` starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_summary_table(rows, out: str) -> list:
    """Write ``rows`` (:func:`summary_row` dicts, in any order) as ``out/summary.ecsv``
    and, when pyarrow is installed, ``out/summary.parquet``, sorted by name, each file
    atomically. Columns missing from a row are NaN (numbers) or empty (text). Returns the
    written paths."""
    import importlib.util

    from astropy.table import Table

    from . import __version__
    from .io._atomic import atomic_output

    rows = sorted(rows, key=lambda r: r["name"])
    columns = ["name", "status", "error", "time_s", "image", "method", "problems"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    data = {}
    for c in columns:
        values = [row.get(c) for row in rows]
        if any(isinstance(v, str) for v in values):
            data[c] = np.array(["" if v is None else str(v) for v in values], dtype=str)
        else:
            data[c] = np.array([np.nan if v is None else float(v) for v in values],
                               dtype=np.float64)
    table = Table(data)
    table.meta["description"] = (
        "tfstronglens fit-many: one row per lens. status: fitted (in this run), skipped "
        "(finished in an earlier run), failed (error says why). time_s: seconds of the fit. "
        "<parameter>.mean/.std: posterior mean and standard deviation (Laplace, VI or HMC "
        "draws, as summary.json); <parameter>.map: the MAP value. Each lens's folder "
        "<out>/<name>/ holds its summary.json, samples and PNGs.")
    table.meta["tfstronglens"] = __version__
    paths = []
    path = os.path.join(out, SUMMARY_TABLE + ".ecsv")
    with atomic_output(path, overwrite=True) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    paths.append(path)
    if importlib.util.find_spec("pyarrow") is not None:
        path = os.path.join(out, SUMMARY_TABLE + ".parquet")
        with atomic_output(path, overwrite=True) as tmp:
            table.write(tmp, format="parquet", overwrite=True)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ Beam


@contextlib.contextmanager
def _quiet_logging():
    """Silence the log records below ERROR that importing Beam and its runners emits
    (e.g. about optional cloud clients that are not installed)."""
    import logging

    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _beam():
    """The ``apache_beam`` module, or ``None`` when it is not installed."""
    try:
        with _quiet_logging():
            import apache_beam
    except ImportError:
        return None
    return apache_beam


def _check_runner(runner: str):
    """Refuse a runner name Beam does not know, or one whose extra is not installed."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import create_runner

    known = list(StandardOptions.KNOWN_RUNNER_NAMES)
    lower = {k.lower() for k in known} | {k.lower()[:-len("runner")] for k in known}
    if "." not in runner and runner.lower() not in lower:
        raise _UserError(f"--runner {runner!r}: not a Beam runner; known: {known} (or the "
                         "dotted name of a PipelineRunner class)")
    try:
        with _quiet_logging():
            create_runner(runner)
    except (ImportError, ValueError, AttributeError) as exc:
        raise _UserError(f"--runner {runner!r}: {exc}") from None


def _pipeline_options(runner: str, num_workers: int, beam_options: str | None):
    """Beam's pipeline options: the ``DirectRunner`` runs ``num_workers`` worker
    processes (``multi_processing``; in this process for 1); other runners get
    ``num_workers`` as their initial worker count. ``beam_options`` (a string of Beam
    flags) is added as is."""
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        flags = shlex.split(beam_options or "")
    except ValueError as exc:
        raise _UserError(f"--beam-options {beam_options!r}: {exc}") from None
    kwargs = dict(runner=runner, default_sdk_harness_log_level="WARNING")
    if is_direct_runner(runner):
        kwargs.update(direct_num_workers=num_workers,
                      direct_running_mode="multi_processing" if num_workers > 1
                      else "in_memory")
    else:
        kwargs.update(num_workers=num_workers)
    return PipelineOptions(flags, **kwargs)


def setup_worker(threads: int | None = None):
    """Prepare a process that fits lenses: keep XLA's freed buffers in the heap
    (:func:`tfstronglens.runtime.tune_cpu_allocator`) and, with ``threads``, give
    TensorFlow that many intra- and inter-op threads (local worker processes share the
    cores instead of each starting one thread per core). Called once per worker."""
    from .runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if threads:
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # TF already initialised in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_fit_many(entries, options: dict, out: str, *, overwrite: bool = False,
                 runner: str = "DirectRunner", num_workers: int = 1,
                 beam_options: str | None = None, use_beam: bool = True,
                 lenses_per_process: int = 4) -> list:
    """Fit ``entries`` (:class:`LensEntry`) into the existing folder ``out`` with the fit
    options ``options`` (``args`` names of ``fit``), write the summary table and return
    its rows (read back from ``out/summary.ecsv``).

    The entries are written to ``out/`` :data:`LENS_LIST`. With ``use_beam`` they are
    the elements of a Beam pipeline on ``runner`` that reads that file
    (:func:`tfstronglens.cli_fit_many_beam.fit_many_pipeline`; the ``DirectRunner`` with
    ``num_workers`` > 1 runs that many worker processes, each fitting with ``cores //
    num_workers`` TensorFlow threads); without, a plain loop in this process does the
    same work (:class:`LensFitter`, then :func:`write_summary_table`). Each worker fits
    its lenses in a child process replaced every ``lenses_per_process`` lenses
    (:class:`LensFitter`; 0: in the worker process).
    """
    from .io._atomic import atomic_output

    lens_list = os.path.join(out, LENS_LIST)
    with atomic_output(lens_list, overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            fh.writelines(entry.to_json() + "\n" for entry in entries)
    if use_beam:
        from .cli_fit_many_beam import fit_many_pipeline

        threads = None
        if is_direct_runner(runner) and num_workers > 1:
            threads = max(1, (os.cpu_count() or 1) // num_workers)
        pipeline = fit_many_pipeline(
            lens_list, options, out, overwrite=overwrite,
            pipeline_options=_pipeline_options(runner, num_workers, beam_options),
            threads=threads, lenses_per_process=lenses_per_process)
        pipeline.run().wait_until_finish()
    else:
        with LensFitter(options, out, overwrite=overwrite,
                        lenses_per_process=lenses_per_process) as fitter:
            rows = [fitter.fit(entry) for entry in entries]
        write_summary_table(rows, out)
    from astropy.table import Table

    table = Table.read(os.path.join(out, SUMMARY_TABLE + ".ecsv"), format="ascii.ecsv")
    return [dict(zip(table.colnames, row)) for row in table.iterrows()]


# ------------------------------------------------------------------ the command


def add_parsers(sub):
    """Add ``fit-many`` to the CLI's subparsers."""
    from .cli_fit import add_fit_options

    p = sub.add_parser(
        "fit-many",
        help="fit a catalogue of lens images as an Apache Beam pipeline",
        description="Fit every lens of CATALOG with the options of `tfstronglens fit` as an "
                    "Apache Beam pipeline (local worker processes, or a cluster with "
                    "--runner): each lens writes DIR/<name>/ exactly as `fit` does "
                    "(summary.json, samples, PNGs), and DIR/summary.ecsv (and "
                    "DIR/summary.parquet with pyarrow) collects every lens's status, "
                    "error, fit time and per-parameter posterior mean, std and MAP value. "
                    "A rerun skips the lenses already fitted; a failing lens is recorded "
                    "with its error and does not stop the others (exit code 1 when any "
                    "failed). CATALOG is a folder of .fits files (e.g. the output of "
                    "`tfstronglens simulate`) or an .ecsv/.csv table with a path column "
                    "(path, image, filename or file; relative to the table's folder; "
                    "simulate's truths.ecsv is one), an optional name column and optional "
                    "per-lens columns hdu, psf, psf_fwhm, noise_rms, noise_map, exposure, "
                    "pixel_scale, z_lens, z_source that replace the command-line options. "
                    "Noise, PSF and pixel scale come from each file as `fit` reads them; "
                    "without a column or --z-lens/--z-source (or --model), the redshifts "
                    "come from the header's ZLENS/ZSOURCE (simulate writes them), else "
                    "0.5 and 2.0. "
                    f"Needs Apache Beam ({_INSTALL}); without it, the default runner with "
                    "one worker runs a plain loop in this process.")
    p.add_argument("catalog", metavar="CATALOG.ecsv|FOLDER",
                   help="table of lenses (.ecsv, .csv) or folder of .fits files")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: DIR/<name>/ per lens, DIR/summary.ecsv, "
                        f"DIR/{RUN_RECORD} (the fit options of the run)")
    p.add_argument("--overwrite", action="store_true",
                   help="refit every lens of CATALOG, also those already fitted (with "
                        "other options, or in a folder that is not a fit-many output "
                        "folder): the fit outputs in their folders are deleted when the run "
                        "starts, and each folder is replaced when its new fit is complete; "
                        "other files in DIR are kept")
    p.add_argument("--runner", default="DirectRunner", metavar="RUNNER",
                   help="Beam runner: DirectRunner (this machine), or a cluster runner "
                        "such as DataflowRunner, FlinkRunner, SparkRunner, PortableRunner "
                        "(with --beam-options) (default: %(default)s)")
    p.add_argument("--num-workers", type=_positive_int(4096), default=1, metavar="N",
                   help="worker processes of the DirectRunner (1: in this process; N > 1: N "
                        "processes sharing the CPU cores), or the initial worker count of "
                        "another runner (default: %(default)s)")
    p.add_argument("--lenses-per-process", type=_seed, default=4, metavar="K",
                   help="each worker fits its lenses in a child process that is replaced "
                        "after K lenses: TensorFlow keeps what it compiled for each fit "
                        "(~0.3-0.5 GB per 64x64 lens with XLA) until its process ends; 0 "
                        "fits in the worker process itself (no ~10 s TensorFlow import per "
                        "K lenses, memory grows with every lens) (default: %(default)s)")
    p.add_argument("--beam-options", default=None, metavar="'FLAGS'",
                   help="more Beam pipeline flags, as one string, e.g. "
                        "--beam-options='--project=P --region=R --temp_location=gs://B/tmp "
                        "--setup_file=./setup.py' (the cluster's workers need tfstronglens "
                        "and a file system shared with DIR)")
    add_fit_options(p)
    p.set_defaults(func=_fit_many)


def _fit_options(args) -> dict:
    """The fit options of ``args`` (``args`` names), file paths made absolute so that
    workers in other folders find them."""
    options = {k: v for k, v in vars(args).items() if k not in _NOT_FIT_OPTIONS}
    for key in ("model", "psf", "noise_map"):
        if options.get(key) is not None:
            options[key] = os.path.abspath(options[key])
    init_model = options.get("init_model")
    if init_model is not None and os.path.exists(init_model):
        options["init_model"] = os.path.abspath(init_model)
    return options


def _record(options: dict) -> dict:
    from . import __version__

    return {"fit_options": options, "tfstronglens": __version__,
            "what": "the fit options of `tfstronglens fit-many` runs into this folder; a "
                    "rerun with other options is refused unless --overwrite"}


def _check_out(out: str, options: dict, overwrite: bool):
    """Refuse an ``--out`` that is a file, a non-empty folder that is not a fit-many output
    folder, or one fitted with other options, unless ``--overwrite``."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise _UserError(f"--out {out!r} exists and is not a directory")
    if overwrite or not os.path.isdir(out) or not os.listdir(out):
        return
    record = os.path.join(out, RUN_RECORD)
    try:
        with open(record) as fh:
            earlier = json.load(fh)["fit_options"]
    except FileNotFoundError:
        raise _UserError(f"output directory {out!r} is not empty and is not a fit-many "
                         f"output folder (no {RUN_RECORD}); pass --overwrite to fit into it "
                         "anyway") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _UserError(f"{record!r} is not a fit-many run record ({exc}); pass "
                         "--overwrite to start afresh") from None
    new = json.loads(json.dumps(options))  # (as it would be recorded)
    changed = sorted(k for k in set(earlier) | set(new) if earlier.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {earlier.get(k)!r} -> {new.get(k)!r}"
                          for k in changed)
        raise _UserError(f"{out!r} holds fits made with other options ({shown}); rerun with "
                         "the same options to fit the remaining lenses, pass --overwrite to "
                         "refit every lens, or choose another --out")


def _start_out(out: str, options: dict):
    """Create ``--out``, record the options, and delete the temporary folders and files
    that a killed run left there (``.tmp-*``)."""
    from .io._atomic import atomic_output

    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith(".tmp-"):
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    with atomic_output(os.path.join(out, RUN_RECORD), overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            json.dump(_record(options), fh, indent=2)
            fh.write("\n")


def _fit_many(args) -> int:
    from .cli_fit import check_fit_options

    beam = _beam()
    use_beam = beam is not None
    if beam is None:
        if args.num_workers > 1 or not is_direct_runner(args.runner):
            raise _UserError(f"--runner {args.runner} --num-workers {args.num_workers} needs "
                             f"Apache Beam, which is not installed: {_INSTALL}")
        print(f"tfstronglens fit-many: Apache Beam is not installed ({_INSTALL}): fitting "
              "the lenses one after another in this process", file=sys.stderr)
    else:
        _check_runner(args.runner)
    entries = read_lens_catalog(args.catalog)
    if args.model is not None:
        given = sorted({k for e in entries for k in e.options if k in ("z_lens", "z_source")})
        if given:
            raise _UserError(f"--model {args.model} gives the redshifts, but CATALOG "
                             f"{args.catalog!r} has {given} columns: drop one or the other")
    options = _fit_options(args)
    check_fit_options(copy.copy(args))  # refuse bad options once, not once per lens
    _check_out(args.out, options, args.overwrite)
    _start_out(args.out, options)
    if args.overwrite:  # (so that a killed run leaves no fit of other options "finished")
        for entry in entries:
            _clear_fit_outputs(os.path.join(args.out, entry.name))
    where = (f"{args.runner}, {args.num_workers} worker"
             f"{'s' if args.num_workers > 1 else ''}" if use_beam else "a plain loop")
    print(f"tfstronglens fit-many: {len(entries)} lenses from {args.catalog} into "
          f"{args.out} ({where})", file=sys.stderr)
    t0 = time.perf_counter()
    rows = run_fit_many(entries, options, args.out, overwrite=args.overwrite,
                        runner=args.runner, num_workers=args.num_workers,
                        beam_options=args.beam_options, use_beam=use_beam,
                        lenses_per_process=args.lenses_per_process)
    counts = {s: sum(r["status"] == s for r in rows) for s in _STATUSES}
    tables = [SUMMARY_TABLE + ext for ext in (".ecsv", ".parquet")
              if os.path.isfile(os.path.join(args.out, SUMMARY_TABLE + ext))]
    print(f"fit-many: {len(rows)} lenses: {counts['fitted']} fitted, {counts['skipped']} "
          f"skipped (finished earlier), {counts['failed']} failed, in "
          f"{time.perf_counter() - t0:.0f} s; wrote {', '.join(tables)} to {args.out}")
    if counts["failed"]:
        failed = [r["name"] for r in rows if r["status"] == "failed"]
        print(f"tfstronglens fit-many: {counts['failed']} lenses failed ({', '.join(failed[:5])}"
              f"{', ...' if len(failed) > 5 else ''}): their errors are in the table's error "
              "column; a rerun tries them again", file=sys.stderr)
        return 1
    return 0
