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

from ..lensing.psf import convolve
from ..observation import LensCosmology, Observation, SubhaloPopulation, get_instrument
from ..observation.subhalos import subhalo_deflection, subhalo_lens_kwargs
from ..profiles.base import get_profile

__all__ = ["LensSimulationConfig", "LensDatasetGenerator", "DEFAULT_PRIORS"]

tfd = tfp.distributions

LENS_MODELS = ("sie+shear", "epl+shear")
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
    :data:`DEFAULT_PRIORS`) and ``seed``. :meth:`to_dict`/:meth:`from_dict` convert
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

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        """A plain, JSON-serialisable dict (priors as ``[low, high]`` lists)."""
        d = dataclasses.asdict(self)
        d["priors"] = {k: [float(v[0]), float(v[1])] for k, v in self.priors.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "LensSimulationConfig":
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones raise."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

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


def _ellipticity(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * tf.cos(2.0 * phi), e * tf.sin(2.0 * phi)


class LensDatasetGenerator:
    """Draw parameters from a :class:`LensSimulationConfig`'s priors and render noisy images.

    ``generate(k, batch_size)`` returns a dict of numpy arrays for batch ``k``:
    ``image`` (noisy, ``[B, N, N]``), ``model`` (noise-free), ``noise_sigma`` (per-pixel
    standard deviation of the noise), ``truths`` (``{"lens.0.theta_E": [B], ...,
    "source_snr": [B], "lens_light_snr": [B]}``) and ``subhalos`` (``mass``,
    ``center_x``, ``center_y`` ``[B, n_max]`` and ``mask`` ``[B, n_max]`` bool; all
    masked when ``subhalo_model="none"``). Each batch is one call of an XLA-compiled
    function (traced once per batch size). :meth:`as_dataset` wraps it in a
    ``tf.data.Dataset``.
    """

    def __init__(self, config: LensSimulationConfig | None = None):
        if config is None:
            config = LensSimulationConfig()
        if not isinstance(config, LensSimulationConfig):
            raise ValueError(f"config must be a LensSimulationConfig, got {config!r}")
        self.config = config
        self.observation = config.observation()
        self.lens_cosmology = LensCosmology(config.z_lens, config.z_source)
        main = "SIE" if config.lens_model == "sie+shear" else "EPL"
        self.simulator = self.observation.simulator(
            lens=[main, "SHEAR"], source=["SERSIC_ELLIPSE"],
            lens_light=["SERSIC_ELLIPSE"] if config.lens_light else [],
            supersample=config.supersample)
        self._tnfw = get_profile("TNFW")
        self.n_max = config.n_max

    @property
    def truth_names(self) -> list:
        """Keys of the ``truths`` dict: simulator parameter names plus the S/N values."""
        names = self.simulator.param_names() + ["source_snr"]
        if self.config.lens_light:
            names.append("lens_light_snr")
        return names

    # ------------------------------------------------------------ sampling
    def _uniform(self, name, shape, seed):
        lo, hi = self.config.priors[name]
        if lo == hi:
            return tf.fill(shape, tf.constant(lo, tf.float32))
        return tfd.Uniform(tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)).sample(
            shape, seed=seed)

    def _batch(self, seed, batch_size: int):
        cfg = self.config
        B = [batch_size]
        seeds = iter(tfp.random.split_seed(seed, n=24))
        u = lambda name: self._uniform(name, B, next(seeds))  # noqa: E731
        angle = lambda: tfd.Uniform(0.0, math.pi).sample(B, seed=next(seeds))  # noqa: E731

        theta_E = u("theta_E")
        e1, e2 = _ellipticity(u("lens_q"), angle())
        cx, cy = u("lens_center"), u("lens_center")
        main = {"theta_E": theta_E, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}
        gamma_pl = u("gamma")
        if cfg.lens_model == "epl+shear":
            main["gamma"] = gamma_pl
        g_ext, g_phi = u("shear"), angle()
        zero = tf.zeros(B, tf.float32)
        shear = {"gamma1": g_ext * tf.cos(2.0 * g_phi), "gamma2": g_ext * tf.sin(2.0 * g_phi),
                 "ra_0": zero, "dec_0": zero}
        se1, se2 = _ellipticity(u("source_q"), angle())
        source = {"amp": tf.ones(B), "R_sersic": u("source_R_sersic"),
                  "n_sersic": u("source_n_sersic"), "e1": se1, "e2": se2,
                  "center_x": cx + u("source_offset"), "center_y": cy + u("source_offset")}
        le1, le2 = _ellipticity(u("lens_light_q"), angle())
        light = {"amp": tf.ones(B), "R_sersic": u("lens_light_R_sersic"),
                 "n_sersic": u("lens_light_n_sersic"), "e1": le1, "e2": le2,
                 "center_x": cx, "center_y": cy}
        source_snr, light_snr = u("source_snr"), u("lens_light_snr")
        s_sub, s_noise = next(seeds), next(seeds)

        sim = self.simulator
        lens_exp = sim._expand("lens", [main, shear])
        x, y = sim._x, sim._y
        ax, ay = sim._alpha(x, y, lens_exp)
        if cfg.subhalo_model != "none":
            pop = SubhaloPopulation(
                cfg.m_min, cfg.m_max, cfg.n_max,
                r_max=theta_E + cfg.subhalo_annulus_width,
                r_min=tf.maximum(theta_E - cfg.subhalo_annulus_width, 0.0),
                kappa_sub=cfg.kappa_sub, lens_cosmology=self.lens_cosmology,
                beta=cfg.subhalo_beta, m_hm=cfg.m_hm if cfg.subhalo_model == "wdm" else 0.0,
                center_x=cx, center_y=cy)
            subs = pop.sample(seed=s_sub)
            kw = subhalo_lens_kwargs(subs, self.lens_cosmology, "TNFW",
                                     theta_E_host=theta_E[:, None],
                                     host_center_x=cx[:, None], host_center_y=cy[:, None])
            dax, day = subhalo_deflection(self._tnfw, x, y, kw)
            ax, ay = ax + dax, ay + day
        else:
            zs = tf.zeros(B + [cfg.n_max], tf.float32)
            subs = {"mass": zs, "center_x": zs, "center_y": zs,
                    "mask": tf.zeros(B + [cfg.n_max], tf.bool)}

        def render(sb):
            img = sim.grid.bin(sb) * sim.grid.pixel_area
            if sim._kernel is not None:
                img = convolve(img, sim._kernel)
            return img

        bx, by = x - ax, y - ay
        src_exp, = sim._expand("source", [source])
        src_img = render(sim.source[0]._surface_brightness(bx, by, **src_exp))
        obs = self.observation
        truths = {}
        if cfg.lens_light:
            light_exp, = sim._expand("lens_light", [light])
            light_img = render(sim.lens_light[0]._surface_brightness(x, y, **light_exp))
            a_light = obs.scale_to_snr(light_img, light_snr)
            light_img = light_img * a_light[:, None, None]
            light["amp"] = a_light
        else:
            light_img = tf.zeros_like(src_img)
        a_src = obs.scale_to_snr(src_img, source_snr,
                                 lens_light=light_img if cfg.lens_light else None)
        source["amp"] = a_src
        model = src_img * a_src[:, None, None] + light_img
        image = obs.add_noise(model, seed=s_noise)
        sigma = tf.sqrt(obs.noise_variance(model))

        for kind, plist in (("lens", [main, shear]), ("source", [source]),
                            ("lens_light", [light] if cfg.lens_light else [])):
            for i, (prof, p) in enumerate(zip(sim.components(kind), plist)):
                for name in prof.param_names:
                    truths[f"{kind}.{i}.{name}"] = p[name]
        truths["source_snr"] = source_snr
        if cfg.lens_light:
            truths["lens_light_snr"] = light_snr
        subs = {k: subs[k] for k in ("mass", "center_x", "center_y", "mask")}
        return {"image": image, "model": model, "noise_sigma": sigma, "truths": truths,
                "subhalos": subs}

    def _fn(self, batch_size: int):
        # shared by generators whose configs differ only in the seed (the seed is an input)
        key = (json.dumps({k: v for k, v in self.config.to_dict().items() if k != "seed"},
                          sort_keys=True), batch_size)
        if key not in _FN_CACHE:
            if len(_FN_CACHE) >= 16:
                _FN_CACHE.pop(next(iter(_FN_CACHE)))
            _FN_CACHE[key] = tf.function(
                lambda seed: self._batch(seed, batch_size), jit_compile=True, autograph=False)
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

    def as_dataset(self, batch_size: int, num_batches: int, channel_axis: bool = True,
                   include_model: bool = False) -> tf.data.Dataset:
        """``tf.data.Dataset`` of ``num_batches`` batches ``(image, truths)``.

        ``image``: ``[B, N, N, 1]`` (``channel_axis=True``) or ``[B, N, N]``, float32;
        ``truths``: dict of ``[B]`` float32 tensors (:attr:`truth_names`) plus
        ``"subhalos.mass"``, ``"subhalos.center_x"``, ``"subhalos.center_y"`` ``[B,
        n_max]`` float32 and ``"subhalos.mask"`` ``[B, n_max]`` bool (and ``"model"``,
        the noise-free image, with ``include_model``). Batch ``k`` is
        :meth:`generate` ``(k, batch_size)``.
        """
        batch_size = _int("batch_size", batch_size, 1)
        num_batches = _int("num_batches", num_batches, 1)
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
                yield img, truths

        f32 = tf.float32
        img_spec = tf.TensorSpec([batch_size, n, n] + ([1] if channel_axis else []), f32)
        truth_spec = {name: tf.TensorSpec([batch_size], f32) for name in names}
        for name in ("mass", "center_x", "center_y"):
            truth_spec[f"subhalos.{name}"] = tf.TensorSpec([batch_size, n_max], f32)
        truth_spec["subhalos.mask"] = tf.TensorSpec([batch_size, n_max], tf.bool)
        if include_model:
            truth_spec["model"] = tf.TensorSpec([batch_size, n, n], f32)
        return tf.data.Dataset.from_generator(batches, output_signature=(img_spec, truth_spec))

