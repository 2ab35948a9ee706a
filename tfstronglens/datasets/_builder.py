"""Shared pieces of the TFDS builders: choosing between the plain and the Apache Beam build.

TFDS builds a split with Apache Beam when ``_generate_examples`` returns a
``beam.PTransform`` instead of a generator. The builders here do so only when the build
was asked to use Beam, i.e. when the ``tfds.download.DownloadConfig`` carries a
``beam_runner`` or ``beam_options`` (``tfds build ... --beam_pipeline_options=...`` sets
``beam_options``); otherwise they keep the plain single-process generator, which needs no
``apache_beam``.
"""

from __future__ import annotations

import importlib

__all__ = ["BeamSwitch", "beam_requested"]


def beam_requested(download_config) -> bool:
    """Whether a ``tfds.download.DownloadConfig`` asks for an Apache Beam build (it has a
    ``beam_runner`` or ``beam_options``). ``None`` (no config) asks for none."""
    if download_config is None:
        return False
    return (getattr(download_config, "beam_runner", None) is not None
            or getattr(download_config, "beam_options", None) is not None)


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
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        finally:
            self._use_beam = False
