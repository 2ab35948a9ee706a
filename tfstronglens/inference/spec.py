r"""Lens models as data: components, priors, ties and the shorthands, readable from JSON.

A model is a list of main-lens components (any registered mass profile, e.g. ``SIE``,
``SHEAR``, ``MULTIPOLE``), optional lens-light components, a source, candidate subhalos and
priors. :class:`ModelSpec` holds that; :meth:`ModelSpec.from_json` / :meth:`to_json` read
and write it (``tfstronglens fit --model MODEL.json``), and :func:`expand_lens` turns the
shorthands (``"sie+shear"``, ``"epl+shear+m4"``, ...; the one table :data:`LENS_SHORTHANDS`)
into components. :class:`~tfstronglens.inference.LensModel` accepts either.

#### Priors as data

A prior is a one-key dict naming its family, with the family's arguments in order, and an
optional ``"scale"``: ``"fov"`` (the image's field of view in arcsec) or ``"amp"`` (the
model's brightness scale) that multiplies every argument:

====================  =======================================  ==========================
family                arguments                                support
====================  =======================================  ==========================
``uniform``           ``[low, high]``                          ``[low, high]``
``normal``            ``[loc, scale]``                         the real line
``truncated_normal``  ``[loc, scale, low, high]``              ``[low, high]``
``log_uniform``       ``[low, high]`` (``0 < low``)            ``[low, high]``
====================  =======================================  ==========================

e.g. ``{"uniform": [0.05, 0.5], "scale": "fov"}``. A prior must lie inside the parameter's
support as the profile declares it (``theta_E > 0``, ``q <= 1``, ...).

#### A component

``{"profile": "MULTIPOLE", "settings": {"m": 4}, "priors": {"a_m": {...}},
"fixed": {"r_E": 1.0}, "tied": {"center_x": "lens.0.center_x"}}``: ``settings`` are the
profile's static constructor settings, ``priors`` and ``fixed`` name its own parameters,
``tied`` makes a parameter equal to another model parameter (by its full name). Parameters
with neither take the default prior of their role (see
:class:`~tfstronglens.inference.LensModel`) or of the profile
(:meth:`~tfstronglens.profiles.Profile.default_priors`), or stay at the profile's default
value when it has one and no default prior.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Mapping

import tensorflow as tf
import tensorflow_probability as tfp

from .._validation import check_fields, resolve_dtype
from ._util import positive_float
from ..profiles.base import PROFILE_REGISTRY, MassProfile, get_profile
from ..profiles.shorthands import LENS_SHORTHAND_COMPONENTS

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["log_uniform", "PRIOR_FAMILIES", "LENS_SHORTHANDS", "ROLE_PRIORS", "ComponentSpec",
           "SubhaloSpec", "ModelSpec", "expand_lens", "expand_source", "build_prior", "check_prior",
           "prior_support"]


def log_uniform(low, high, dtype=tf.float32, name="LogUniform"):
    r"""Log-uniform distribution on ``[low, high]``: ``p(m) = 1 / (m ln(high / low))``.

    Built as ``TransformedDistribution(Uniform(ln low, ln high), Exp())`` (TFP has no
    ``LogUniform``); its default event-space bijector is ``Exp o Sigmoid``.
    """
    low = positive_float(low, "low")
    high = positive_float(high, "high")
    if not high > low:
        raise ValueError(f"high must be larger than low, got low={low!r}, high={high!r}")
    dtype = resolve_dtype(dtype)
    return tfd.TransformedDistribution(
        tfd.Uniform(tf.constant(math.log(low), dtype), tf.constant(math.log(high), dtype)),
        tfb.Exp(), name=name)


# family -> (argument names, builder(args, dtype), support(args))
PRIOR_FAMILIES = {
    "uniform": (("low", "high"),
                lambda a, dt: tfd.Uniform(tf.constant(a[0], dt), tf.constant(a[1], dt)),
                lambda a: (a[0], a[1])),
    "normal": (("loc", "scale"),
               lambda a, dt: tfd.Normal(tf.constant(a[0], dt), tf.constant(a[1], dt)),
               lambda a: (-math.inf, math.inf)),
    "truncated_normal": (("loc", "scale", "low", "high"),
                         lambda a, dt: tfd.TruncatedNormal(*(tf.constant(v, dt) for v in a)),
                         lambda a: (a[2], a[3])),
    "log_uniform": (("low", "high"), lambda a, dt: log_uniform(a[0], a[1], dt),
                    lambda a: (a[0], a[1])),
}
_SCALES = ("fov", "amp")

_E_PRIOR = {"truncated_normal": [0.0, 0.2, -0.45, 0.45]}
_N_SERSIC = {"uniform": [0.5, 6.0]}
# Default priors by role and parameter name (see LensModel's table); a profile's own
# default_priors() come first.
ROLE_PRIORS = {
    "lens": {"theta_E": {"uniform": [0.05, 0.5], "scale": "fov"},
             "gamma": {"uniform": [1.5, 2.5]},
             "e1": _E_PRIOR, "e2": _E_PRIOR,
             "center_x": {"normal": [0.0, 0.1]}, "center_y": {"normal": [0.0, 0.1]},
             "gamma1": {"normal": [0.0, 0.05]}, "gamma2": {"normal": [0.0, 0.05]}},
    "lens_light": {"amp": {"log_uniform": [1e-3, 1e2], "scale": "amp"},
                   "R_sersic": {"log_uniform": [0.02, 0.5], "scale": "fov"},
                   "n_sersic": _N_SERSIC, "e1": _E_PRIOR, "e2": _E_PRIOR,
                   "center_x": {"normal": [0.0, 0.1]}, "center_y": {"normal": [0.0, 0.1]}},
    "source": {"amp": {"log_uniform": [1e-3, 1e3], "scale": "amp"},
               "R_sersic": {"log_uniform": [0.005, 0.25], "scale": "fov"},
               "n_sersic": _N_SERSIC, "e1": _E_PRIOR, "e2": _E_PRIOR,
               "center_x": {"normal": [0.0, 0.25]}, "center_y": {"normal": [0.0, 0.25]}},
}


def check_prior(spec, where: str) -> dict:
    """A prior spec checked and normalised to ``{family: [floats], "scale": ...}``;
    ``ValueError`` naming ``where`` (e.g. ``"priors.lens.0.theta_E"``) otherwise."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a prior dict such as {{'uniform': [0, 1]}}, got "
                         f"{spec!r}")
    families = [k for k in spec if k != "scale"]
    if len(families) != 1 or families[0] not in PRIOR_FAMILIES:
        raise ValueError(f"{where} must name one prior family of {sorted(PRIOR_FAMILIES)}, "
                         f"got keys {sorted(spec)}")
    family = families[0]
    names = PRIOR_FAMILIES[family][0]
    args = spec[family]
    if (not isinstance(args, (list, tuple)) or len(args) != len(names)
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                       and math.isfinite(v) for v in args)):
        raise ValueError(f"{where}: {family} takes {len(names)} finite numbers "
                         f"{list(names)}, got {args!r}")
    args = [float(v) for v in args]
    scale = spec.get("scale")
    if scale is not None and scale not in _SCALES:
        raise ValueError(f"{where}: scale must be one of {_SCALES}, got {scale!r}")
    if family in ("uniform", "log_uniform") and not args[0] < args[1]:
        raise ValueError(f"{where}: {family} needs low < high, got {args}")
    if family == "log_uniform" and not args[0] > 0:
        raise ValueError(f"{where}: log_uniform needs low > 0, got {args}")
    if family in ("normal", "truncated_normal") and not args[1] > 0:
        raise ValueError(f"{where}: {family} needs scale > 0, got {args}")
    if family == "truncated_normal" and not args[2] < args[3]:
        raise ValueError(f"{where}: truncated_normal needs low < high, got {args}")
    out = {family: args}
    if scale is not None:
        out["scale"] = scale
    return out


