"""Apache Beam's local runner without the network.

Beam's ``DirectRunner`` (``SwitchingDirectRunner`` since Beam 2.6x) first tries the Prism
runner, a Go binary it downloads from GitHub on first use, and falls back to the Python
runners when that fails. Offline the attempt costs a logged error; online it downloads and
runs a binary nobody asked for. The package's pipelines (``fit-many``, the Beam builds of
the TFDS datasets) are batch pipelines that Beam's Python ``FnApiRunner`` runs in full,
honouring ``direct_num_workers`` and ``direct_running_mode`` (``in_memory``,
``multi_threading``, ``multi_processing``) as the ``DirectRunner`` does, so a
``DirectRunner`` request is given that runner (:func:`local_runner`). Any other runner
name (Dataflow, Flink, Spark, ``PrismRunner`` when wanted) is left to Beam.

Imports ``apache_beam`` only when a runner is made.
"""

from __future__ import annotations

__all__ = ["DIRECT_RUNNER_NAMES", "is_direct_runner", "local_runner"]

#: Spellings of the ``DirectRunner`` (lower case) that :func:`local_runner` replaces.
DIRECT_RUNNER_NAMES = ("directrunner", "direct", "switchingdirectrunner",
                       "apache_beam.runners.direct.direct_runner.directrunner",
                       "apache_beam.runners.direct.direct_runner.switchingdirectrunner")


def is_direct_runner(runner) -> bool:
    """Whether ``runner`` (a name, or ``None``: Beam's default) means the ``DirectRunner``."""
    return runner is None or (isinstance(runner, str)
                              and runner.strip().lower() in DIRECT_RUNNER_NAMES)


def local_runner():
    """Beam's Python ``FnApiRunner``: the ``DirectRunner``'s batch engine, never Prism (see
    the module docs). Pass it as ``beam.Pipeline(runner=...)`` or TFDS's
    ``DownloadConfig(beam_runner=...)``; the pipeline options still set the workers."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()
