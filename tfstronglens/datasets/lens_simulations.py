"""TFDS builder ``lens_simulations``: simulated strong lenses with their true parameters.

Each example holds the noisy image ``[N, N, 1]`` (float32, e-/s per pixel), the
noise-free ``model`` ``[N, N]``, the ``truths`` (a FeaturesDict of float32 scalars named
like ``lens_0_theta_E``: the generator's ``lens.0.theta_E`` with ``.`` replaced by ``_``)
and the ``subhalos`` (``mass``, ``center_x``, ``center_y`` ``[n_max]`` float32 and
``mask`` ``[n_max]`` bool). Configs are named ``{instrument}-{subhalo model}-{num_pix}``
(plus the tiny ``...-tiny`` one for tests), and ``hst_acs_f814w-galaxies-64`` /
``hst_acs_f814w-vae-64`` with galaxy-image sources (their examples add ``source_image``,
the true source, pixel scale in the metadata's ``source_pixel_scale``). Every split has a fixed generator seed
(train 1, validation 2, test 3), so a build is reproducible; the split sizes are those of
the config. See ``datasets/lens_simulations/README.md`` for the recipe.

With Apache Beam (a ``DownloadConfig`` with ``beam_runner`` or ``beam_options``, e.g.
``tfds build ... --beam_pipeline_options=runner=DirectRunner``) the batches are drawn by
the Beam workers; the records are the same as those of the plain build, since every
example depends only on the config, the split and its index (:func:`batch_examples`).
``hst_acs_f814w-none-64-1m`` (10^6 images) is meant for that; see
``datasets/lens_simulations/BEAM.md``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ..observation import get_instrument
from ..simulation import LensDatasetGenerator, LensSimulationConfig
from ._builder import BeamSwitch

__all__ = ["LensSimulations", "LensSimulationsConfig", "SPLIT_SEEDS", "batch_examples",
           "build", "feature_name", "num_batches", "pipeline_options_from_flags"]

#: Generator seed of each split.
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


def feature_name(name: str) -> str:
    """``lens.0.theta_E`` -> ``lens_0_theta_E`` (TFDS feature names)."""
    return name.replace(".", "_")


@dataclasses.dataclass
class LensSimulationsConfig(tfds.core.BuilderConfig):
    """A builder config: the simulation config (minus the seed) and the split sizes."""

    simulation: dict = dataclasses.field(default_factory=dict)
    num_train: int = 10000
    num_validation: int = 1000
    num_test: int = 1000
    batch_size: int = 64

    def simulation_config(self, seed: int) -> LensSimulationConfig:
        return LensSimulationConfig.from_dict(dict(self.simulation, seed=seed))


def _theta_E_prior(instrument: str, num_pix: int):
    """The default Einstein-radius prior (0.8-1.6"), shrunk so that rings fit the field."""
    half = 0.5 * num_pix * get_instrument(instrument)["pixel_scale"]
    return [min(0.8, 0.5 * half), min(1.6, 0.8 * half)]


def _make_config(instrument, subhalos, num_pix, name=None, **kw) -> LensSimulationsConfig:
    sim = {"instrument": instrument, "num_pix": num_pix, "subhalo_model": subhalos,
           "lens_model": "epl+shear",
           "priors": {"theta_E": _theta_E_prior(instrument, num_pix)}}
    sim.update(kw.pop("simulation", {}))
    return LensSimulationsConfig(
        name=name or f"{instrument}-{subhalos}-{num_pix}",
        description=f"{instrument}, {num_pix}x{num_pix} pixels, EPL+shear, Sersic source and "
                    f"lens light, subhalos: {subhalos}",
        simulation=sim, **kw)


_CONFIGS = [_make_config(inst, sub, n)
            for inst in ("hst_acs_f814w", "euclid_vis", "lsst_r")
            for sub in ("none", "cdm", "wdm")
            for n in (64, 128)]
# Realistic sources: synthetic galaxy stamps (noise-free, offline) and VAE-prior draws,
# HST-like, no lens light (as for source reconstruction), no subhalos
_CONFIGS += [_make_config("hst_acs_f814w", "none", 64, name=f"hst_acs_f814w-{src}-64",
                          simulation={"source": src, "lens_light": False,
                                      "lens_model": "sie+shear"})
             for src in ("galaxies", "vae")]
# A tiny config for tests and smoke checks: 32x32 HST-like images, CDM subhalos
_CONFIGS.append(_make_config("hst_acs_f814w", "cdm", 32, name="hst_acs_f814w-cdm-32-tiny",
                             num_train=8, num_validation=4, num_test=4, batch_size=4,
                             simulation={"supersample": 1, "n_max": 8}))
# A 10^6-image build of the default config's simulation, meant for a Beam runner
# (datasets/lens_simulations/BEAM.md)
_CONFIGS.append(_make_config("hst_acs_f814w", "none", 64, name="hst_acs_f814w-none-64-1m",
                             num_train=980_000, num_validation=10_000, num_test=10_000))


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches of ``batch_size`` that hold ``num_examples`` examples (the last one partly)."""
    return -(-int(num_examples) // int(batch_size))


def batch_examples(out: dict, split: str, k: int, batch_size: int, num_examples: int):
    """Yield the ``(key, example)`` pairs of batch ``k`` of a split.

    ``out`` is :meth:`LensDatasetGenerator.generate` ``(k, batch_size)`` of the split's
    generator (seed :data:`SPLIT_SEEDS` ``[split]``). Example ``i = k * batch_size + j`` is
    row ``j`` of that batch, keyed ``f"{split}_{i:07d}"``; rows past ``num_examples`` (in
    the last batch) are dropped. Batch ``k`` is drawn with the stateless seed
    ``[split seed, k]``, so an example depends only on the config (its ``batch_size``
    included), the split and its index ``i``: not on which batches were drawn before, by
    which worker or in which order (the plain and the Beam builds write the same records).
    """
    for j in range(min(batch_size, num_examples - k * batch_size)):
        i = k * batch_size + j
        yield f"{split}_{i:07d}", {
            "image": out["image"][j, :, :, None].astype(np.float32),
            "model": out["model"][j].astype(np.float32),
            "truths": {feature_name(name): np.float32(v[j])
                       for name, v in out["truths"].items()},
            "subhalos": {name: v[j] for name, v in out["subhalos"].items()},
            **({"source_image": out["source_image"][j].astype(np.float32)}
               if "source_image" in out else {}),
        }


class LensSimulations(BeamSwitch, tfds.core.GeneratorBasedBuilder):
    """Simulated galaxy-galaxy strong lenses (see the module docs)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Fix: with supersample > 1 (every config but the tiny one) the sub-pixels "
                 "were averaged in the wrong layout, scrambling the images; they are now "
                 "binned as by Simulator. Priors, subhalos, S/N definition and noise model "
                 "are unchanged (the same seed draws the same parameters); the S/N-scaled "
                 "amplitudes, images and models change. Generation is ~6x faster.",
    }
    BUILDER_CONFIGS = _CONFIGS

    # TFDS finds a builder's source file through ``importlib_resources``, which is not
    # always installed (tensorflow_datasets 4.9 does not require it); give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        from etils import epath

        return epath.Path(__file__)

    def _generator(self, seed: int) -> LensDatasetGenerator:
        return LensDatasetGenerator(self.builder_config.simulation_config(seed))

    def _info(self) -> tfds.core.DatasetInfo:
        gen = self._generator(0)
        n, n_max = gen.config.num_pix, gen.config.n_max
        extra = {}
        if gen.source_pixel_scale is not None:
            size = gen.source_sampler.profile.num_pix
            extra["source_image"] = tfds.features.Tensor(shape=(size, size), dtype=np.float32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                **extra,
                "image": tfds.features.Tensor(shape=(n, n, 1), dtype=np.float32),
                "model": tfds.features.Tensor(shape=(n, n), dtype=np.float32),
                "truths": tfds.features.FeaturesDict({
                    feature_name(k): tfds.features.Scalar(dtype=np.float32)
                    for k in gen.truth_names}),
                "subhalos": tfds.features.FeaturesDict({
                    "mass": tfds.features.Tensor(shape=(n_max,), dtype=np.float32),
                    "center_x": tfds.features.Tensor(shape=(n_max,), dtype=np.float32),
                    "center_y": tfds.features.Tensor(shape=(n_max,), dtype=np.float32),
                    "mask": tfds.features.Tensor(shape=(n_max,), dtype=np.bool_),
                }),
            }),
            supervised_keys=None,
            homepage="https://github.com/tfstronglens/tfstronglens",
            metadata=tfds.core.MetadataDict(simulation=self.builder_config.simulation,
                                            split_seeds=SPLIT_SEEDS,
                                            source_pixel_scale=gen.source_pixel_scale),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

    def _generate_examples(self, split: str, num_examples: int):
        """The examples of ``split`` (see :func:`batch_examples`): a generator, or with an
        Apache Beam build (:attr:`use_beam`) a ``beam.PTransform`` that draws the batches
        on the workers (:class:`tfstronglens.datasets._beam.LensSimulationExamples`)."""
        cfg = self.builder_config
        if self.use_beam:
            from ._beam import LensSimulationExamples

            return LensSimulationExamples(cfg.simulation, SPLIT_SEEDS[split], split,
                                          cfg.batch_size, num_examples)
        return self._iter_examples(split, num_examples)

    def _iter_examples(self, split: str, num_examples: int):
        gen = self._generator(SPLIT_SEEDS[split])
        bs = self.builder_config.batch_size
        # the next batch is generated in a background thread while this one is serialised
        for k, out in enumerate(gen.iter_batches(bs, num_batches(num_examples, bs))):
            yield from batch_examples(out, split, k, bs, num_examples)