def prior_support(spec: dict, fov: float = 1.0, amp: float = 1.0) -> tuple:
    """``(low, high)`` of a checked prior spec, scaled."""
    family = next(k for k in spec if k != "scale")
    lo, hi = PRIOR_FAMILIES[family][2](spec[family])
    s = {"fov": fov, "amp": amp}.get(spec.get("scale"), 1.0)
    return lo * s, hi * s


def build_prior(spec: dict, dtype=tf.float32, fov: float = 1.0, amp: float = 1.0):
    """The ``tfd.Distribution`` of a checked prior spec (arguments times its scale)."""
    family = next(k for k in spec if k != "scale")
    s = {"fov": fov, "amp": amp}.get(spec.get("scale"), 1.0)
    return PRIOR_FAMILIES[family][1]([v * s for v in spec[family]], dtype)


def check_support(prior: dict, prof, pname: str, where: str):
    """``ValueError`` naming ``where`` if ``prior`` reaches outside the support that the
    profile declares for ``pname`` (positive, non-negative, upper bound)."""
    lo, hi = prior_support(prior)
    if pname in prof.positive_params and lo < 0:
        raise ValueError(f"{where}: {pname} of {prof.name} must be positive, but the prior "
                         f"{prior} reaches {lo}")
    if pname in prof.nonnegative_params and lo < 0:
        raise ValueError(f"{where}: {pname} of {prof.name} must be >= 0, but the prior "
                         f"{prior} reaches {lo}")
    bound = prof.upper_bounds.get(pname)
    if bound is not None and "scale" not in prior and hi > bound:
        raise ValueError(f"{where}: {pname} of {prof.name} must be <= {bound}, but the prior "
                         f"{prior} reaches {hi}")


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One profile of the model (see the module docs): ``profile`` (registered name),
    ``settings`` (static constructor settings), ``priors``, ``fixed``, ``tied``."""

    profile: str
    settings: Mapping = dataclasses.field(default_factory=dict)
    priors: Mapping = dataclasses.field(default_factory=dict)
    fixed: Mapping = dataclasses.field(default_factory=dict)
    tied: Mapping = dataclasses.field(default_factory=dict)

    @classmethod
    def from_any(cls, item, where: str) -> "ComponentSpec":
        """A ComponentSpec from itself, a profile name or a dict of the fields."""
        if isinstance(item, cls):
            return item
        if isinstance(item, str):
            item = {"profile": item}
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a profile name or a component dict, got {item!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(item) - fields)
        if unknown or "profile" not in item:
            raise ValueError(f"{where} must have a 'profile' and only the keys {sorted(fields)}"
                             f"; got {sorted(item)}")
        for key in ("settings", "priors", "fixed", "tied"):
            if not isinstance(item.get(key, {}), Mapping):
                raise ValueError(f"{where}.{key} must be a dict, got {item[key]!r}")
        name = str(item["profile"]).upper()
        if name not in PROFILE_REGISTRY:
            raise ValueError(f"{where}.profile: unknown profile {item['profile']!r}; known "
                             f"profiles: {sorted(PROFILE_REGISTRY)}")
        return cls(name, dict(item.get("settings", {})), dict(item.get("priors", {})),
                   dict(item.get("fixed", {})), dict(item.get("tied", {})))

    def make_profile(self, dtype, where: str):
        """The profile instance (``ValueError`` naming ``where`` for bad settings)."""
        try:
            return get_profile(self.profile, dtype=dtype, **self.settings)
        except TypeError as exc:
            raise ValueError(f"{where}.settings {dict(self.settings)} do not fit "
                             f"{self.profile}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}.settings: {exc}") from None

    def to_dict(self) -> dict:
        out = {"profile": self.profile}
        for key in ("settings", "priors", "fixed", "tied"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        return out


def _shorthand_component(profile, settings):
    # multipoles are centred on the main deflector
    tied = ({"center_x": "lens.0.center_x", "center_y": "lens.0.center_y"}
            if profile == "MULTIPOLE" else None)
    return ComponentSpec(profile, dict(settings), tied=tied or {})


# The lens-model shorthands: name -> components, from the one table of
# tfstronglens.profiles.shorthands. The "+m..." variants add circular multipoles.
LENS_SHORTHANDS = {name: tuple(_shorthand_component(p, s) for p, s in comps)
                   for name, comps in LENS_SHORTHAND_COMPONENTS.items()}


def expand_lens(lens, where: str = "lens") -> tuple:
    """A shorthand name or a list of components -> a tuple of :class:`ComponentSpec`."""
    if isinstance(lens, str):
        key = lens.lower()
        if key not in LENS_SHORTHANDS:
            raise ValueError(f"{where} must be one of {sorted(LENS_SHORTHANDS)} or a list of "
                             f"components, got {lens!r}")
        return LENS_SHORTHANDS[key]
    if not isinstance(lens, (list, tuple)) or not lens:
        raise ValueError(f"{where} must be a shorthand name or a non-empty list of "
                         f"components, got {lens!r}")
    comps = tuple(ComponentSpec.from_any(c, f"{where}[{i}]") for i, c in enumerate(lens))
    for i, c in enumerate(comps):
        if not issubclass(PROFILE_REGISTRY[c.profile], MassProfile):
            raise ValueError(f"{where}[{i}].profile: {c.profile} is not a mass profile")
    return comps


@dataclasses.dataclass(frozen=True)
class SubhaloSpec:
    """``count`` candidate subhalos of ``profile`` with a log-uniform mass prior over
    ``mass_range`` (M_sun) and a uniform position prior over ``region`` (arcsec; default
    the field of view)."""

    count: int = 0
    profile: str = "TNFW"
    mass_range: tuple = (1e7, 1e11)
    region: tuple | None = None

    def to_dict(self) -> dict:
        out = {"count": self.count, "profile": self.profile,
               "mass_range": list(self.mass_range)}
        if self.region is not None:
            out["region"] = list(self.region)
        return out


_SOURCES = ("sersic", "pixelated", "vae", "rim")


def expand_source(source, where: str = "source"):
    """A source name of :data:`_SOURCES` (kept as the name: ``vae``/``rim`` need the
    caller's trained models) or a list of light-profile components -> a tuple of
    :class:`ComponentSpec`."""
    if isinstance(source, str):
        if source not in _SOURCES:
            raise ValueError(f"{where} must be one of {_SOURCES} or a list of components, got "
                             f"{source!r}")
        return source
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError(f"{where} must be one of {_SOURCES} or a non-empty list of "
                         f"components, got {source!r}")
    comps = tuple(ComponentSpec.from_any(c, f"{where}[{i}]") for i, c in enumerate(source))
    for i, c in enumerate(comps):
        if issubclass(PROFILE_REGISTRY[c.profile], MassProfile):
            raise ValueError(f"{where}[{i}].profile: {c.profile} is not a light profile")
    return comps


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A whole lens model as data (see the module docs).

    Fields: ``lens`` (components), ``source`` (``"sersic"``, ``"pixelated"``, ``"vae"`` or
    ``"rim"``, as ``fit --source``, or a list of light-profile components such as
    ``[{"profile": "SERSIC_ELLIPSE"}, {"profile": "SERSIC_ELLIPSE", "priors": ...}]`` or
    ``[{"profile": "PIXELATED", "settings": {"num_pix": 40, "pixel_scale": 0.03}}]``),
    ``lens_light`` (components; ``()`` for none),
    ``subhalos`` (:class:`SubhaloSpec`), ``z_lens`` and ``z_source`` (required with
    subhalos), ``priors`` and ``fixed`` by full parameter name (``"lens.0.theta_E"``).
    """

    lens: tuple
    source: str | tuple = "sersic"
    lens_light: tuple = ()
    subhalos: SubhaloSpec = SubhaloSpec()
    z_lens: float | None = None
    z_source: float | None = None
    priors: Mapping = dataclasses.field(default_factory=dict)
    fixed: Mapping = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d) -> "ModelSpec":
        """Check and build; every error names the offending field."""
        check_fields(d, cls, "model spec")
        if "lens" not in d:
            raise ValueError("model spec: 'lens' is required (a shorthand such as 'sie+shear' "
                             "or a list of components)")
        lens = expand_lens(d["lens"], "lens")
        light = d.get("lens_light") or ()
        if light == "sersic":
            light = ("SERSIC_ELLIPSE",)
        if isinstance(light, str) or not isinstance(light, (list, tuple)):
            raise ValueError(f"lens_light must be null, 'sersic' or a list of components, got "
                             f"{light!r}")
        light = tuple(ComponentSpec.from_any(c, f"lens_light[{i}]") for i, c in enumerate(light))
        source = expand_source(d.get("source", "sersic"))
        sub = d.get("subhalos") or {}
        if isinstance(sub, numbers.Integral) and not isinstance(sub, bool):
            sub = {"count": int(sub)}
        check_fields(sub, SubhaloSpec, "subhalos")
        count = sub.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"subhalos.count must be an integer >= 0, got {count!r}")
        subhalos = SubhaloSpec(int(count), str(sub.get("profile", "TNFW")).upper(),
                               tuple(sub.get("mass_range", (1e7, 1e11))),
                               None if sub.get("region") is None else tuple(sub["region"]))
        z = {}
        for key in ("z_lens", "z_source"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                  or not v > 0):
                raise ValueError(f"{key} must be a positive redshift, got {v!r}")
            z[key] = None if v is None else float(v)
        if subhalos.count and (z["z_lens"] is None or z["z_source"] is None):
            raise ValueError("subhalos: a model with subhalos needs z_lens and z_source (their "
                             "masses are physical, M_sun)")
        if z["z_lens"] is not None and z["z_source"] is not None \
                and not z["z_source"] > z["z_lens"]:
            raise ValueError(f"z_source must exceed z_lens, got z_lens={z['z_lens']}, "
                             f"z_source={z['z_source']}")
        for key in ("priors", "fixed"):
            if not isinstance(d.get(key, {}), Mapping):
                raise ValueError(f"{key} must be a dict by full parameter name, got {d[key]!r}")
        priors = {k: check_prior(v, f"priors[{k!r}]") for k, v in d.get("priors", {}).items()}
        return cls(lens, source, light, subhalos, z["z_lens"], z["z_source"], priors,
                   dict(d.get("fixed", {})))

    def to_dict(self) -> dict:
        out = {"lens": [c.to_dict() for c in self.lens],
               "source": (self.source if isinstance(self.source, str)
                          else [c.to_dict() for c in self.source]),
               "lens_light": [c.to_dict() for c in self.lens_light],
               "subhalos": self.subhalos.to_dict()}
        for key in ("z_lens", "z_source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("priors", "fixed"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        return out

    @classmethod
    def from_json(cls, path: str) -> "ModelSpec":
        try:
            with open(path) as f:
                d = json.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read the model spec {path!r}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"the model spec {path!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def to_json(self, path: str, overwrite: bool = False):
        """Write the spec as JSON (atomically: never half-written)."""
        from ..io._atomic import atomic_output

        with atomic_output(path, overwrite=overwrite) as tmp:
            with open(tmp, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=1) + "\n")

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`~tfstronglens.inference.LensModel`; a named
        ``source`` is left to the caller (``vae``/``rim`` need its trained models), a list
        of components is included."""
        kw = dict(lens=list(self.lens), lens_light=list(self.lens_light) or None,
                  num_subhalos=self.subhalos.count, subhalo_profile=self.subhalos.profile,
                  subhalo_mass_range=self.subhalos.mass_range,
                  subhalo_region=self.subhalos.region, priors=dict(self.priors),
                  fixed=dict(self.fixed))
        if not isinstance(self.source, str):
            kw["source"] = list(self.source)
        if self.z_lens is not None:
            kw["z_lens"] = self.z_lens
        if self.z_source is not None:
            kw["z_source"] = self.z_source
        return kw
