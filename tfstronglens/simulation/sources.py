r"""Source galaxies for simulated lenses: parametric Sersic, real or synthetic galaxy stamps,
and draws from the VAE prior.

A :class:`SourceSampler` draws, for a batch of lenses, the parameters of the source light
profile that the :class:`~tfstronglens.Simulator` renders (at unit amplitude: the dataset
generator scales every source to its drawn S/N afterwards). One sampler per kind, found
by name in :data:`SOURCE_SAMPLERS` (a class registers itself by defining ``kind``); the
:class:`~tfstronglens.simulation.LensSimulationConfig` field ``source`` picks one:

* ``"sersic"`` (:class:`SersicSampler`): an elliptical Sersic profile with the config's
  ``source_*`` priors;
* ``"galaxies"`` (:class:`GalaxyStampSampler`): galaxy images from a galaxy dataset,
  ``synthetic_galaxies`` (offline; the noise-free versions of that TFDS dataset's stamps)
  or ``cosmos_galaxies`` (GalSim's COSMOS catalog from a TFDS ``manual_dir``);
* ``"vae"`` (:class:`VAEPriorSampler`): images decoded from ``z ~ N(0, I)`` by a
  (pretrained) VAE decoder.

#### Placing a galaxy image (``"galaxies"``, ``"vae"``)

An image ``I`` of ``S x S`` pixels of ``s`` arcsec becomes a
:class:`~tfstronglens.profiles.PixelatedSource` (bilinear interpolation) centred at the
lens centre plus an offset drawn from the ``source_offset`` prior in each coordinate,
rotated by ``phi_G ~ U(0, 2 pi)`` and mirrored (``I[:, ::-1]``) with probability 1/2.
Rotations and mirror images of a galaxy are galaxies too, so every stamp gives
infinitely many distinct sources. Images are normalised to peak 1 before the S/N scaling.

The source image itself (mirrored, times the amplitude the S/N scaling gives, in
e-/s/arcsec^2) is part of the truths: :meth:`SourceSampler.truth_image`.

#### Stamps of ``"galaxies"``

:func:`load_galaxy_stamps` reads them once, at construction, into memory (a
``tf.Variable`` of ``[M, S, S]``, ``M = galaxy_count``); a batch gathers ``B`` random
stamps from it. ``synthetic_galaxies[/config]`` stamps are re-drawn with that dataset's
generator and split seed (the same galaxies as the TFDS split, without their pixel noise,
so no noise is lensed into the arcs); ``cosmos_galaxies[/config]`` stamps are the TFDS
examples as stored (real HST images: their pixel noise, at S/N 15-50 of the stamp, is
lensed along).
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from ..profiles.base import get_profile
from ..profiles.pixelated_source import PixelatedSource

tfd = tfp.distributions

__all__ = ["SourceSampler", "SersicSampler", "GalaxyStampSampler", "VAEPriorSampler",
           "SOURCE_SAMPLERS", "make_source_sampler", "load_galaxy_stamps"]

#: ``kind -> SourceSampler subclass``; filled by the subclasses' ``kind`` attribute.
SOURCE_SAMPLERS: dict = {}

#: Stateless seeds a sampler receives per batch.
NUM_SEEDS = 6


def _uniform(lo, hi, shape, seed):
    if lo == hi:
        return tf.fill(shape, tf.constant(lo, tf.float32))
    return tfd.Uniform(tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)).sample(
        shape, seed=seed)


def ellipticity(q, phi):
    """``(e1, e2)`` of axis ratio ``q`` and position angle ``phi`` (lenstronomy)."""
    e = (1.0 - q) / (1.0 + q)
    return e * tf.cos(2.0 * phi), e * tf.sin(2.0 * phi)


class SourceSampler:
    """Draws the source of a batch of simulated lenses (see the module docs).

    Subclasses set ``kind`` (their name in :data:`SOURCE_SAMPLERS`) and implement
    :attr:`profile` and :meth:`sample`.
    """

    kind: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind is not None:
            SOURCE_SAMPLERS[cls.kind] = cls

    def __init__(self, config):
        self.config = config

    #: the :class:`~tfstronglens.profiles.LightProfile` the simulator renders
    profile = None

    @property
    def pixel_scale(self) -> float | None:
        """Arcsec per pixel of the source image (``None`` for parametric sources)."""
        return None

    def sample(self, seeds, batch_size: int, center_x, center_y) -> dict:
        """Profile parameters ``{name: [B] or [B, S, S]}`` at unit amplitude, for the lens
        centres ``center_x, center_y`` ``[B]``, from :data:`NUM_SEEDS` stateless seeds."""
        raise NotImplementedError

    def truth_image(self, params):
        """The source image ``[B, S, S]`` (e-/s/arcsec^2) of drawn parameters (with the
        S/N amplitude), or ``None`` for parametric sources."""
        return None

    def _placement(self, seeds, batch_size, center_x, center_y):
        lo, hi = self.config.priors["source_offset"]
        shape = [batch_size]
        phi = _uniform(0.0, 2.0 * math.pi, shape, seeds[0])
        flip = tfd.Bernoulli(probs=0.5, dtype=tf.bool).sample(shape, seed=seeds[1])
        return {"center_x": center_x + _uniform(lo, hi, shape, seeds[2]),
                "center_y": center_y + _uniform(lo, hi, shape, seeds[3]),
                "phi_G": phi}, flip


class SersicSampler(SourceSampler):
    """An elliptical Sersic source: ``R_sersic``, ``n_sersic``, ``q`` from the config's
    ``source_*`` priors, position angle ``U(0, pi)``, centre offset ``source_offset``."""

    kind = "sersic"

    def __init__(self, config):
        super().__init__(config)
        self.profile = get_profile("SERSIC_ELLIPSE")

    def sample(self, seeds, batch_size, center_x, center_y):
        pri = self.config.priors
        B = [batch_size]
        e1, e2 = ellipticity(_uniform(*pri["source_q"], B, seeds[0]),
                             _uniform(0.0, math.pi, B, seeds[1]))
        return {"amp": tf.ones(B), "R_sersic": _uniform(*pri["source_R_sersic"], B, seeds[2]),
                "n_sersic": _uniform(*pri["source_n_sersic"], B, seeds[3]), "e1": e1, "e2": e2,
                "center_x": center_x + _uniform(*pri["source_offset"], B, seeds[4]),
                "center_y": center_y + _uniform(*pri["source_offset"], B, seeds[5])}


class _ImageSampler(SourceSampler):
    """A pixelated source image placed as in the module docs."""

    def _make_profile(self, num_pix, pixel_scale):
        self.profile = PixelatedSource(int(num_pix), float(pixel_scale))

    @property
    def pixel_scale(self):
        return self.profile.pixel_scale

    def _params(self, images, seeds, batch_size, center_x, center_y):
        place, flip = self._placement(seeds, batch_size, center_x, center_y)
        images = images / tf.reduce_max(images, axis=[-2, -1], keepdims=True)
        images = tf.where(flip[:, None, None], tf.reverse(images, axis=[-1]), images)
        return {"image": images, "amp": tf.ones([batch_size]), **place}

    def truth_image(self, params):
        return params["image"] * params["amp"][:, None, None]


class GalaxyStampSampler(_ImageSampler):
    """Galaxy stamps from ``config.galaxy_dataset`` (see the module docs and
    :func:`load_galaxy_stamps`), ``config.galaxy_count`` of them held in memory."""

    kind = "galaxies"

    def __init__(self, config, stamps=None, pixel_scale=None):
        super().__init__(config)
        if stamps is None:
            stamps, pixel_scale = load_galaxy_stamps(
                config.galaxy_dataset, split=config.galaxy_split, count=config.galaxy_count,
                data_dir=config.galaxy_data_dir, manual_dir=config.galaxy_manual_dir)
        stamps = np.asarray(stamps, np.float32)
        if config.source_pixel_scale is not None:
            pixel_scale = config.source_pixel_scale
        self._make_profile(stamps.shape[-1], pixel_scale)
        with tf.init_scope():
            self.stamps = tf.Variable(stamps, trainable=False, name="galaxy_stamps")

    def sample(self, seeds, batch_size, center_x, center_y):
        m = int(self.stamps.shape[0])
        index = tf.random.stateless_uniform([batch_size], seeds[4], 0, m, dtype=tf.int32)
        return self._params(tf.gather(self.stamps, index), seeds, batch_size, center_x,
                            center_y)


class VAEPriorSampler(_ImageSampler):
    """Images ``D(z)``, ``z ~ N(0, I)``, from the VAE decoder ``config.vae_model`` (a
    pretrained model name or a ``.keras`` path), at ``source_pixel_scale`` (default 0.03",
    the pixel scale of the stamps the shipped VAE was trained on)."""

    kind = "vae"

    def __init__(self, config):
        super().__init__(config)
        from ..models.source import load_decoder

        self.decoder = load_decoder(config.vae_model)
        self.latent_dim = int(self.decoder.input_shape[-1])
        n = int(self.decoder.output_shape[-1])
        scale = 0.03 if config.source_pixel_scale is None else config.source_pixel_scale
        self._make_profile(n, scale)

    def sample(self, seeds, batch_size, center_x, center_y):
        z = tf.random.stateless_normal([batch_size, self.latent_dim], seeds[4])
        images = tf.nn.relu(tf.cast(self.decoder(z, training=False), tf.float32))
        return self._params(images, seeds, batch_size, center_x, center_y)


def make_source_sampler(config) -> SourceSampler:
    """The sampler of ``config.source`` (a :class:`LensSimulationConfig`)."""
    try:
        cls = SOURCE_SAMPLERS[config.source]
    except KeyError:
        raise ValueError(f"source={config.source!r}: must be one of "
                         f"{sorted(SOURCE_SAMPLERS)}") from None
    return cls(config)


def load_galaxy_stamps(dataset: str = "synthetic_galaxies/64", split: str = "train",
                       count: int = 1000, data_dir=None, manual_dir=None):
    """``(stamps [M, S, S] float32, pixel_scale)``: the first ``count`` galaxies of a split.

    ``synthetic_galaxies[/config]`` (default config ``64``): drawn by the dataset's
    generator with the split's seed, noise-free (no TFDS build needed).
    ``cosmos_galaxies[/config]``: the TFDS dataset built from the GalSim catalog in
    ``manual_dir`` (nothing is downloaded; see ``datasets/cosmos_galaxies/README.md``).
    Raises ``ValueError`` for an unknown dataset, config or split.
    """
    if not isinstance(dataset, str):
        raise ValueError(f"galaxy_dataset must be a string, got {dataset!r}")
    name, _, config = dataset.partition("/")
    if name == "synthetic_galaxies":
        from ..datasets.synthetic_galaxies import SPLIT_SEEDS, SyntheticGalaxies
        from .galaxies import SyntheticGalaxyGenerator

        configs = {c.name: c for c in SyntheticGalaxies.BUILDER_CONFIGS}
        config = config or SyntheticGalaxies.DEFAULT_CONFIG_NAME
        if config not in configs:
            raise ValueError(f"galaxy_dataset={dataset!r}: unknown synthetic_galaxies config "
                             f"{config!r}; known: {sorted(configs)}")
        if split not in SPLIT_SEEDS:
            raise ValueError(f"galaxy_split={split!r}: must be one of {sorted(SPLIT_SEEDS)}")
        gen = SyntheticGalaxyGenerator(configs[config].generator_config())
        out = gen.sample(int(count), SPLIT_SEEDS[split], noise_free=True, params=False)
        return out["noise_free"], gen.config.pixel_scale
    if name == "cosmos_galaxies":
        import tensorflow_datasets as tfds

        from .. import datasets as _datasets  # noqa: F401  (registers the builders)

        if manual_dir is None or not os.path.isdir(os.fspath(manual_dir)):
            raise ValueError(f"galaxy_dataset={dataset!r} needs galaxy_manual_dir, the folder "
                             f"of GalSim's COSMOS catalog (datasets/cosmos_galaxies/README.md); "
                             f"got {manual_dir!r}")
        builder = tfds.builder(dataset, data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
        if split not in builder.info.splits:
            raise ValueError(f"galaxy_split={split!r}: {dataset} has splits "
                             f"{sorted(builder.info.splits)}")
        images = [ex["image"] for ex in tfds.as_numpy(
            builder.as_dataset(split=split).take(int(count)))]
        if not images:
            raise ValueError(f"galaxy_dataset={dataset!r} split {split!r} is empty")
        stamps = np.stack([np.asarray(im, np.float32).reshape(im.shape[0], im.shape[1])
                           for im in images])
        return stamps, float(builder.builder_config.pixel_scale)
    raise ValueError(f"galaxy_dataset={dataset!r}: must be 'synthetic_galaxies[/config]' or "
                     "'cosmos_galaxies[/config]'")
