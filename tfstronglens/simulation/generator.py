r"""Simulated strong-lens datasets: configuration, prior sampling and batched rendering.

A :class:`LensSimulationConfig` describes the instrument, the image size, the lens model
(``"sie+shear"`` or ``"epl+shear"``), an optional subhalo population (``"none"``,
``"cdm"``, ``"wdm"``), the redshifts and uniform prior ranges of every parameter. A
:class:`LensDatasetGenerator` draws parameters from these priors and renders noisy images
in batches, one XLA-compiled function call per batch.

#### Priors (all uniform, ranges configurable)

* main deflector: Einstein radius ``theta_E`` (arcsec), axis ratio ``q`` and position
  angle ``phi ~ U(0, pi)`` giving ``e1 = (1-q)/(1+q) cos 2phi``, ``e2 = ... sin 2phi``;
  centre ``center_x, center_y``; power-law slope ``gamma`` (EPL only);
* external shear: magnitude ``gamma_ext`` and angle ``phi_ext ~ U(0, pi)``:
  ``gamma1 = gamma_ext cos 2phi_ext``, ``gamma2 = gamma_ext sin 2phi_ext``;
* source (elliptical Sersic): ``R_sersic``, ``n_sersic``, ``q``, ``phi``; its centre is
  the lens centre plus an offset drawn from ``source_offset`` in each coordinate; its
  amplitude is set so that the matched-filter S/N of the lensed source
  (:meth:`~tfstronglens.observation.Observation.snr`, the lens light counting as noise)
  equals ``source_snr`` drawn from its range;
* lens light (elliptical Sersic at the lens centre, optional): ``R_sersic``,
  ``n_sersic``, ``q``, ``phi``; amplitude set by its own S/N ``lens_light_snr``;
* subhalos (``"cdm"``/``"wdm"``): a :class:`~tfstronglens.observation.SubhaloPopulation`
  of truncated NFW halos (masses ``[m_min, m_max]`` M_sun, slope ``beta``, normalised by
  the mean convergence in subhalos ``kappa_sub``, WDM half-mode mass ``m_hm``) in an
  annulus ``theta_E +- subhalo_annulus_width`` around the lens centre, at most ``n_max``.

#### Reproducibility

Batch ``k`` of a generator with seed ``s`` is drawn with the stateless seed ``[s, k]``
(split into independent seeds for every prior and the noise), so it does not depend on
which batches were drawn before. The draws are made by XLA-compiled code; TensorFlow's
stateless kernels give other numbers in eager mode, so the numbers are reproducible for
a given TensorFlow version and compiled execution, which is the only one used here.
(Before the ``lens_simulations`` 1.1.0 release, ``supersample > 1`` averaged the sub-pixels
in the wrong layout; a seed now draws the same parameters but other, correct images.)

#### Speed

One batch is one compiled call. The sub-pixel surface brightness is binned as by the
:class:`~tfstronglens.Simulator`; the S/N amplitudes come from a closed-form start and a
few Newton steps (:meth:`LensDatasetGenerator._scale_to_snr`, to float32 precision of the
amplitude); subhalo deflections are evaluated for the real subhalos only
(:meth:`LensDatasetGenerator._subhalo_deflection`); :meth:`LensDatasetGenerator.iter_batches`
and :meth:`LensDatasetGenerator.as_dataset` generate the next batch while the caller
works. ``benchmarks/simulate_dataset.py`` measures it.

Units: images in e-/s per pixel, angles in arcsec, Sersic amplitudes in e-/s/arcsec^2
(surface brightness at ``R_sersic``, lenstronomy's convention).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os

import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import check_fields
from ..profiles.shorthands import LENS_SHORTHAND_COMPONENTS
from ..lensing._barrier import barriers_enabled, materialize
from ..lensing.grid import PixelGrid
from ..observation import LensCosmology, Observation, SubhaloPopulation, get_instrument
from ..observation.subhalos import subhalo_deflection, subhalo_lens_kwargs
from ..profiles.base import get_profile
from .sources import NUM_SEEDS as NUM_SOURCE_SEEDS
from .sources import ellipticity

__all__ = ["LensSimulationConfig", "LensDatasetGenerator", "DEFAULT_PRIORS"]

tfd = tfp.distributions

#: ``lens_model`` -> the main deflector's profile (with an external shear): the shorthands of
#: the one table :data:`~tfstronglens.profiles.shorthands.LENS_SHORTHAND_COMPONENTS` that
#: the generator draws (main deflector + shear, no multipoles).
LENS_PROFILES = {name: comps[0][0] for name, comps in LENS_SHORTHAND_COMPONENTS.items()
                 if [p for p, _ in comps[1:]] == ["SHEAR"]}
LENS_MODELS = tuple(LENS_PROFILES)
SUBHALO_MODELS = ("none", "cdm", "wdm")

#: Default uniform prior ranges ``(low, high)``.
DEFAULT_PRIORS = {
    "theta_E": (0.8, 1.6),           # arcsec
    "gamma": (1.8, 2.2),             # EPL slope (epl+shear only)
    "lens_q": (0.5, 1.0),
    "lens_center": (-0.05, 0.05),    # arcsec, each coordinate
    "shear": (0.0, 0.1),             # external shear magnitude
    "source_R_sersic": (0.05, 0.3),  # arcsec
    "source_n_sersic": (0.5, 4.0),
    "source_q": (0.5, 1.0),
    "source_offset": (-0.25, 0.25),  # arcsec from the lens centre, each coordinate
    "source_snr": (15.0, 50.0),      # matched-filter S/N of the lensed source
    "lens_light_R_sersic": (0.5, 2.0),
    "lens_light_n_sersic": (2.0, 5.0),
    "lens_light_q": (0.6, 1.0),
    "lens_light_snr": (30.0, 200.0),
}

# (name, lower bound, lower bound inclusive?, upper bound or None)
_PRIOR_BOUNDS = {
    "theta_E": (0.0, False, None),
    "gamma": (1.0, False, 3.0),
    "lens_q": (0.0, False, 1.0),
    "lens_center": (None, True, None),
    "shear": (0.0, True, 0.5),
    "source_R_sersic": (0.0, False, None),
    "source_n_sersic": (0.2, True, 8.0),
    "source_q": (0.0, False, 1.0),
    "source_offset": (None, True, None),
    "source_snr": (0.0, False, None),
    "lens_light_R_sersic": (0.0, False, None),
    "lens_light_n_sersic": (0.2, True, 8.0),
    "lens_light_q": (0.0, False, 1.0),
    "lens_light_snr": (0.0, False, None),
}


def _err(field, value, why):
    return ValueError(f"{field}={value!r}: {why}")


def _num(field, value, *, positive=False, non_negative=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _err(field, value, "must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise _err(field, value, "must be finite")
    if positive and not value > 0:
        raise _err(field, value, "must be positive")
    if non_negative and value < 0:
        raise _err(field, value, "must be non-negative")
    return value


def _int(field, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _err(field, value, "must be an integer")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise _err(field, value, f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}]")
    return value


@dataclasses.dataclass
class LensSimulationConfig:
    """Everything that defines a simulated dataset (see the module docs for the priors).

    Fields: ``instrument`` (a preset name of :mod:`tfstronglens.observation.instruments`),
    ``num_pix``, ``supersample``, optional ``exposure_time``/``num_exposures`` overriding
    the preset, ``lens_model`` (``"sie+shear"``/``"epl+shear"``), ``lens_light`` (bool),
    ``subhalo_model`` (``"none"``/``"cdm"``/``"wdm"``) with ``n_max``, ``m_min``,
    ``m_max`` (M_sun), ``m_hm`` (WDM half-mode mass, M_sun), ``kappa_sub``,
    ``subhalo_beta``, ``subhalo_annulus_width`` (arcsec), redshifts ``z_lens`` <
    ``z_source``, ``priors`` (``{name: (low, high)}``, merged over
    :data:`DEFAULT_PRIORS`), ``seed``, and the source (:mod:`tfstronglens.simulation.sources`):
    ``source`` (``"sersic"``/``"galaxies"``/``"vae"``), ``galaxy_dataset``
    (``"synthetic_galaxies[/config]"``/``"cosmos_galaxies[/config]"``), ``galaxy_split``,
    ``galaxy_count`` (stamps held in memory), ``galaxy_data_dir``, ``galaxy_manual_dir``,
    ``vae_model`` (pretrained name or ``.keras`` path) and ``source_pixel_scale``
    (arcsec per source-image pixel; default: the dataset's, 0.03" for the VAE). :meth:`to_dict`/:meth:`from_dict` convert
    to/from plain JSON-able dicts (the CLI's config file is such a dict in JSON).
    Invalid values raise ``ValueError`` naming the field.
    """

    instrument: str = "euclid_vis"
    num_pix: int = 64
    supersample: int = 2
    exposure_time: float | None = None
    num_exposures: int | None = None
    lens_model: str = "sie+shear"
    lens_light: bool = True
    subhalo_model: str = "none"
    n_max: int = 32
    m_min: float = 1e8
    m_max: float = 1e10
    m_hm: float = 1e8
    kappa_sub: float = 0.01
    subhalo_beta: float = -1.9
    subhalo_annulus_width: float = 0.5
    z_lens: float = 0.5
    z_source: float = 2.0
    priors: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    source: str = "sersic"
    galaxy_dataset: str = "synthetic_galaxies/64"
    galaxy_split: str = "train"
    galaxy_count: int = 1000
    galaxy_data_dir: str | None = None
    galaxy_manual_dir: str | None = None
    vae_model: str = "synthetic_galaxies_64"
    source_pixel_scale: float | None = None

    def __post_init__(self):
        if not isinstance(self.instrument, str):
            raise _err("instrument", self.instrument, "must be a string")
        try:
            get_instrument(self.instrument)
        except ValueError as exc:
            raise ValueError(f"instrument: {exc}") from None
        self.num_pix = _int("num_pix", self.num_pix, 4, 4096)
        self.supersample = _int("supersample", self.supersample, 1, 16)
        if self.exposure_time is not None:
            self.exposure_time = _num("exposure_time", self.exposure_time, positive=True)
        if self.num_exposures is not None:
            self.num_exposures = _int("num_exposures", self.num_exposures, 1)
        if self.lens_model not in LENS_MODELS:
            raise _err("lens_model", self.lens_model, f"must be one of {LENS_MODELS}")
        if not isinstance(self.lens_light, bool):
            raise _err("lens_light", self.lens_light, "must be true or false")
        if self.subhalo_model not in SUBHALO_MODELS:
            raise _err("subhalo_model", self.subhalo_model, f"must be one of {SUBHALO_MODELS}")
        self.n_max = _int("n_max", self.n_max, 1, 1024)
        self.m_min = _num("m_min", self.m_min, positive=True)
        self.m_max = _num("m_max", self.m_max, positive=True)
        if not self.m_max > self.m_min:
            raise _err("m_max", self.m_max, f"must be larger than m_min={self.m_min!r}")
        self.m_hm = _num("m_hm", self.m_hm, non_negative=True)
        if self.subhalo_model == "wdm" and not self.m_hm > 0:
            raise _err("m_hm", self.m_hm, "must be positive for subhalo_model='wdm'")
        self.kappa_sub = _num("kappa_sub", self.kappa_sub, non_negative=True)
        self.subhalo_beta = _num("subhalo_beta", self.subhalo_beta)
        self.subhalo_annulus_width = _num("subhalo_annulus_width", self.subhalo_annulus_width,
                                          positive=True)
        self.z_lens = _num("z_lens", self.z_lens, positive=True)
        self.z_source = _num("z_source", self.z_source, positive=True)
        if not self.z_source > self.z_lens:
            raise _err("z_source", self.z_source, f"must be larger than z_lens={self.z_lens!r}")
        if not isinstance(self.priors, dict):
            raise _err("priors", self.priors, "must be a dict {name: [low, high]}")
        unknown = sorted(set(self.priors) - set(DEFAULT_PRIORS))
        if unknown:
            raise _err("priors", unknown, f"unknown prior name(s); known: {sorted(DEFAULT_PRIORS)}")
        merged = {}
        for name, default in DEFAULT_PRIORS.items():
            value = self.priors.get(name, default)
            field = f"priors.{name}"
            if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__")
                    or len(value) != 2):
                raise _err(field, value, "must be a pair [low, high]")
            lo, hi = _num(field, value[0]), _num(field, value[1])
            if lo > hi:
                raise _err(field, list(value), "low must not exceed high")
            bound, inclusive, upper = _PRIOR_BOUNDS[name]
            if bound is not None and (lo < bound or (lo == bound and not inclusive)):
                raise _err(field, list(value), f"low must be {'>=' if inclusive else '>'} {bound}")
            if upper is not None and hi > upper:
                raise _err(field, list(value), f"high must be <= {upper}")
            merged[name] = (lo, hi)
        self.priors = merged
        self.seed = _int("seed", self.seed, 0, 2**31 - 1)
        from .sources import SOURCE_SAMPLERS

        if self.source not in SOURCE_SAMPLERS:
            raise _err("source", self.source, f"must be one of {sorted(SOURCE_SAMPLERS)}")
        for name in ("galaxy_dataset", "galaxy_split", "vae_model"):
            if not isinstance(getattr(self, name), str):
                raise _err(name, getattr(self, name), "must be a string")
        self.galaxy_count = _int("galaxy_count", self.galaxy_count, 1, 10**6)
        for name in ("galaxy_data_dir", "galaxy_manual_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise _err(name, value, "must be a path or null")
            setattr(self, name, None if value is None else os.fspath(value))
        if self.source_pixel_scale is not None:
            self.source_pixel_scale = _num("source_pixel_scale", self.source_pixel_scale,
                                           positive=True)

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        """A plain, JSON-serialisable dict (priors as ``[low, high]`` lists)."""
        d = dataclasses.asdict(self)
        d["priors"] = {k: [float(v[0]), float(v[1])] for k, v in self.priors.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "LensSimulationConfig":
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones raise."""
        return cls(**check_fields(data, cls, "config"))

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from ..io._atomic import atomic_output

            with atomic_output(path, overwrite=True) as tmp:
                with open(tmp, "w") as fh:
                    fh.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, path) -> "LensSimulationConfig":
        """Read a JSON config file; ``ValueError`` for unreadable or invalid content."""
        try:
            with open(os.fspath(path)) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {os.fspath(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # ---------------------------------------------------------- derived
    def observation(self) -> Observation:
        overrides = {}
        if self.exposure_time is not None:
            overrides["exposure_time"] = self.exposure_time
        if self.num_exposures is not None:
            overrides["num_exposures"] = self.num_exposures
        return Observation.from_instrument(self.instrument, num_pix=self.num_pix, **overrides)


_FN_CACHE = {}


class LensDatasetGenerator:
    """Draw parameters from a :class:`LensSimulationConfig`'s priors and render noisy images.

    ``generate(k, batch_size)`` returns a dict of numpy arrays for batch ``k``:
    ``image`` (noisy, ``[B, N, N]``), ``model`` (noise-free), ``noise_sigma`` (per-pixel
    standard deviation of the noise), ``truths`` (``{"lens.0.theta_E": [B], ...,
    "source_snr": [B], "lens_light_snr": [B]}``, the scalar parameters), ``subhalos``
    (``mass``, ``center_x``, ``center_y`` ``[B, n_max]`` and ``mask`` ``[B, n_max]`` bool;
    all masked when ``subhalo_model="none"``) and, for image sources (``"galaxies"``,
    ``"vae"``), ``source_image`` ``[B, S, S]`` (e-/s/arcsec^2, pixels of
    :attr:`source_pixel_scale`; see :meth:`SourceSampler.truth_image`).
    ``source_sampler`` replaces the config's (e.g. a
    :class:`~tfstronglens.simulation.sources.GalaxyStampSampler` of one's own stamps). Each batch is one
    call of an XLA-compiled function (traced once per batch size). :meth:`as_dataset`
    wraps it in a ``tf.data.Dataset``.

    The rendering is the :class:`~tfstronglens.Simulator`'s, step by step
    (:meth:`~tfstronglens.Simulator.trace`, :meth:`~tfstronglens.Simulator.light`,
    :meth:`~tfstronglens.Simulator.pixelize`), with the subhalos' deflections added
    between the first two.
    """

    #: profile evaluations (subhalos x sub-pixels) per chunk of the subhalo loop
    _chunk_evaluations = 1 << 20

    def __init__(self, config: LensSimulationConfig | None = None, source_sampler=None):
        from .sources import SourceSampler, make_source_sampler

        if config is None:
            config = LensSimulationConfig()
        if not isinstance(config, LensSimulationConfig):
            raise ValueError(f"config must be a LensSimulationConfig, got {config!r}")
        self.config = config
        self.observation = config.observation()
        self.lens_cosmology = LensCosmology(config.z_lens, config.z_source)
        # a sampler of one's own: compiled batch functions are not shared with other
        # generators of the same config (they read the sampler's state)
        self._custom_sampler = source_sampler is not None
        if source_sampler is None:
            source_sampler = make_source_sampler(config)
        elif not isinstance(source_sampler, SourceSampler):
            raise ValueError(f"source_sampler must be a SourceSampler, got {source_sampler!r}")
        self.source_sampler = source_sampler
        self.simulator = self.observation.simulator(
            lens=[LENS_PROFILES[config.lens_model], "SHEAR"],
            source=[self.source_sampler.profile],
            lens_light=["SERSIC_ELLIPSE"] if config.lens_light else [],
            supersample=config.supersample)
        self._tnfw = get_profile("TNFW")
        self.n_max = config.n_max

    @property
    def truth_names(self) -> list:
        """Keys of the ``truths`` dict: the simulator's scalar parameter names (a source
        image is in ``source_image`` instead) plus the S/N values."""
        names = [n for n in self.simulator.param_names() if n != "source.0.image"]
        names.append("source_snr")
        if self.config.lens_light:
            names.append("lens_light_snr")
        return names

    @property
    def source_pixel_scale(self) -> float | None:
        """Arcsec per pixel of ``source_image`` (``None`` for a Sersic source)."""
        return self.source_sampler.pixel_scale

    # ------------------------------------------------------------ sampling
    def _uniform(self, name, shape, seed):
        lo, hi = self.config.priors[name]
        if lo == hi:
            return tf.fill(shape, tf.constant(lo, tf.float32))
        return tfd.Uniform(tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)).sample(
            shape, seed=seed)

    #: the population parameters :meth:`simulate` takes per lens (``population``)
    POPULATION_FIELDS = ("kappa_sub", "subhalo_beta", "m_hm")

    def subhalo_population(self, theta_E, center_x, center_y,
                           population: dict | None = None) -> SubhaloPopulation:
        """The :class:`~tfstronglens.observation.SubhaloPopulation` the lenses of a batch
        draw their subhalos from: the config's mass range, ``n_max`` and TNFW-mass
        normalisation in the annulus ``theta_E +- subhalo_annulus_width`` around each lens
        centre (``[B]`` tensors), with ``kappa_sub``, ``subhalo_beta`` and ``m_hm`` from
        the config unless ``population`` gives them (``[B]`` tensors, e.g. drawn from a
        prior; ``m_hm = 0`` is CDM). With the batch's lens truths, it scores the batch's
        ``subhalos`` under other population parameters (``log_prob``), differentiably."""
        cfg = self.config
        population = dict(population or {})
        unknown = sorted(set(population) - set(self.POPULATION_FIELDS))
        if unknown:
            raise ValueError(f"population has unknown field(s) {unknown}; known: "
                             f"{list(self.POPULATION_FIELDS)}")
        default_hm = cfg.m_hm if cfg.subhalo_model == "wdm" else 0.0
        return SubhaloPopulation(
            cfg.m_min, cfg.m_max, cfg.n_max,
            r_max=theta_E + cfg.subhalo_annulus_width,
            r_min=tf.maximum(theta_E - cfg.subhalo_annulus_width, 0.0),
            kappa_sub=population.get("kappa_sub", cfg.kappa_sub),
            lens_cosmology=self.lens_cosmology,
            beta=population.get("subhalo_beta", cfg.subhalo_beta),
            m_hm=population.get("m_hm", default_hm), center_x=center_x, center_y=center_y)

    def simulate(self, seed, batch_size: int, population: dict | None = None,
                 subhalos: dict | None = None) -> dict:
        """One batch as a dict of tensors (see the class docs), traceable: what
        :meth:`generate_tensors` compiles. ``seed``: a stateless seed; ``population``:
        per-lens subhalo population parameters (see :meth:`subhalo_population`; needs
        ``subhalo_model`` ``"cdm"`` or ``"wdm"``); ``subhalos``: instead of drawing them,
        these subhalos (a dict like a batch's ``subhalos``: ``mass``, ``center_x``,
        ``center_y``, ``mask``, each ``[B, n_max]``), e.g. to render the images of given
        subhalos for an exact likelihood. Everything else is drawn from ``seed`` as
        usual, so the same seed with other subhalos gives the same lenses and sources."""
        cfg = self.config
        if (population or subhalos is not None) and cfg.subhalo_model == "none":
            raise ValueError("population parameters or subhalos need subhalo_model 'cdm' or "
                             "'wdm', the config has 'none'")
        B = [batch_size]
        seeds = iter(tfp.random.split_seed(seed, n=24))
        u = lambda name: self._uniform(name, B, next(seeds))  # noqa: E731
        angle = lambda: tfd.Uniform(0.0, math.pi).sample(B, seed=next(seeds))  # noqa: E731

        theta_E = u("theta_E")
        e1, e2 = ellipticity(u("lens_q"), angle())
        cx, cy = u("lens_center"), u("lens_center")
        main = {"theta_E": theta_E, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}
        gamma_pl = u("gamma")
        if cfg.lens_model == "epl+shear":
            main["gamma"] = gamma_pl
        g_ext, g_phi = u("shear"), angle()
        zero = tf.zeros(B, tf.float32)
        shear = {"gamma1": g_ext * tf.cos(2.0 * g_phi), "gamma2": g_ext * tf.sin(2.0 * g_phi),
                 "ra_0": zero, "dec_0": zero}
        source = self.source_sampler.sample([next(seeds) for _ in range(NUM_SOURCE_SEEDS)],
                                            batch_size, cx, cy)
        le1, le2 = ellipticity(u("lens_light_q"), angle())
        light = {"amp": tf.ones(B), "R_sersic": u("lens_light_R_sersic"),
                 "n_sersic": u("lens_light_n_sersic"), "e1": le1, "e2": le2,
                 "center_x": cx, "center_y": cy}
        source_snr, light_snr = u("source_snr"), u("lens_light_snr")
        s_sub, s_noise = next(seeds), next(seeds)

        sim = self.simulator
        x, y = sim.rays
        bx, by = sim.trace(sim.expand_params("lens", [main, shear]), x, y)
        if cfg.subhalo_model != "none":
            if subhalos is None:
                subs = self.subhalo_population(theta_E, cx, cy, population).sample(seed=s_sub)
            else:
                subs = {k: tf.convert_to_tensor(subhalos[k], tf.bool if k == "mask"
                                                else tf.float32)
                        for k in ("mass", "center_x", "center_y", "mask")}
            kw = subhalo_lens_kwargs(subs, self.lens_cosmology, "TNFW",
                                     theta_E_host=theta_E[:, None],
                                     host_center_x=cx[:, None], host_center_y=cy[:, None])
            dax, day = self._subhalo_deflection(x, y, kw, subs["mask"])
            bx, by = bx - dax, by - day
        else:
            zs = tf.zeros(B + [cfg.n_max], tf.float32)
            subs = {"mass": zs, "center_x": zs, "center_y": zs,
                    "mask": tf.zeros(B + [cfg.n_max], tf.bool)}

        src_img = sim.pixelize(sim.light("source", sim.expand_params("source", [source]),
                                         bx, by))
        truths = {}
        if cfg.lens_light:
            light_img = sim.pixelize(sim.light(
                "lens_light", sim.expand_params("lens_light", [light]), x, y))
            a_light = self._scale_to_snr(light_img, light_snr)
            light_img = light_img * a_light[:, None, None]
            light["amp"] = a_light
        else:
            light_img = tf.zeros_like(src_img)
        a_src = self._scale_to_snr(src_img, source_snr,
                                   lens_light=light_img if cfg.lens_light else None)
        source["amp"] = a_src
        model = src_img * a_src[:, None, None] + light_img
        image, sigma = self._add_noise(model, s_noise)

        for kind, plist in (("lens", [main, shear]), ("source", [source]),
                            ("lens_light", [light] if cfg.lens_light else [])):
            for i, (prof, p) in enumerate(zip(sim.components(kind), plist)):
                for name in prof.param_names:
                    if not prof.param_event_ndims.get(name, 0):
                        truths[f"{kind}.{i}.{name}"] = p[name]
        truths["source_snr"] = source_snr
        if cfg.lens_light:
            truths["lens_light_snr"] = light_snr
        subs = {k: subs[k] for k in ("mass", "center_x", "center_y", "mask")}
        out = {"image": image, "model": model, "noise_sigma": sigma, "truths": truths,
               "subhalos": subs}
        source_image = self.source_sampler.truth_image(source)
        if source_image is not None:
            out["source_image"] = source_image
        return out

    def source_on_grid(self, out: dict, num_pix: int, pixel_scale: float,
                       supersample: int = 2):
        """The true sources of a batch ``out`` (of :meth:`generate` or
        :meth:`generate_tensors`) on a ``num_pix^2`` grid of ``pixel_scale`` arcsec centred
        on (0, 0): ``[B, num_pix, num_pix]`` e-/s/arcsec^2, each pixel the mean of
        ``supersample^2`` point samples of the source profile (what a pixelated
        reconstruction on that grid aims at)."""
        prof = self.source_sampler.profile
        params = {}
        for name in prof.param_names:
            if prof.param_event_ndims.get(name, 0):
                params[name] = tf.convert_to_tensor(out["source_image"], tf.float32)
            else:
                params[name] = tf.convert_to_tensor(out["truths"][f"source.0.{name}"],
                                                    tf.float32)[:, None, None]
        if "source_image" in out:
            params["amp"] = tf.ones_like(params["amp"])  # the image includes it
        grid = PixelGrid(int(num_pix), float(pixel_scale), int(supersample))
        x, y = grid.coordinates(supersampled=True)
        sb = prof.surface_brightness(x, y, **params)
        return grid.bin(sb)

    def _add_noise(self, model, seed):
        """``(observation.add_noise(model, seed), sigma)``, the image bit for bit.

        The same Gaussian noise model and stateless stream, with TF's default stateless
        algorithm (Philox) named explicitly: under XLA:CPU the "auto_select" default that
        ``add_noise`` gets draws the same numbers ~30x slower (measured: ~1 s against
        ~35 ms for 256 x 64 x 64 normals).
        """
        sigma = tf.sqrt(self.observation.noise_variance(model))
        noise = tf.random.stateless_normal(tf.shape(model), seed, dtype=model.dtype,
                                           alg="philox")
        return noise * sigma + model, sigma

    def _scale_to_snr(self, model, target, lens_light=None):
        """``A [B]`` with ``observation.snr(A * model, lens_light=lens_light) == target``.

        The same equation as :meth:`Observation.scale_to_snr` (the S/N definition is that
        of :meth:`Observation.snr`: ``S/N^2(A) = sum_i A^2 m_i^2 / (b + max(A m_i + L_i,
        0) / T)`` over the pixels with ``m_i != 0``, ``b`` the background variance, ``T``
        the exposure time, ``L`` the lens light), solved with fewer and cheaper passes
        over the pixels (each pass evaluates its two pixel sums at once):

        * a closed-form start: with ``c_i = b + max(L_i, 0)/T``, ``w_i = m_i^2/c_i`` and
          ``rho_i = m_i/(T c_i)``, ``S/N^2(A) = A^2 sum_i w_i / (1 + A rho_i)`` for
          ``m, L >= 0``. Replacing every ``rho_i`` by the weighted mean ``rho = sum w rho /
          sum w`` gives the quadratic ``A^2 W = t^2 (1 + A rho)`` (``W = sum w``, ``t`` the
          target): exact when ``rho_i`` is the same in every pixel (background- or lens-
          light-limited) and, by Jensen's inequality, never below the root otherwise;
        * safeguarded Newton steps on ``u = ln A`` for ``h(u) = ln S/N^2 - ln t^2`` in
          float32 until ``|h| < 1e-4``: the slope ``h'`` lies in ``[1, 2]``, so the root
          is within ``|h(u)|`` of ``u`` (a bracket for the safeguard);
        * one Newton step with float64 sums. With ``x_i = A m_i / (T var_i)`` in ``[0, 1]``
          and ``<.>`` the mean weighted by the pixels' ``S/N^2`` terms, ``h' = 2 - <x>``
          and ``h'' = Var(x) - <x (1 - x)>``, so ``|h''| <= 1/4``: from ``|h| < 1e-4`` the
          step leaves ``|h| <= h^2 / 4 < 2.5e-9`` (up to float64 rounding), i.e. the S/N
          equals the target to a relative ``|h|/2 < 1.3e-9``, below the float32 rounding
          of ``A``.

        Three to five float32 passes and one float64 pass per solve, instead of ~7 float64
        passes for :meth:`Observation.scale_to_snr` (which needs no sign assumptions).
        """
        obs = self.observation
        dt = model.dtype
        target = tf.convert_to_tensor(target, dt)
        b, t_exp = obs.background_rms**2, obs.total_exposure_time

        def sums(a, c):
            # both pixel sums of one pass from one materialized [2, B, N, N] stack: XLA
            # otherwise recomputes the shared per-pixel terms in each reduction
            return tf.unstack(tf.reduce_sum(materialize(tf.stack([a, c])), axis=[-2, -1]))

        def h_and_slope(u, dt):
            m = tf.cast(model, dt)
            amp = tf.exp(u)[:, None, None]
            flux = amp * m
            if lens_light is not None:
                flux = flux + tf.cast(lens_light, dt)
            var = tf.constant(b, dt) + tf.nn.relu(flux) / tf.constant(t_exp, dt)
            ok = (var > 0) & (m != 0)
            inv = tf.where(ok, 1.0 / tf.where(ok, var, tf.ones_like(var)), tf.zeros_like(var))
            f = tf.square(amp * m) * inv
            # d ln var_i / d u, where var_i > 0
            x = tf.where(flux > 0, amp * m / tf.constant(t_exp, dt), tf.zeros_like(var)) * inv
            g, dg = sums(f, f * (2.0 - x))
            return tf.math.log(g) - 2.0 * tf.math.log(tf.cast(target, dt)), dg / g

        # closed-form start: S/N^2 = A^2 W / (1 + A rho)
        c = tf.constant(b, dt) + tf.zeros_like(model)
        if lens_light is not None:
            c = c + tf.nn.relu(lens_light) / tf.constant(t_exp, dt)
        ok = (c > 0) & (model != 0)
        inv_c = tf.where(ok, 1.0 / tf.where(ok, c, tf.ones_like(c)), tf.zeros_like(c))
        w = tf.square(model) * inv_c
        big_w, w_rho = sums(w, w * tf.nn.relu(model) * inv_c)
        rho = w_rho / (big_w * t_exp)
        t2 = tf.square(target)
        u = tf.math.log((t2 * rho + tf.sqrt(tf.square(t2 * rho) + 4.0 * big_w * t2))
                        / (2.0 * big_w))

        # float32 safeguarded Newton iterations
        h, slope = h_and_slope(u, dt)
        width = tf.abs(h) * 1.0001 + 1e-6  # the slope is >= 1
        lo, hi = u - width, u + width

        def body(i, u, lo, hi, h, slope, _):
            lo = tf.where(h < 0, u, lo)
            hi = tf.where(h > 0, u, hi)
            step = u - h / slope
            # (inclusive: near the root the step can round to u itself, a bound)
            inside = (step >= lo) & (step <= hi) & tf.math.is_finite(step)
            u = tf.where(inside, step, 0.5 * (lo + hi))
            h, slope = h_and_slope(u, dt)
            return i + 1, u, lo, hi, h, slope, tf.reduce_max(tf.abs(h))

        def cond(i, u, lo, hi, h, slope, err):
            return (i < 30) & (err > 1e-4)

        _, u, _, _, h, slope, _ = tf.while_loop(
            cond, body, (tf.constant(0), u, lo, hi, h, slope, tf.reduce_max(tf.abs(h))))
        # one float64 Newton step
        u = tf.cast(u, tf.float64)
        h, slope = h_and_slope(u, tf.float64)
        return tf.cast(tf.exp(u - h / slope), dt)

    def _subhalo_deflection(self, x, y, kw, mask):
        """Summed TNFW deflection ``[B, *x.shape]`` of the real (unmasked) subhalos only.

        The real subhalos of lens ``b`` fill its first ``n_b`` slots; the padded slots are
        massless. Evaluating every slot on every sub-pixel costs ``B n_max`` profile
        evaluations per ray, most of them zeros when ``n_max`` is well above the mean
        number. Instead the (slot, lens) pairs of real subhalos are gathered in front
        (slot-major, a stable sort) and evaluated in chunks of ``C`` pairs inside a
        ``while`` loop that runs ``ceil(n_real / C)`` times, each chunk's deflections
        being scatter-added to their lenses: the cost is that of the real subhalos (plus
        at most ``C - 1`` massless ones). The profile is the same TNFW, evaluated on every
        sub-pixel, so the deflections equal the dense sum up to the float summation
        order. Batches small enough for one chunk take the dense sum (faster to compile).
        """
        batch, n_max = mask.shape[0], mask.shape[1]
        num = batch * n_max
        rays = x.shape.num_elements()
        if num * rays <= self._chunk_evaluations:
            # small enough for one chunk: the dense sum over all slots (compiles faster)
            return subhalo_deflection(self._tnfw, x, y, kw)
        # ~1M profile evaluations per chunk: large enough to vectorize, small enough that
        # the last, partly massless chunk wastes little
        chunk = max(1, min(num, -(-self._chunk_evaluations // rays)))
        pad = -num % chunk
        massless = {"Rs": 1.0, "alpha_Rs": 0.0, "r_trunc": 1.0, "center_x": 0.0,
                    "center_y": 0.0}
        # slot-major flat pairs p = slot * B + lens, plus ``pad`` massless entries
        flat = {k: tf.concat([tf.reshape(tf.transpose(kw[k]), [-1]),
                              tf.fill([1], tf.constant(v, tf.float32))], 0)
                for k, v in massless.items()}
        real = tf.reshape(tf.transpose(mask), [-1])
        order = tf.argsort(tf.cast(tf.logical_not(real), tf.int32), stable=True)
        order = tf.concat([order, tf.fill([pad], num)], 0)  # index num: the massless entry
        n_real = tf.reduce_sum(tf.cast(real, tf.int32))
        num_chunks = (n_real + chunk - 1) // chunk
        lens_of = tf.concat([tf.tile(tf.range(batch), [n_max]), [0]], 0)

        def body(c, ax, ay):
            idx = tf.slice(order, [c * chunk], [chunk])
            p = {k: tf.gather(v, idx)[:, None, None] for k, v in flat.items()}
            dax, day = self._tnfw._deflection(x, y, **p)
            lens = tf.gather(lens_of, idx)[:, None]
            return (c + 1, tf.tensor_scatter_nd_add(ax, lens, dax),
                    tf.tensor_scatter_nd_add(ay, lens, day))

        zero = tf.zeros([batch] + x.shape.as_list(), x.dtype)
        _, ax, ay = tf.while_loop(lambda c, ax, ay: c < num_chunks, body,
                                  (tf.constant(0), zero, zero))
        return ax, ay

    def _fn(self, batch_size: int):
        # shared by generators whose configs differ only in the seed (the seed is an input);
        # the barrier setting changes what is traced (benchmarks/simulate_dataset.py)
        key = (json.dumps({k: v for k, v in self.config.to_dict().items() if k != "seed"},
                          sort_keys=True), batch_size,
               id(self.source_sampler) if self._custom_sampler else None, barriers_enabled())
        if key not in _FN_CACHE:
            if len(_FN_CACHE) >= 16:
                _FN_CACHE.pop(next(iter(_FN_CACHE)))
            _FN_CACHE[key] = tf.function(
                lambda seed: self.simulate(seed, batch_size), jit_compile=True, autograph=False)
        return _FN_CACHE[key]

    def seed_for(self, k: int) -> tf.Tensor:
        """The stateless seed ``[config.seed, k]`` of batch ``k``."""
        return tf.constant([self.config.seed, int(k)], tf.int32)

    def generate_tensors(self, k: int, batch_size: int) -> dict:
        """Batch ``k`` as a dict of tensors (see the class docs)."""
        batch_size = _int("batch_size", batch_size, 1)
        k = _int("k", k, 0, 2**31 - 1)
        return self._fn(batch_size)(self.seed_for(k))

    def generate(self, k: int, batch_size: int) -> dict:
        """Batch ``k`` as a dict of numpy arrays (see the class docs)."""
        return tf.nest.map_structure(lambda t: t.numpy(), self.generate_tensors(k, batch_size))

    def iter_batches(self, batch_size: int, num_batches: int, prefetch: int = 1):
        """Yield :meth:`generate` ``(k, batch_size)`` for ``k = 0 .. num_batches - 1``.

        With ``prefetch > 0`` up to ``prefetch`` later batches are generated in a
        background thread while the caller works on the current one (the compiled batch
        function releases the GIL), e.g. while TFDS or the FITS writer serialises it. The
        arrays are those of :meth:`generate`: every batch has its own stateless seed.
        """
        batch_size = _int("batch_size", batch_size, 1)
        num_batches = _int("num_batches", num_batches, 0)
        prefetch = _int("prefetch", prefetch, 0)
        if prefetch == 0:
            for k in range(num_batches):
                yield self.generate(k, batch_size)
            return
        import collections
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lens-batches") as pool:
            pending = collections.deque(
                pool.submit(self.generate, k, batch_size)
                for k in range(min(prefetch, num_batches)))
            for k in range(num_batches):
                out = pending.popleft().result()
                if k + prefetch < num_batches:
                    pending.append(pool.submit(self.generate, k + prefetch, batch_size))
                yield out

    def as_dataset(self, batch_size: int, num_batches: int, channel_axis: bool = True,
                   include_model: bool = False, prefetch: int = 1) -> tf.data.Dataset:
        """``tf.data.Dataset`` of ``num_batches`` batches ``(image, truths)``.

        ``image``: ``[B, N, N, 1]`` (``channel_axis=True``) or ``[B, N, N]``, float32;
        ``truths``: dict of ``[B]`` float32 tensors (:attr:`truth_names`) plus
        ``"subhalos.mass"``, ``"subhalos.center_x"``, ``"subhalos.center_y"`` ``[B,
        n_max]`` float32 and ``"subhalos.mask"`` ``[B, n_max]`` bool (and ``"model"``,
        the noise-free image, with ``include_model``; ``"source_image"`` ``[B, S, S]``
        for image sources). Batch ``k`` is
        :meth:`generate` ``(k, batch_size)``. ``prefetch`` batches are generated ahead,
        in tf.data's background thread, while the consumer works (0: none).
        """
        batch_size = _int("batch_size", batch_size, 1)
        num_batches = _int("num_batches", num_batches, 1)
        prefetch = _int("prefetch", prefetch, 0)
        n, n_max = self.config.num_pix, self.config.n_max
        names = self.truth_names

        def batches():
            # eager calls of the compiled batch function (a ``Dataset.map`` would compile
            # it again inside the dataset's graph)
            for k in range(num_batches):
                out = self.generate_tensors(k, batch_size)
                img = out["image"][..., None] if channel_axis else out["image"]
                truths = dict(out["truths"])
                for name, v in out["subhalos"].items():
                    truths[f"subhalos.{name}"] = v
                if include_model:
                    truths["model"] = out["model"]
                if "source_image" in out:
                    truths["source_image"] = out["source_image"]
                yield img, truths

        f32 = tf.float32
        img_spec = tf.TensorSpec([batch_size, n, n] + ([1] if channel_axis else []), f32)
        truth_spec = {name: tf.TensorSpec([batch_size], f32) for name in names}
        for name in ("mass", "center_x", "center_y"):
            truth_spec[f"subhalos.{name}"] = tf.TensorSpec([batch_size, n_max], f32)
        truth_spec["subhalos.mask"] = tf.TensorSpec([batch_size, n_max], tf.bool)
        if include_model:
            truth_spec["model"] = tf.TensorSpec([batch_size, n, n], f32)
        if self.source_pixel_scale is not None:
            size = self.source_sampler.profile.num_pix
            truth_spec["source_image"] = tf.TensorSpec([batch_size, size, size], f32)
        ds = tf.data.Dataset.from_generator(batches, output_signature=(img_spec, truth_spec))
        return ds.prefetch(prefetch) if prefetch else ds

