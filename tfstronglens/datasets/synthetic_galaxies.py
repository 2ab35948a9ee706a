"""TFDS builder ``synthetic_galaxies``: synthetic HST-like galaxy stamps (no download).

Drawn by :class:`tfstronglens.simulation.galaxies.SyntheticGalaxyGenerator` (bulge +
exponential disk, spiral arms, star-forming clumps, irregulars; published size, B/T and
ellipticity distributions; Gaussian or Moffat PSF; white noise at a target S/N). Every
example has the features of :mod:`tfstronglens.datasets.galaxies` (``image``,
``noise_std``, ``psf``, ``snr``, ``flux_scale``, ``id``, ``mag``); the noise-free galaxy
peaks at exactly 1. Splits ``train``, ``validation``, ``test`` use the fixed generator
seeds 11, 12, 13, so builds are reproducible and the first ``m`` examples of a split do not
depend on its size.

Configs: ``64`` (default; 64x64 pixels of 0.03", Gaussian PSF of FWHM 0.1", 33x33 PSF,
S/N 15-50, 10000/1000/1000 examples), ``32`` (32x32 pixels of 0.06", the same field,
FWHM 0.12", 17x17 PSF), ``64-moffat`` (Moffat PSF, beta 3.5) and ``tiny`` (32x32 at 0.03",
16/8/8 examples, for tests). Any :class:`SyntheticGalaxiesConfig` may be passed as
``config=``. See ``datasets/synthetic_galaxies/README.md``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ..simulation.galaxies import SyntheticGalaxyConfig, SyntheticGalaxyGenerator
from .galaxies import galaxy_features

__all__ = ["SyntheticGalaxies", "SyntheticGalaxiesConfig", "SPLIT_SEEDS"]

#: Generator seed of each split.
SPLIT_SEEDS = {"train": 11, "validation": 12, "test": 13}


@dataclasses.dataclass
class SyntheticGalaxiesConfig(tfds.core.BuilderConfig):
    """A builder config: :class:`SyntheticGalaxyConfig` fields (a dict) and split sizes."""

    generator: dict = dataclasses.field(default_factory=dict)
    num_train: int = 10000
    num_validation: int = 1000
    num_test: int = 1000
    batch_size: int = 256

    def generator_config(self) -> SyntheticGalaxyConfig:
        return SyntheticGalaxyConfig.from_dict(dict(self.generator))


def _config(name, description, generator=None, **kw):
    return SyntheticGalaxiesConfig(name=name, description=description,
                                   generator=dict(generator or {}), **kw)


_CONFIGS = [
    _config("64", "64x64 pixels of 0.03\", Gaussian PSF FWHM 0.1\" (33x33), S/N 15-50"),
    _config("32", "32x32 pixels of 0.06\" (same field), Gaussian PSF FWHM 0.12\" (17x17), S/N 15-50",
            generator={"stamp_size": 32, "pixel_scale": 0.06, "psf_fwhm": 0.12, "psf_size": 17,
                       "core_size": 8}),
    _config("64-moffat", "as 64 with a Moffat PSF (FWHM 0.1\", beta 3.5)",
            generator={"psf": "moffat", "psf_beta": 3.5}),
    _config("tiny", "tests: 32x32 pixels of 0.03\", 15x15 PSF, 16/8/8 examples",
            generator={"stamp_size": 32, "psf_size": 15, "chunk_size": 16},
            num_train=16, num_validation=8, num_test=8, batch_size=16),
]


class SyntheticGalaxies(tfds.core.GeneratorBasedBuilder):
    """Synthetic galaxy stamps for galaxy source models (see the module docs)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _CONFIGS
    DEFAULT_CONFIG_NAME = "64"

    # TFDS finds a builder's source file through ``importlib_resources``, which is not
    # always installed (tensorflow_datasets 4.9 does not require it); give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        from etils import epath

        return epath.Path(__file__)

    def _generator(self) -> SyntheticGalaxyGenerator:
        return SyntheticGalaxyGenerator(self.builder_config.generator_config())

    def _info(self) -> tfds.core.DatasetInfo:
        gc = self.builder_config.generator_config()
        return self.dataset_info_from_configs(
            features=galaxy_features(gc.stamp_size, gc.psf_size),
            supervised_keys=None,
            homepage="https://github.com/tfstronglens/tfstronglens",
            metadata=tfds.core.MetadataDict(generator=gc.to_dict(), split_seeds=SPLIT_SEEDS),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

    def _generate_examples(self, split: str, num_examples: int):
        gen = self._generator()
        bs = max(1, int(self.builder_config.batch_size))
        for start in range(0, num_examples, bs):
            out = gen.sample(min(bs, num_examples - start), SPLIT_SEEDS[split], start=start,
                             noise_free=False, params=False)
            for j in range(out["image"].shape[0]):
                i = start + j
                yield f"{split}_{i:08d}", {
                    "image": out["image"][j],
                    "noise_std": np.float32(out["noise_std"][j]),
                    "psf": np.asarray(out["psf"][j], np.float32),
                    "snr": np.float32(out["snr"][j]),
                    "flux_scale": np.float32(out["flux_scale"][j]),
                    "id": np.int64(out["id"][j]),
                    "mag": np.float32(out["mag"][j]),
                }