def pipeline_options_from_flags(options):
    """Apache Beam ``PipelineOptions`` from flags as ``tfds build --beam_pipeline_options``
    takes them: a comma-separated string ``"runner=DirectRunner,direct_num_workers=2"``
    (each item gets a leading ``--``) or a list of ``"--flag=value"`` strings."""
    if isinstance(options, str):
        flags = [f"--{o.strip()}" for o in options.split(",") if o.strip()]
    elif isinstance(options, (list, tuple)) and all(isinstance(o, str) for o in options):
        flags = list(options)
    else:
        raise ValueError("beam_pipeline_options must be a comma-separated string or a list "
                         f"of '--flag=value' strings, got {options!r}")
    if not flags:
        raise ValueError(f"beam_pipeline_options is empty: {options!r}")
    from tensorflow_datasets.core.utils.lazy_imports_utils import apache_beam as beam

    return beam.options.pipeline_options.PipelineOptions(flags=flags)


def build(config_name: str, data_dir=None, beam_pipeline_options=None) -> "LensSimulations":
    """Build (download_and_prepare) ``lens_simulations/<config_name>`` into ``data_dir``.

    ``beam_pipeline_options``: ``None`` (a plain single-process build) or Apache Beam
    pipeline flags (see :func:`pipeline_options_from_flags`), e.g.
    ``"runner=DirectRunner,direct_num_workers=2"``; the examples are then drawn by the Beam
    workers (the same records).
    """
    names = [c.name for c in _CONFIGS]
    if config_name not in names:
        raise ValueError(f"unknown config {config_name!r}; known: {names}")
    download_config = None
    if beam_pipeline_options is not None:
        download_config = tfds.download.DownloadConfig(
            beam_options=pipeline_options_from_flags(beam_pipeline_options))
    builder = LensSimulations(config=config_name, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    return builder
