"""Shared pieces of the TFDS builders: choosing between the plain and the Apache Beam build.

TFDS builds a split with Apache Beam when ``_generate_examples`` returns a
``beam.PTransform`` instead of a generator. The builders here do so only when the build
was asked to use Beam, i.e. when the ``tfds.download.DownloadConfig`` carries a
``beam_runner`` or ``beam_options`` (``tfds build ... --beam_pipeline_options=...`` sets
``beam_options``); otherwise they keep the plain single-process generator, which needs no
``apache_beam``. A Beam build whose options ask for the ``DirectRunner`` (or no runner)
runs on :func:`tfstronglens.beam_runner.local_runner`, which never downloads Beam's Prism
runner.
"""

from __future__ import annotations

import dataclasses
import importlib

__all__ = ["BeamSwitch", "beam_requested"]


def beam_requested(download_config) -> bool:
    """Whether a ``tfds.download.DownloadConfig`` asks for an Apache Beam build (it has a
    ``beam_runner`` or ``beam_options``). ``None`` (no config) asks for none."""
    if download_config is None:
        return False
    return (getattr(download_config, "beam_runner", None) is not None
            or getattr(download_config, "beam_options", None) is not None)


def _offline_direct_runner(download_config):
    """``download_config`` with ``beam_runner=local_runner()`` when it asks for the
    ``DirectRunner`` (its options' runner, or none), else unchanged."""
    from ..beam_runner import is_direct_runner, local_runner

    if download_config.beam_runner is not None:
        return download_config
    options = download_config.beam_options
    if options is not None:
        from apache_beam.options.pipeline_options import StandardOptions

        if not is_direct_runner(options.view_as(StandardOptions).runner):
            return download_config
    return dataclasses.replace(download_config, beam_runner=local_runner())


class BeamSwitch:
    """Mixin for a ``tfds.core.GeneratorBasedBuilder`` (put it first among the bases):
    :attr:`use_beam` is true while ``download_and_prepare`` runs with a download config
    that :func:`beam_requested` accepts, so ``_generate_examples`` can return a Beam
    ``PTransform`` then and a plain generator otherwise."""

    _use_beam = False

    @property
    def use_beam(self) -> bool:
        """Whether the split generators are to be Beam transforms (see the class docs)."""
        return self._use_beam

    def _download_and_prepare(self, dl_manager, download_config):
        self._use_beam = beam_requested(download_config)
        if self._use_beam:
            try:
                importlib.import_module("apache_beam")
            except ImportError:
                raise ImportError(
                    "download_config asks for an Apache Beam build (beam_runner/beam_options "
                    "set) but apache_beam is not installed: pip install 'tfstronglens[beam]'"
                ) from None
            download_config = _offline_direct_runner(download_config)
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        finally:
            self._use_beam = False
