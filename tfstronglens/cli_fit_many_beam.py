"""The Apache Beam pipeline of ``tfstronglens fit-many`` (:mod:`tfstronglens.cli_fit_many`).

Imported only when Beam runs the pipeline (Beam is an optional dependency:
``pip install "tfstronglens[beam]"``). The pipeline is

``ReadFromText(lens list) -> Map(LensEntry.from_json) -> Reshuffle -> ParDo(FitLensDoFn)
-> ToList -> Map(write table)``:

the lens list is a file in the output folder (:data:`~tfstronglens.cli_fit_many.LENS_LIST`,
one lens per line), so the job stays small for any number of lenses; the reshuffle spreads
the lenses over the workers (no fusion with the read), each worker fits its lenses one
at a time, in a child process with its own TensorFlow state that is replaced every few
lenses (:class:`~tfstronglens.cli_fit_many.LensFitter` around
:func:`~tfstronglens.cli_fit_many.fit_catalog_lens`, which catches a lens's failure and
returns its row), and the rows of all lenses are gathered into one summary table. Every
step is a module-level function or class, so that any runner can pickle it by reference.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from .beam_runner import is_direct_runner, local_runner
from .cli_fit_many import LensEntry, LensFitter, write_summary_table

__all__ = ["FitLensDoFn", "fit_many_pipeline"]


class FitLensDoFn(beam.DoFn):
    """Fit each :class:`~tfstronglens.cli_fit_many.LensEntry` into ``out`` with the fit
    options ``options``; yields its summary-table row. Each worker fits with a
    :class:`~tfstronglens.cli_fit_many.LensFitter` (a child process replaced every
    ``lenses_per_process`` lenses, or the worker itself for 0) with ``threads``
    TensorFlow threads (``None``: TensorFlow's default, one per core)."""

    def __init__(self, options: dict, out: str, overwrite: bool = False,
                 threads: int | None = None, lenses_per_process: int = 4):
        super().__init__()
        self.options, self.out, self.overwrite, self.threads = options, out, overwrite, threads
        self.lenses_per_process = lenses_per_process
        self.fitter = None

    def setup(self):
        self.fitter = LensFitter(self.options, self.out, overwrite=self.overwrite,
                                 lenses_per_process=self.lenses_per_process,
                                 threads=self.threads)

    def process(self, entry):
        yield self.fitter.fit(entry)

    def teardown(self):
        if self.fitter is not None:
            self.fitter.close()


class _WriteTable:
    """``rows -> write_summary_table(rows, out)`` (a picklable callable)."""

    def __init__(self, out: str):
        self.out = out

    def __call__(self, rows):
        return write_summary_table(rows, self.out)


def fit_many_pipeline(lens_list: str, options: dict, out: str, *, overwrite: bool = False,
                      pipeline_options=None, threads: int | None = None,
                      lenses_per_process: int = 4) -> beam.Pipeline:
    """The (not yet run) Beam pipeline that fits the lenses of the file ``lens_list`` (one
    :meth:`LensEntry.to_json` per line) into ``out`` and writes ``out/summary.ecsv`` (see
    the module docs); ``pipeline_options``: Beam's ``PipelineOptions`` (runner,
    workers); ``threads``, ``lenses_per_process``: see :class:`FitLensDoFn`."""
    runner = None  # Beam's DirectRunner, without its Prism download (beam_runner docs)
    if pipeline_options is None or is_direct_runner(
            pipeline_options.view_as(StandardOptions).runner):
        runner = local_runner()
    p = beam.Pipeline(runner=runner, options=pipeline_options)
    _ = (p
         | "lenses" >> beam.io.ReadFromText(lens_list)
         | "parse" >> beam.Map(LensEntry.from_json)
         | "spread" >> beam.Reshuffle()
         | "fit" >> beam.ParDo(FitLensDoFn(options, out, overwrite, threads,
                                         lenses_per_process))
         | "collect" >> beam.combiners.ToList()
         | "table" >> beam.Map(_WriteTable(out)))
    return p
