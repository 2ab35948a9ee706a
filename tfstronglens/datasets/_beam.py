"""Apache Beam transforms of the TFDS builders (imported only for a Beam build).

A builder's ``_generate_examples`` returns one of these ``beam.PTransform`` when the
build asks for Beam (:class:`tfstronglens.datasets._builder.BeamSwitch`); TFDS applies it
to its pipeline (``pipeline | split >> transform``) and shuffles, serialises and writes the
``(key, example)`` pairs it yields. The work units are made in the launching process and
redistributed (``beam.Reshuffle``) so that a distributed runner spreads them over its
workers; each worker builds its own generator or FITS reader once (``DoFn.setup``).
Every example depends only on its work unit (batch index, or catalog row) and the config,
never on the worker or the order, so the records equal those of the plain build.

The workers need ``tfstronglens`` installed (e.g. ``--setup_file`` or
``--requirements_file`` or a custom container on Dataflow; see
``datasets/lens_simulations/BEAM.md``).
"""

from __future__ import annotations

import apache_beam as beam

from .cosmos_galaxies import CosmosGalaxiesConfig, GalaxyStampReader, check_kept
from .lens_simulations import batch_examples, num_batches

__all__ = ["LensSimulationExamples", "CosmosGalaxyExamples"]

_NAMESPACE = "tfstronglens"


# ------------------------------------------------------------- lens_simulations
class _LensBatchFn(beam.DoFn):
    """Batch index ``k`` -> the ``(key, example)`` pairs of that batch."""

    def __init__(self, simulation: dict, seed: int, split: str, batch_size: int,
                 num_examples: int):
        super().__init__()
        self._simulation = dict(simulation)
        self._seed = int(seed)
        self._split = split
        self._batch_size = int(batch_size)
        self._num_examples = int(num_examples)
        self._generator = None
        self._counter = beam.metrics.Metrics.counter(_NAMESPACE, f"lens_simulations_{split}_examples")

    def setup(self):
        from ..simulation import LensDatasetGenerator, LensSimulationConfig

        self._generator = LensDatasetGenerator(
            LensSimulationConfig.from_dict(dict(self._simulation, seed=self._seed)))

    def process(self, k):
        out = self._generator.generate(int(k), self._batch_size)
        for key, example in batch_examples(out, self._split, int(k), self._batch_size,
                                           self._num_examples):
            self._counter.inc()
            yield key, example


class LensSimulationExamples(beam.PTransform):
    """The ``num_examples`` examples of a ``lens_simulations`` split, one work unit per
    batch: batch ``k`` is :meth:`LensDatasetGenerator.generate` ``(k, batch_size)`` of the
    generator of ``simulation`` with ``seed`` (:func:`batch_examples`).

    Args:
      simulation: the ``LensSimulationConfig`` fields of the builder config (no seed).
      seed: the split's generator seed.
      split: split name (keys are ``f"{split}_{i:07d}"``).
      batch_size, num_examples: as in the builder config.
    """

    def __init__(self, simulation: dict, seed: int, split: str, batch_size: int,
                 num_examples: int):
        super().__init__()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not (isinstance(num_examples, int) and num_examples >= 1):
            raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
        self._fn = _LensBatchFn(simulation, seed, split, batch_size, num_examples)
        self._num_batches = num_batches(num_examples, batch_size)

    def expand(self, pbegin):
        return (pbegin
                | "BatchIndices" >> beam.Create(range(self._num_batches))
                | "Distribute" >> beam.Reshuffle()
                | "Simulate" >> beam.ParDo(self._fn))


# -------------------------------------------------------------- cosmos_galaxies
class _GalaxyRowFn(beam.DoFn):
    """Catalog row -> ``(key, example)``, or nothing if the galaxy is skipped."""

    def __init__(self, directory: str, config: CosmosGalaxiesConfig, split: str):
        super().__init__()
        self._directory = directory
        self._config = config
        self._split = split
        self._reader = None
        self._kept = beam.metrics.Metrics.counter(_NAMESPACE, f"cosmos_galaxies_{split}_kept")

    def setup(self):
        self._reader = GalaxyStampReader(self._directory, self._config)

    def process(self, row):
        key, example = self._reader.example(row)
        if key is None:
            beam.metrics.Metrics.counter(
                _NAMESPACE, f"cosmos_galaxies_{self._split}_skipped: {example}"[:120]).inc()
            return
        self._kept.inc()
        yield key, example

    def teardown(self):
        if self._reader is not None:
            self._reader.close()


def _check_kept(count, total, split, catalog_name, config):
    check_kept(count, total, split, catalog_name, config)
    return count


class CosmosGalaxyExamples(beam.PTransform):
    """The examples of the catalog rows (:func:`catalog_row` dicts) of a ``cosmos_galaxies``
    split, one work unit per galaxy, read from the FITS files in ``directory`` (readable by
    every worker). Fails the pipeline (``ValueError`` of :func:`check_kept`) if no galaxy
    of the split passes; the skipped ones are counted in Beam metrics."""

    def __init__(self, directory: str, config: CosmosGalaxiesConfig, rows: list, split: str,
                 catalog_name: str = ""):
        super().__init__()
        self._rows = list(rows)
        self._fn = _GalaxyRowFn(str(directory), config, split)
        self._check = dict(total=len(self._rows), split=split, catalog_name=catalog_name,
                           config=config)

    def expand(self, pbegin):
        examples = (pbegin
                    | "CatalogRows" >> beam.Create(self._rows)
                    | "Distribute" >> beam.Reshuffle()
                    | "Process" >> beam.ParDo(self._fn))
        _ = (examples
             | "CountKept" >> beam.combiners.Count.Globally()
             | "CheckKept" >> beam.Map(_check_kept, **self._check))
        return examples
