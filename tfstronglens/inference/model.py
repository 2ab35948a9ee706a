r"""The probabilistic lens model: named priors, the image likelihood, a flat unconstrained
parameterisation for optimisers and samplers.

A :class:`LensModel` turns a lens configuration (main deflector, optional lens light,
``N`` candidate subhalos, a source) and an :class:`~tfstronglens.observation.Observation`
into

* a ``tfp.distributions.JointDistributionNamed`` prior over named scalar parameters
  (``"lens.0.theta_E"``, ``"lens.1.gamma1"``, ``"lens_light.0.R_sersic"``,
  ``"subhalo.0.mass"``, ``"source.0.amp"``, ``"source.z.3"``, ...);
* the image likelihood ``p(data | params)`` (the Observation's background + Poisson noise
  in its Gaussian approximation, or a given per-pixel noise map);
* a bijection from ``R^D`` to the constrained parameters (each parameter's default
  event-space bijector), with the log-density in unconstrained coordinates including
  ``log|det J|``: what MAP, VI and HMC work with.

Every density is batched over leading dimensions of the parameters (starts, chains,
samples) and runs under ``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from ..lensing.simulator import Simulator
from ..observation.cosmology import LensCosmology
from ..observation.observation import Observation
from ..observation.subhalos import subhalo_lens_kwargs, unstack_lens_kwargs
from ..profiles.base import LightProfile, get_profile
from ..profiles.pixelated_source import PixelatedSource
from ._util import as_seed, positive_float, positive_int
from .spec import (LENS_SHORTHANDS, ROLE_PRIORS, ComponentSpec, build_prior, check_prior,
                   check_support, expand_lens, log_uniform)

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["LensModel", "Objective", "ParameterBlock", "build_model", "log_uniform",
           "run_in_batches",
           "LENS_MODELS", "SOURCE_MODELS", "LENS_LIGHT_MODELS", "SUBHALO_PROFILES"]

LENS_MODELS = tuple(LENS_SHORTHANDS)
SOURCE_MODELS = ("sersic", "pixelated")
LENS_LIGHT_MODELS = ("sersic",)
SUBHALO_PROFILES = ("TNFW", "POINT_MASS", "PJAFFE", "SIS")
# subhalo profiles whose parameters depend on the main deflector (tidal truncation)
_HOST_DEPENDENT = ("TNFW", "PJAFFE", "SIS")
_OBJECTIVES = ("posterior", "likelihood")

# parameters that stay at the profile's default unless a prior is given for them
_FIXED_BY_DEFAULT = {("SHEAR", "ra_0"), ("SHEAR", "dec_0"), ("PIXELATED", "amp"),
                     ("PIXELATED", "center_x"), ("PIXELATED", "center_y"),
                     ("PIXELATED", "phi_G")}


@dataclasses.dataclass(frozen=True)
class ParameterBlock:
    """One free parameter's block of the flat vector ``x``: its ``name``, ``size`` (number of
    unconstrained coordinates), constrained ``event_shape`` and ``offset`` in ``x``."""

    name: str
    size: int
    event_shape: tuple
    offset: int


def run_in_batches(fn, x2, size: int):
    """``fn`` on the rows of ``x2 [B, D]`` in chunks of exactly ``size`` rows (the last
    padded by repeating its first row), the outputs (a tensor or a tuple of tensors with
    leading dimension ``size``) concatenated and trimmed to ``B`` rows: one compiled
    batch shape serves any ``B``. The package's one padding mechanism
    (``compile_batch_size``, :func:`~tfstronglens.inference.map.render_batched`)."""
    B = x2.shape[0]
    chunks = []
    for lo in range(0, B, size):
        part = x2[lo:lo + size]
        n = part.shape[0]
        if n < size:
            part = tf.concat([part, tf.repeat(part[:1], size - n, axis=0)], axis=0)
        out = fn(part)
        chunks.append(tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n])
    if isinstance(chunks[0], tuple):
        return tuple(tf.concat(parts, 0) for parts in zip(*chunks))
    return tf.concat(chunks, 0)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The model's log density in unconstrained coordinates with the data bound once:
    what MAP, Laplace, VI, HMC and detection evaluate (:meth:`LensModel.objective`).

    ``kind`` is ``"posterior"`` (``log p~(x | data)``, with prior and Jacobian) or
    ``"likelihood"`` (``log L`` alone). Every method takes ``x [B, D]``; the compiled ones
    (:meth:`value`, :meth:`value_and_gradient`, :meth:`render`, :meth:`prior_hessian`) are
    traced once per model and kind (and per batch size, unless the model has a
    ``compile_batch_size``, to which batches are padded or chunked);
    :meth:`log_density` is the plain function for use inside a caller's own
    ``tf.function`` (e.g. an optimiser's compiled loop or an MCMC kernel).
    """

    model: "LensModel"
    data: tf.Tensor
    kind: str = "posterior"

    def log_density(self, x):
        """``[B, D] -> [B]``, uncompiled (traceable)."""
        return self.model.log_density(x, self.data, self.kind)

    def target_log_prob(self, x):
        """``[..., D] -> [...]`` (any leading dimensions, e.g. MCMC chains), uncompiled:
        the ``target_log_prob_fn`` of a ``tfp.mcmc`` kernel."""
        x = tf.convert_to_tensor(x, self.model.dtype)
        batch = tf.shape(x)[:-1]
        val = self.log_density(tf.reshape(x, [-1, self.model.num_params]))
        return tf.reshape(val, batch)

    def value(self, x):
        """``[B, D] -> [B]``, compiled."""
        return self.model._padded("value", x, self.data, self.kind)

    def value_and_gradient(self, x):
        """``([B], [B, D])``, compiled."""
        return self.model._padded("grad", x, self.data, self.kind)

    def render(self, x):
        """Noiseless model images ``[B, N, N]`` at ``x``, compiled."""
        return self.model._padded("render", x, self.data, None)

    def prior_hessian(self, x):
        """Hessian ``[B, D, D]`` of ``-(log prior + log|J|)`` at ``x`` (block diagonal: see
        the model), compiled."""
        return self.model._padded("prior_hessian", x, self.data, None)


class _Param:
    """One entry of the joint distribution (a free parameter). Its unconstrained shape comes
    from the joint prior's event-space bijector (set in :meth:`LensModel._build_params`)."""

    def __init__(self, name, dist, target):
        self.name = name
        self.dist = dist
        self.target = target  # (kind, index, pname) or ("source_z", k, None)
        self.event_shape = tuple(dist.event_shape.as_list())
        self.unc_event_shape = None
        self.size = None

    def set_unconstrained_shape(self, shape):
        self.unc_event_shape = tuple(tf.TensorShape(shape).as_list())
        self.size = int(np.prod(self.unc_event_shape, dtype=np.int64))

    def __repr__(self):
        return f"_Param({self.name!r}, {self.dist.name}, event_shape={self.event_shape})"


def _as_profile(spec, base, what, dtype):
    if isinstance(spec, str):
        return get_profile(spec, dtype=dtype)
    if not isinstance(spec, base):
        raise ValueError(f"{what} must be a {base.__name__} instance or a name, got {spec!r}")
    if spec.dtype != dtype:
        raise ValueError(f"{what} has dtype {spec.dtype.name}, the observation "
                         f"{dtype.name}; create it with the same dtype")
    return spec


class LensModel:
    r"""A strong-lens model: named priors, image likelihood and unconstrained coordinates.

    #### Components and parameter names

    * main lens, ``lens="sie+shear"`` or ``"epl+shear"``: ``lens.0.theta_E``,
      (``lens.0.gamma`` for EPL), ``lens.0.e1``, ``lens.0.e2``, ``lens.0.center_x``,
      ``lens.0.center_y``, ``lens.1.gamma1``, ``lens.1.gamma2`` (the shear's ``ra_0,
      dec_0`` are fixed at 0: they only add a constant deflection, degenerate with the
      source position);
    * lens light, ``lens_light="sersic"`` (elliptical Sersic) or ``None``:
      ``lens_light.0.amp, R_sersic, n_sersic, e1, e2, center_x, center_y``;
    * ``num_subhalos`` candidate subhalos (static number): ``subhalo.k.mass`` [M_sun],
      ``subhalo.k.center_x``, ``subhalo.k.center_y`` [arcsec];
    * the source, ``source=``

      - ``"sersic"``: ``source.0.amp, R_sersic, n_sersic, e1, e2, center_x, center_y``;
      - ``"pixelated"``: a :class:`~tfstronglens.profiles.PixelatedSource` of
        ``source_num_pix^2`` pixels of ``source_pixel_scale`` arcsec centred on (0, 0),
        one parameter ``source.0.image`` of event shape ``[n, n]`` (surface brightness,
        e-/s/arcsec^2), with prior ``source_prior="gaussian"`` (independent
        ``Normal(0, s)`` pixels, ``s = source_prior_scale``) or ``"smooth"`` (a Gaussian
        Markov random field: precision ``(eps I + lambda G^T G) / s^2`` with ``G`` the
        forward-difference gradient of the image, ``lambda = source_smoothness``,
        ``eps = 1e-2``: neighbouring pixels are correlated over ``~sqrt(lambda)``
        pixels and the marginal scale is ``~s / sqrt(eps + 4 lambda)``);
      - a list of components (:class:`~tfstronglens.inference.spec.ComponentSpec`, their
        dicts or registered light-profile names, e.g. ``["SERSIC_ELLIPSE",
        {"profile": "SERSIC_ELLIPSE", "priors": {"R_sersic": {...}}}]``): their light adds,
        parameters ``source.i.<name>``; a ``PIXELATED`` component (with ``settings``
        ``num_pix``, ``pixel_scale``) must be the only one and takes the prior above;
      - a :class:`~tfstronglens.profiles.LightProfile` instance, e.g. a VAE decoder
        (``tfstronglens.models.VAESource``). A vector parameter ``z``
        (``param_event_ndims["z"] == 1``) of length ``K`` (the profile's
        ``latent_dim`` attribute, or ``latent_dim=``) gets the prior ``N(0, I)`` and the
        names ``source.z.0 .. source.z.{K-1}``; its other parameters are named
        ``source.0.<name>`` (default priors exist for ``amp``, ``center_x``,
        ``center_y``, ``R_sersic``, ``n_sersic``, ``e1``, ``e2``; give others in
        ``priors`` or ``fixed``; parameters with a profile default and no prior stay at
        the default).

    #### Default priors (override any by name with ``priors={name: tfd.Distribution}``)

    With ``F = num_pix * pixel_scale`` the field of view (arcsec) and ``A = amp_scale``
    (e-/s/arcsec^2; :func:`build_model` sets it from the data):

    ============================  ==============================================
    ``lens.0.theta_E``            ``Uniform(0.05 F, 0.5 F)``
    ``lens.0.gamma`` (EPL)        ``Uniform(1.5, 2.5)``
    ``*.e1, *.e2``                ``TruncatedNormal(0, 0.2, -0.45, 0.45)`` (``q >= 0.22``)
    ``lens.0.center_x/y``         ``Normal(0, 0.1)``
    ``lens.1.gamma1/2``           ``Normal(0, 0.05)``
    ``lens_light.0.amp``          ``LogUniform(1e-3 A, 1e2 A)``
    ``lens_light.0.R_sersic``     ``LogUniform(0.02 F, 0.5 F)``
    ``lens_light.0.center_x/y``   ``Normal(0, 0.1)``
    ``source.0.amp``              ``LogUniform(1e-3 A, 1e3 A)``
    ``source.0.R_sersic``         ``LogUniform(0.005 F, 0.25 F)``
    ``source.0.center_x/y``       ``Normal(0, 0.25)``
    ``*.n_sersic``                ``Uniform(0.5, 6)``
    ``source.z.k``                ``Normal(0, 1)``
    ``subhalo.k.mass``            ``LogUniform(m_min, m_max)`` (``subhalo_mass_range``,
                                  default ``1e7 - 1e11`` M_sun)
    ``subhalo.k.center_x/y``      ``Uniform`` over ``subhalo_region = (x_min, x_max, y_min,
                                  y_max)`` (default: the field of view)
    ============================  ==============================================

    ``fixed={name: value}`` holds any parameter at a value instead (it leaves the joint
    distribution).

    #### Subhalos: mass definition and profile

    ``subhalo.k.mass`` is ``M200c`` in physical M_sun: the mass inside the radius within
    which the mean density is 200 times the critical density at ``z_lens``
    (:meth:`LensCosmology.nfw_physical2angle`, lenstronomy's ``M200``). With
    ``subhalo_profile="TNFW"`` (default) it is rendered as in
    :func:`~tfstronglens.observation.subhalo_lens_kwargs`: an NFW with the median
    Duffy et al. (2008) ``c(M200c, z_lens)`` (``Rs``, ``alpha_Rs`` in arcsec through
    ``lens_cosmology``), truncated at the tidal radius in an isothermal host whose
    Einstein radius is ``lens.0.theta_E`` and whose centre is the lens centre, with the
    projected distance as the 3D distance (Tormen et al. 1998). With
    ``"POINT_MASS"`` the mass is a point mass of Einstein radius
    ``sqrt(M / (pi Sigma_crit))``. With ``"PJAFFE"`` (or ``"SIS"``) it is the *total*
    mass of a truncated-SIS pseudo-Jaffe subhalo (of an SIS, its mass inside the tidal
    radius) with tidal radius ``sqrt(b theta_E)``, as the gravitational-imaging detections
    state their masses (:func:`~tfstronglens.observation.subhalo_lens_kwargs`).
    ``lens_cosmology`` defaults to ``LensCosmology(z_lens, z_source, cosmology)`` (0.5, 2.0,
    Planck18).

    #### Likelihood

    Pixels are independent Gaussians, ``data_i ~ Normal(model_i, sigma_i)``, summed over
    ``mask`` (all pixels by default), with

    * ``noise_map=None``: ``sigma_i^2 = background_rms^2 + max(model_i, 0) / T`` from the
      Observation (background plus the source's Poisson noise, Gaussian approximation;
      see :meth:`Observation.likelihood`), model-dependent, or
    * ``noise_map`` (``[N, N]``, e-/s): a fixed per-pixel ``sigma_i``.

    ``log_likelihood`` includes the ``-log sigma_i - log(2 pi)/2`` terms.

    #### Unconstrained coordinates

    ``param_names`` (``D`` names; an event-shaped parameter such as ``source.0.image``
    contributes ``name.0 .. name.{size-1}``, row-major) orders the flat vector
    ``x in R^D``. :attr:`bijector` maps ``x`` to the dict of constrained parameters,
    each block through its prior's ``experimental_default_event_space_bijector()``
    (identity for Normal, scaled sigmoid for Uniform/TruncatedNormal, ``exp o sigmoid``
    for the log-uniforms), and

        log p~(x | data) = log p(theta(x)) + log L(data | theta(x)) + log|det d theta/dx|

    is :meth:`unconstrained_log_posterior`, batched over the leading dimensions of ``x``.
    :meth:`to_flat` and :meth:`from_flat` convert between the two.

    Args:
      observation: the :class:`~tfstronglens.observation.Observation` (pixels, PSF, noise).
      lens: ``"sie+shear"`` (default) or ``"epl+shear"``.
      source: ``"sersic"`` (default), ``"pixelated"``, a list of light-profile components or
        a LightProfile instance.
      lens_light: ``None`` (default) or ``"sersic"`` (or a LightProfile instance).
      num_subhalos: number of candidate subhalos (int >= 0).
      subhalo_profile: ``"TNFW"`` (default), ``"POINT_MASS"``, ``"PJAFFE"`` or ``"SIS"``.
      subhalo_mass_range: ``(m_min, m_max)`` in M_sun for the log-uniform mass prior.
      subhalo_region: ``(x_min, x_max, y_min, y_max)`` arcsec for the position prior.
      subhalo_aperture: radius (arcsec, default 0.5) of the reported projected subhalo mass
        ``subhalo.k.mass_aperture`` (:meth:`subhalo_masses`).
      lens_cosmology, z_lens, z_source, cosmology: the lens cosmology (subhalos only).
      priors: dict name -> ``tfd.Distribution`` overriding defaults (scalar event shape,
        the model's dtype).
      fixed: dict name -> value (held fixed).
      noise_map: per-pixel noise ``sigma`` [N, N] (e-/s) replacing the Observation's noise.
      mask: ``[N, N]`` bool/0-1 array of pixels in the likelihood.
      data: optional data image ``[N, N]`` (e-/s) used when a method's ``data`` is None.
      supersample: sub-pixels per side for rendering (default 2).
      amp_scale: brightness scale ``A`` of the amplitude priors (e-/s/arcsec^2).
      source_num_pix, source_pixel_scale, source_prior, source_prior_scale,
        source_smoothness: the pixelated source (see above); ``source_pixel_scale``
        defaults to ``0.5 F / source_num_pix``, ``source_prior_scale`` to ``A``.
      latent_dim: length of a profile source's ``z`` when the profile has no
        ``latent_dim`` attribute.
      compile_batch_size: if set, every compiled evaluation (MAP, VI, Laplace, detection)
        is padded/chunked to batches of exactly this many points, so that XLA compiles
        the value-and-gradient once instead of once per batch size (compilation takes tens
        of seconds on a CPU). Default ``None``: compile for each batch size used.
      jit_compile: compile the model's evaluations with XLA (default True). ``False`` runs
        them as plain TensorFlow graphs: no XLA compilation (seconds instead of tens of
        seconds to start) but slower per evaluation; for short runs and tests.

    #### Example

    >>> obs = Observation(40, 0.05, 2000.0, background_rms=0.05, psf=GaussianPSF(0.1))
    >>> model = LensModel(obs, "sie+shear", "sersic", amp_scale=10.0)
    >>> truth = model.sample_prior(1, seed=1)
    >>> data = model.simulate(truth, seed=2)[0]
    >>> model.param_names[:3]       # ['lens.0.theta_E', 'lens.0.e1', 'lens.0.e2']
    >>> x = model.to_flat(truth)    # [1, D]
    >>> model.unconstrained_log_posterior(x, data)
    """

    def __init__(self, observation: Observation, lens="sie+shear", source="sersic",
                 lens_light=None, *, num_subhalos: int = 0, subhalo_profile: str = "TNFW",
                 subhalo_mass_range=(1e7, 1e11), subhalo_region=None,
                 subhalo_aperture: float = 0.5,
                 lens_cosmology: LensCosmology | None = None, z_lens: float = 0.5,
                 z_source: float = 2.0, cosmology=None, priors: dict | None = None,
                 fixed: dict | None = None, noise_map=None, mask=None, data=None,
                 supersample: int = 2, amp_scale: float = 1.0, source_num_pix: int = 32,
                 source_pixel_scale: float | None = None, source_prior: str = "gaussian",
                 source_prior_scale: float | None = None, source_smoothness: float = 1.0,
                 latent_dim: int | None = None, compile_batch_size: int | None = None,
                 jit_compile: bool = True):
        self._config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if not isinstance(observation, Observation):
            raise ValueError(f"observation must be an Observation, got {observation!r}")
        self.observation = observation
        self.dtype = observation.dtype
        dt = self.dtype
        self.num_pix = observation.num_pix
        fov = observation.num_pix * observation.pixel_scale
        self.field_of_view = fov
        self.amp_scale = positive_float(amp_scale, "amp_scale")
        self.num_subhalos = positive_int(num_subhalos, "num_subhalos", minimum=0)

        # ------------------------------------------------------ components
        self.lens_model = lens.lower() if isinstance(lens, str) else "custom"
        self.lens_components = expand_lens(lens, "lens")
        n_main = len(self.lens_components)
        lens_profiles = [c.make_profile(dt, f"lens[{i}]")
                         for i, c in enumerate(self.lens_components)]

        self.subhalo_profile = str(subhalo_profile).upper()
        if self.subhalo_profile not in SUBHALO_PROFILES:
            raise ValueError(f"subhalo_profile must be one of {SUBHALO_PROFILES}, got "
                             f"{subhalo_profile!r}")
        if (self.num_subhalos and self.subhalo_profile in _HOST_DEPENDENT
                and "theta_E" not in lens_profiles[0].param_names):
            raise ValueError(f"{self.subhalo_profile} subhalos are truncated in the tidal "
                             f"field of the main "
                             f"deflector lens[0], which needs a theta_E; "
                             f"{lens_profiles[0].name} has none")
        sub_prof = get_profile(self.subhalo_profile, dtype=dt)
        lens_profiles += [sub_prof] * self.num_subhalos
        self.lens_cosmology = None
        if self.num_subhalos:
            if lens_cosmology is None:
                lens_cosmology = LensCosmology(z_lens, z_source, cosmology)
            elif not isinstance(lens_cosmology, LensCosmology):
                raise ValueError(f"lens_cosmology must be a LensCosmology, got "
                                 f"{lens_cosmology!r}")
            self.lens_cosmology = lens_cosmology
        try:
            m_min, m_max = (float(v) for v in subhalo_mass_range)
        except (TypeError, ValueError):
            raise ValueError(f"subhalo_mass_range must be (m_min, m_max) in M_sun, got "
                             f"{subhalo_mass_range!r}") from None
        if not (0 < m_min < m_max and math.isfinite(m_max)):
            raise ValueError(f"subhalo_mass_range must satisfy 0 < m_min < m_max, got "
                             f"{subhalo_mass_range!r}")
        self.subhalo_mass_range = (m_min, m_max)
        if subhalo_region is None:
            subhalo_region = (-0.5 * fov, 0.5 * fov, -0.5 * fov, 0.5 * fov)
        try:
            region = tuple(float(v) for v in subhalo_region)
        except (TypeError, ValueError):
            region = ()
        if len(region) != 4 or not (region[0] < region[1] and region[2] < region[3]):
            raise ValueError(f"subhalo_region must be (x_min, x_max, y_min, y_max) with "
                             f"x_min < x_max and y_min < y_max, got {subhalo_region!r}")
        self.subhalo_region = region
        self.subhalo_aperture = positive_float(subhalo_aperture, "subhalo_aperture")

        # source
        self.latent_dim = 0
        self.source_components = ()
        if isinstance(source, (list, tuple)):
            srcs = self._source_component_profiles(source)
            src = srcs[0]
            self.source_model = "components"
        elif isinstance(source, str):
            skey = source.lower()
            if skey not in SOURCE_MODELS:
                raise ValueError(f"source must be one of {SOURCE_MODELS} or a LightProfile "
                                 f"instance, got {source!r}")
            if skey == "sersic":
                src = get_profile("SERSIC_ELLIPSE", dtype=dt)
            else:
                n_src = positive_int(source_num_pix, "source_num_pix")
                scale = (0.5 * fov / n_src if source_pixel_scale is None
                         else positive_float(source_pixel_scale, "source_pixel_scale"))
                src = PixelatedSource(n_src, scale, dtype=dt)
            self.source_model = skey
        else:
            src = _as_profile(source, LightProfile, "source", dt)
            self.source_model = "rim" if getattr(src, "derived_from_data", False) else "profile"
            if src.param_event_ndims.get("z", 0) == 1:
                k = getattr(src, "latent_dim", None) or latent_dim
                self.latent_dim = positive_int(k, "latent_dim") if k is not None else None
                if self.latent_dim is None:
                    raise ValueError(f"the source profile {type(src).__name__} has a latent "
                                     "vector z but no latent_dim attribute; give latent_dim=")
        if not self.source_components:
            srcs = [src]
        other_event = [n for n, k in src.param_event_ndims.items()
                       if k and not (n == "z" and self.latent_dim) and
                       not isinstance(src, PixelatedSource)]
        if other_event:
            raise ValueError(f"source parameters {other_event} have event dimensions; only a "
                             "vector 'z' (latent) or a PixelatedSource image is supported")
        if lens_light is None:
            self.lens_light_components = ()
            light_profiles = []
        elif isinstance(lens_light, str):
            if lens_light.lower() not in LENS_LIGHT_MODELS:
                raise ValueError(f"lens_light must be None, one of {LENS_LIGHT_MODELS}, a list "
                                 f"of components or a LightProfile instance, got {lens_light!r}")
            self.lens_light_components = (ComponentSpec("SERSIC_ELLIPSE"),)
            light_profiles = [get_profile("SERSIC_ELLIPSE", dtype=dt)]
        elif isinstance(lens_light, (list, tuple)):
            self.lens_light_components = tuple(
                ComponentSpec.from_any(c, f"lens_light[{i}]") for i, c in enumerate(lens_light))
            light_profiles = [c.make_profile(dt, f"lens_light[{i}]")
                              for i, c in enumerate(self.lens_light_components)]
            for i, prof in enumerate(light_profiles):
                if not isinstance(prof, LightProfile):
                    raise ValueError(f"lens_light[{i}].profile: {prof.name} is not a light "
                                     "profile")
        else:
            self.lens_light_components = ()
            light_profiles = [_as_profile(lens_light, LightProfile, "lens_light", dt)]
        grid = observation.grid(positive_int(supersample, "supersample"))
        if self.source_model == "rim":
            if light_profiles:
                raise ValueError("source=RIMSource() reconstructs the source from the data, "
                                 "which must hold no lens light: fit without lens_light")
            kernel = (np.ones((1, 1)) if observation.psf is None
                      else observation.psf.kernel(observation.pixel_scale))
            self._rim_psf = tf.constant(kernel / kernel.sum(), dt)
            configured = [p.name for p in lens_profiles if p.get_config() !=
                          get_profile(p.name, dtype=p.dtype).get_config()]
            if configured:
                raise ValueError(f"source=RIMSource() names its lens profiles without settings; "
                                 f"{configured} have non-default settings (e.g. a multipole's "
                                 "order): fit them with another source")
            srcs = [src.bind(grid, [p.name for p in lens_profiles], kernel.shape[-1])]
        self.simulator = Simulator(grid,
                                   lens=lens_profiles, source=srcs, lens_light=light_profiles,
                                   psf=observation.psf, jit_compile=bool(jit_compile))
        self._components = {"lens": lens_profiles[:n_main], "lens_light": light_profiles,
                            "source": srcs}

        # ------------------------------------------------------- noise, mask, data
        n = self.num_pix
        self.noise_map = None
        if noise_map is not None:
            nm = np.asarray(noise_map, dtype=np.float64)
            if nm.shape != (n, n) or not np.all(np.isfinite(nm)) or not np.all(nm > 0):
                raise ValueError(f"noise_map must be a finite, positive [{n}, {n}] array, got "
                                 f"shape {nm.shape}" + ("" if nm.shape != (n, n) else
                                                        f" with min {nm.min()!r}"))
            self.noise_map = tf.constant(nm, dt)
        self.mask = None
        if mask is not None:
            mk = np.asarray(mask)
            if mk.shape != (n, n) or mk.dtype.kind not in "biuf" or not np.all(np.isfinite(mk)):
                raise ValueError(f"mask must be a boolean [{n}, {n}] array, got shape "
                                 f"{mk.shape}, dtype {mk.dtype}")
            self.mask = tf.constant(mk.astype(bool).astype(dt.as_numpy_dtype))
        self._checked = None  # the last data tensor checked (see _check_data)
        self.data = None if data is None else self._check_data(data)

        # -------------------------------------------------------- parameters
        self._source_prior_args = (source_prior, source_prior_scale, source_smoothness)
        self._build_params(priors or {}, fixed or {})
        self._compiled = {}
        self._replaced = {}
        self.jit_compile = bool(jit_compile)
        self.compile_batch_size = (None if compile_batch_size is None else
                                   positive_int(compile_batch_size, "compile_batch_size"))

    def _source_component_profiles(self, source):
        """Profiles of a source given as a list of components (sets
        ``self.source_components``): light profiles; a pixelated one stands alone."""
        if not source:
            raise ValueError("source must be a non-empty list of components, got []")
        self.source_components = tuple(ComponentSpec.from_any(c, f"source[{i}]")
                                       for i, c in enumerate(source))
        profs = [c.make_profile(self.dtype, f"source[{i}]")
                 for i, c in enumerate(self.source_components)]
        for i, prof in enumerate(profs):
            if not isinstance(prof, LightProfile):
                raise ValueError(f"source[{i}].profile: {prof.name} is not a light profile")
            if prof.param_event_ndims and len(profs) > 1:
                raise ValueError(f"source[{i}].profile: a {prof.name} source must be the "
                                 "only source component")
            if "z" in prof.param_event_ndims:
                raise ValueError(f"source[{i}].profile: a latent-space source ({prof.name}) "
                                 "needs its trained decoder: pass a VAESource instance")
        return profs

    # ================================================================ parameters
    def _prior_from_spec(self, spec, shape=()):
        """The distribution of a checked prior spec; an event-shaped parameter (``shape``)
        gets independent draws of it (``tfd.Sample``)."""
        dist = build_prior(spec, self.dtype, fov=self.field_of_view, amp=self.amp_scale)
        return tfd.Sample(dist, list(shape)) if shape else dist

    def _default_prior(self, kind, prof, pname):
        """The profile's own default prior for ``pname``, else its role's
        (:data:`~tfstronglens.inference.spec.ROLE_PRIORS`), else None."""
        spec = prof.default_priors().get(pname) or ROLE_PRIORS[kind].get(pname)
        if spec is None:
            return None
        return self._prior_from_spec(spec, prof.param_event_shape(pname))

    def _pixelated_prior(self, prof):
        kind, scale, smooth = self._source_prior_args
        n = prof.num_pix
        s = self.amp_scale if scale is None else positive_float(scale, "source_prior_scale")
        dt = self.dtype
        if kind == "gaussian":
            return tfd.Independent(tfd.Normal(tf.zeros([n, n], dt), tf.constant(s, dt)), 2)
        if kind != "smooth":
            raise ValueError(f"source_prior must be 'gaussian' or 'smooth', got {kind!r}")
        lam = positive_float(smooth, "source_smoothness")
        d1 = np.eye(n, k=1) - np.eye(n)
        d1 = d1[:-1]                                  # [n-1, n] forward differences
        gx = np.kron(np.eye(n), d1)                   # along rows (x, columns index)
        gy = np.kron(d1, np.eye(n))
        prec = (1e-2 * np.eye(n * n) + lam * (gx.T @ gx + gy.T @ gy)) / s**2
        cov = np.linalg.inv(prec)
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))
        mvn = tfd.MultivariateNormalTriL(tf.zeros([n * n], dt), tf.constant(chol, dt))
        return tfd.TransformedDistribution(mvn, tfb.Reshape([n, n], [n * n]))

    def _all_names(self):
        """Every name that may be free or fixed: {name: (kind, index, pname)}."""
        names = {}
        for kind in ("lens", "lens_light", "source"):
            for i, prof in enumerate(self._components[kind]):
                for p in prof.param_names:
                    if kind == "source" and p == "z" and self.latent_dim:
                        for k in range(self.latent_dim):
                            names[f"source.z.{k}"] = ("source_z", k, None)
                        continue
                    names[f"{kind}.{i}.{p}"] = (kind, i, p)
        for k in range(self.num_subhalos):
            for p in ("mass", "center_x", "center_y"):
                names[f"subhalo.{k}.{p}"] = ("subhalo", k, p)
        return names

    def _build_params(self, priors, fixed):
        dt = self.dtype
        if not isinstance(priors, dict):
            raise ValueError(f"priors must be a dict name -> tfd.Distribution, got {priors!r}")
        if not isinstance(fixed, dict):
            raise ValueError(f"fixed must be a dict name -> value, got {fixed!r}")
        names = self._all_names()
        priors, fixed = dict(priors), dict(fixed)
        tied = {}
        for kind, comps in (("lens", self.lens_components),
                            ("lens_light", self.lens_light_components),
                            ("source", self.source_components)):
            for i, comp in enumerate(comps):
                for key, src in (("priors", comp.priors), ("fixed", comp.fixed),
                                 ("tied", comp.tied)):
                    for pname, value in src.items():
                        full = f"{kind}.{i}.{pname}"
                        if full not in names:
                            raise ValueError(f"{kind}[{i}].{key}: {comp.profile} has no "
                                             f"parameter {pname!r}; it has "
                                             f"{list(self._components[kind][i].param_names)}")
                        {"priors": priors, "fixed": fixed, "tied": tied}[key][full] = value
        for name, target in tied.items():
            if target not in names or target in tied:
                raise ValueError(f"{name} is tied to {target!r}, which is not an untied "
                                 f"parameter of this model")
            if name in priors or name in fixed:
                raise ValueError(f"{name} is tied to {target!r} and also given a prior or a "
                                 "fixed value")
        self.tied = tied
        for what, d in (("priors", priors), ("fixed", fixed)):
            unknown = sorted(set(d) - set(names))
            if unknown:
                raise ValueError(f"{what} has unknown parameter name(s) {unknown}; this model's "
                                 f"parameters are {list(names)}")
        both = sorted(set(priors) & set(fixed))
        if both:
            raise ValueError(f"parameter(s) {both} are given both a prior and a fixed value")
        self.fixed = {}
        for name, value in fixed.items():
            try:
                arr = np.asarray(value, dtype=dt.as_numpy_dtype)
            except (TypeError, ValueError):
                raise ValueError(f"fixed[{name!r}] must be a number, got {value!r}") from None
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"fixed[{name!r}] must be finite, got {value!r}")
            self.fixed[name] = tf.constant(arr)
        params = []
        for name, target in names.items():
            if name in self.fixed or name in tied:
                continue
            kind, i, pname = target
            if kind == "source" and self.source_model == "rim":
                continue  # reconstructed from the data at every evaluation
            shape = (self._components[kind][i].param_event_shape(pname)
                     if kind in self._components else ())
            if name in priors:
                dist = priors[name]
                if isinstance(dist, dict):  # a prior spec (see inference.spec)
                    spec = check_prior(dist, f"priors[{name!r}]")
                    if kind in self._components:
                        check_support(spec, self._components[kind][i], pname,
                                      f"priors[{name!r}]")
                    dist = self._prior_from_spec(spec, shape)
                if not isinstance(dist, tfd.Distribution):
                    raise ValueError(f"priors[{name!r}] must be a tfp.distributions."
                                     f"Distribution, got {dist!r}")
                if dist.dtype != dt:
                    raise ValueError(f"priors[{name!r}] has dtype {tf.as_dtype(dist.dtype).name}"
                                     f", the model {dt.name}")
                if tuple(dist.event_shape.as_list()) != shape or dist.batch_shape.rank != 0:
                    what = ("be a scalar distribution (batch and event shape [])" if not shape
                            else f"have batch shape [] and event shape {list(shape)}")
                    raise ValueError(f"priors[{name!r}] must {what}, got batch shape "
                                     f"{dist.batch_shape}, event shape {dist.event_shape}")
                params.append(_Param(name, dist, target))
                continue
            if kind == "source_z":
                params.append(_Param(name, tfd.Normal(tf.constant(0.0, dt),
                                                      tf.constant(1.0, dt)), target))
                continue
            if kind == "subhalo":
                if pname == "mass":
                    dist = log_uniform(*self.subhalo_mass_range, dtype=dt)
                else:
                    lo, hi = (self.subhalo_region[:2] if pname == "center_x"
                              else self.subhalo_region[2:])
                    dist = tfd.Uniform(tf.constant(lo, dt), tf.constant(hi, dt))
                params.append(_Param(name, dist, target))
                continue
            prof = self._components[kind][i]
            if isinstance(prof, PixelatedSource) and pname == "image":
                params.append(_Param(name, self._pixelated_prior(prof), target))
                continue
            has_default = pname in prof.defaults
            if (prof.name, pname) in _FIXED_BY_DEFAULT:
                continue
            dist = self._default_prior(kind, prof, pname)
            if dist is None:
                if has_default:
                    continue  # stays at the profile's default value
                raise ValueError(f"parameter {name!r} of {type(prof).__name__} has no default "
                                 "prior: give one in priors=, a value in fixed= or tie it")
            params.append(_Param(name, dist, target))
        self._params = params
        self.parameters = [p.name for p in params]
        self.prior = tfd.JointDistributionNamed({p.name: p.dist for p in params},
                                                name="LensModelPrior")
        # the one constraining bijector: the joint prior's event-space bijector (each
        # component's default bijector); unconstrained coordinates go through it only
        self.event_space_bijector = self.prior.experimental_default_event_space_bijector()
        unc_shapes = self.event_space_bijector.inverse_event_shape(self.prior.event_shape)
        for p in params:
            p.set_unconstrained_shape(unc_shapes[p.name])
        flat = []
        for p in params:
            if p.size == 1 and not p.unc_event_shape:
                flat.append(p.name)
            else:
                flat += [f"{p.name}.{k}" for k in range(p.size)]
        self.param_names = flat
        self.num_params = len(flat)
        self.bijector = self._make_bijector()

    def _make_bijector(self):
        """``R^D -> dict``: Split, reshape each block, restructure, event-space bijectors."""
        sizes = [p.size for p in self._params]
        reshape = [tfb.Reshape(list(p.unc_event_shape), [p.size]) for p in self._params]
        structure = {p.name: i for i, p in enumerate(self._params)}
        return tfb.Chain([
            self.event_space_bijector,
            tfb.Restructure(structure),
            tfb.JointMap(reshape),
            tfb.Split(sizes),
        ], name="LensModelBijector")

    # ----------------------------------------------------------------- helpers
    def replace(self, **changes) -> "LensModel":
        """A new LensModel with some constructor arguments changed (e.g.
        ``num_subhalos=0`` for the nested model without subhalos, or another ``source``;
        priors and fixed values of names the new model does not have are dropped).
        Models are immutable: the same scalar changes return the same model, so that its
        compiled functions serve every later call (e.g. the detection's nested models over
        many images)."""
        key = None
        if all(isinstance(v, (int, float, str, bool, type(None))) for v in changes.values()):
            key = tuple(sorted(changes.items()))
            if key in self._replaced:
                return self._replaced[key]
        model = self._replace(changes)
        if key is not None:
            self._replaced[key] = model
        return model

    def _replace(self, changes):
        cfg = dict(self._config)
        cfg.update(changes)
        n_sub = cfg.get("num_subhalos", 0) or 0

        def keep(name):
            if name.startswith("source.") and "source" in changes:
                return False
            if name.startswith("lens_light.") and "lens_light" in changes:
                return False
            if name.startswith("subhalo."):
                try:
                    return int(name.split(".")[1]) < n_sub
                except ValueError:
                    return True
            return True

        for key in ("priors", "fixed"):
            if cfg.get(key) and key not in changes and (
                    {"num_subhalos", "source", "lens_light"} & set(changes)):
                cfg[key] = {k: v for k, v in cfg[key].items() if keep(k)}
        obs = cfg.pop("observation")
        return LensModel(obs, **cfg)

    def with_data(self, data) -> "LensModel":
        """This model with ``data`` as the default data image."""
        return self.replace(data=data)

    def _check_data(self, data):
        n = self.num_pix
        if isinstance(data, (tf.Tensor, tf.Variable)) and not tf.executing_eagerly():
            return tf.cast(data, self.dtype)
        if data is self._checked:  # bound by an earlier objective(): checked already
            return data
        arr = np.asarray(data.numpy() if hasattr(data, "numpy") else data)
        if arr.ndim < 2 or arr.shape[-2:] != (n, n):
            raise ValueError(f"data must have shape [..., {n}, {n}], got {arr.shape}")
        if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
            raise ValueError("data must be a finite real image")
        self._checked = tf.constant(arr.astype(self.dtype.as_numpy_dtype))
        return self._checked

    def resolve_data(self, data=None):
        """``data`` checked (shape ``[..., N, N]``, finite) as a tensor of the model's
        dtype, or the model's own data when ``data`` is ``None`` (``ValueError`` if it has
        none)."""
        if data is None:
            if self.data is None:
                raise ValueError("no data: pass data= or build the model with data=")
            return self.data
        return self._check_data(data)

    def _batch(self, params: dict):
        """Check a params dict; return (params with batch flattened to [B], batch_shape)."""
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict name -> value, got {type(params).__name__}")
        missing = [n for n in self.parameters if n not in params]
        unknown = sorted(set(params) - set(self.parameters))
        if missing or unknown:
            raise ValueError(f"params must have exactly the keys {self.parameters}; missing "
                             f"{missing}, unknown {unknown}")
        shapes = []
        vals = {}
        for p in self._params:
            v = params[p.name]
            v = tf.cast(v, self.dtype) if isinstance(v, (tf.Tensor, tf.Variable)) else \
                tf.constant(np.asarray(v, dtype=self.dtype.as_numpy_dtype))
            nd = len(p.event_shape)
            shp = v.shape[:v.shape.rank - nd] if nd else v.shape
            if tuple(v.shape[v.shape.rank - nd:].as_list()) != p.event_shape:
                raise ValueError(f"params[{p.name!r}] must end with the event shape "
                                 f"{list(p.event_shape)}, got shape {v.shape.as_list()}")
            shapes.append(shp)
            vals[p.name] = v
        batch = tf.TensorShape([])
        for s in shapes:
            try:
                batch = tf.broadcast_static_shape(batch, s)
            except ValueError:
                raise ValueError(f"params have batch shapes {[s.as_list() for s in shapes]} "
                                 "that do not broadcast") from None
        bsz = int(np.prod(batch.as_list(), dtype=np.int64)) if batch.rank else 1
        out = {}
        for p in self._params:
            v = tf.broadcast_to(vals[p.name], batch.as_list() + list(p.event_shape))
            out[p.name] = tf.reshape(v, [bsz] + list(p.event_shape))
        return out, batch

    # ============================================================ forward model
    def _component_kwargs(self, params: dict, data=None):
        """Simulator kwargs from a dict of free parameters with batch shape [B] (``data``:
        the image a :class:`~tfstronglens.models.RIMSource` reconstructs its source from;
        default the model's)."""
        values = {}
        for p in self._params:
            values[p.target] = params[p.name]
        all_names = self._all_names()
        for name, v in self.fixed.items():
            values[all_names[name]] = v
        for name, target in self.tied.items():
            values[all_names[name]] = values[all_names[target]]

        def comp(kind, i):
            prof = self._components[kind][i]
            kw = {}
            for pname in prof.param_names:
                if kind == "source" and pname == "z" and self.latent_dim:
                    kw["z"] = tf.stack([values[("source_z", k, None)]
                                        for k in range(self.latent_dim)], axis=-1)
                elif (kind, i, pname) in values:
                    kw[pname] = values[(kind, i, pname)]
            return kw

        lens = [comp("lens", i) for i in range(len(self._components["lens"]))]
        main = lens[0]
        if self.num_subhalos:
            get = lambda k, p: values[("subhalo", k, p)]  # noqa: E731
            stack = lambda p: tf.stack([tf.convert_to_tensor(get(k, p)) +  # noqa: E731
                                        tf.zeros_like(tf.convert_to_tensor(get(0, "mass")))
                                        for k in range(self.num_subhalos)], axis=-1)
            mass = stack("mass")
            sample = {"mass": mass, "center_x": stack("center_x"),
                      "center_y": stack("center_y"), "mask": tf.ones_like(mass, tf.bool)}
            extra = {}
            if self.subhalo_profile in _HOST_DEPENDENT:
                ex = lambda v: tf.convert_to_tensor(v, self.dtype)[..., None]  # noqa: E731
                extra = dict(theta_E_host=ex(main["theta_E"]),
                             host_center_x=ex(main.get("center_x", 0.0)),
                             host_center_y=ex(main.get("center_y", 0.0)))
            kw = subhalo_lens_kwargs(sample, self.lens_cosmology, self.subhalo_profile, **extra)
            lens += unstack_lens_kwargs(kw)
        source = [comp("source", i) for i in range(len(self._components["source"]))]
        if self.source_model == "rim":
            source = [{"image": self._rim_source(lens, self.resolve_data(data))}]
        light = [comp("lens_light", i) for i in range(len(self._components["lens_light"]))]
        return lens, source, light

    def component_kwargs(self, params: dict, data=None):
        """The Simulator's parameter lists ``(lens, source, lens_light)`` (lenstronomy-style
        dicts, one per profile, batch flattened to ``[B]``; fixed and tied values filled in,
        subhalo masses converted to profile parameters) for a dict of the free
        parameters; ``data`` is what a RIM source reconstructs from (default the model's)."""
        flat, _ = self._batch(params)
        return self._component_kwargs(flat, data)

    def subhalo_masses(self, params: dict) -> dict:
        """Masses of the candidate subhalos that do not lean on the assumed profile, for a
        dict of the free parameters (any batch shape), in M_sun:

        * ``subhalo.k.mass_aperture``: the projected mass inside ``subhalo_aperture``
          arcsec of the subhalo's centre. At HST-like resolution the image constrains the
          subhalo's deflection over a few tenths of an arcsec: with the default 0.5", fits
          with TNFW subhalos of the default concentration recovered it to 0.95, 0.90 and
          1.32 times the truth for a TNFW of 4x that concentration, a pseudo-Jaffe and a
          point mass, whose fitted M200 was off by factors of 5, 12 and 15
          (``tests/test_subhalo_mass.py``).
        * ``subhalo.k.mass_eff`` inside the perturbation radius ``subhalo.k.r_pert``
          (arcsec; Minor et al. 2017, :mod:`tfstronglens.observation.subhalo_mass`) for the
          host's ``theta_E`` and slope (``lens.0.gamma``, 2 without). Robust between
          compact profiles; for a diffuse subhalo ``r_pert`` falls below the resolution
          and the number says more about the profile than about the data. Only when the
          main deflector has a ``theta_E`` (it defines the host's critical curve).
        """
        from ..observation.subhalo_mass import effective_lensing_mass, enclosed_mass

        if not self.num_subhalos:
            return {}
        flat, batch = self._batch(params)
        lens, _, _ = self._component_kwargs(flat)
        main = lens[0]
        slope = main.get("gamma", 2.0)
        prof = self.simulator.lens[len(self._components["lens"])]
        out = {}
        for k in range(self.num_subhalos):
            kw = lens[len(self._components["lens"]) + k]
            m_ap = enclosed_mass(prof, kw, tf.constant(self.subhalo_aperture, self.dtype),
                                 self.lens_cosmology)
            out[f"subhalo.{k}.mass_aperture"] = tf.reshape(m_ap, batch)
            if "theta_E" in main:
                r_p, m = effective_lensing_mass(prof, kw, main["theta_E"],
                                                self.lens_cosmology, host_slope=slope)
                out[f"subhalo.{k}.r_pert"] = tf.reshape(r_p, batch)
                out[f"subhalo.{k}.mass_eff"] = tf.reshape(m, batch)
        return out

    @property
    def source_profile(self):
        """The (first) source's light profile (e.g. Sersic, PixelatedSource, a VAE
        decoder)."""
        return self._components["source"][0]

    @property
    def source_profiles(self) -> tuple:
        """Every source component's light profile (they add)."""
        return tuple(self._components["source"])

    def _rim_source(self, lens, data):
        """The RIM's source images ``[B, n, n]`` for lens kwargs with batch ``[B]``."""
        src = self._components["source"][0]
        columns = []
        for prof, kw in zip(self.simulator.lens, lens):
            for pname in prof.param_names:
                columns.append(tf.convert_to_tensor(kw.get(pname, prof.defaults.get(pname, 0.0)),
                                                    self.dtype))
        batch = tf.shape(columns[0])
        for c in columns[1:]:
            batch = tf.broadcast_dynamic_shape(batch, tf.shape(c))
        columns = tf.stack([tf.reshape(tf.broadcast_to(c, batch), [-1]) for c in columns], -1)
        return src.reconstruct(data, self.data_noise_sigma(data), self._rim_psf, columns)

    def _render_flat(self, params: dict, data=None):
        # The simulator's rendering graph itself, not its compiled ``__call__``: a nested
        # tf.function costs nothing without XLA, but differentiated inside the caller's
        # XLA function it made the VAE-source posterior's gradient several times slower
        # at batches >= 8 (benchmarks/fit_vae.py --profile, benchmarks/README.md).
        sim = self.simulator
        kwargs = zip(("lens", "source", "lens_light"), self._component_kwargs(params, data))
        return sim.render(*(sim.prepare(kind, p) for kind, p in kwargs))

    def render(self, params: dict):
        """Noiseless model images ``[*batch, N, N]`` (e-/s per pixel) for a dict of the free
        parameters with batch shape ``batch`` (scalars give ``[1, N, N]``)."""
        flat, batch = self._batch(params)
        img = self._render_flat(flat)
        n = self.num_pix
        return tf.reshape(img, (batch.as_list() or [1]) + [n, n])

    def simulate(self, params: dict, seed=None):
        """A noisy image (or batch) drawn from the likelihood at ``params``."""
        model = self.render(params)
        seed = as_seed(seed)
        if self.noise_map is None:
            return self.observation.add_noise(model, seed=seed)
        return tfd.Normal(model, self.noise_map).sample(seed=seed)

    def data_noise_sigma(self, data=None):
        """Per-pixel noise sigma ``[N, N]`` of the data when no model is at hand: the noise
        map if the model has one, else the observation's noise for a model equal to the
        data clipped at 0 (background, plus the Poisson term of the exposure); ``data``
        defaults to the model's."""
        data = self.resolve_data() if data is None else tf.convert_to_tensor(data, self.dtype)
        if self.noise_map is not None:
            return tf.broadcast_to(self.noise_map, tf.shape(data))
        return tf.sqrt(self.observation.noise_variance(tf.nn.relu(data)))

    # ================================================================ densities
    def _pixel_sigma(self, model):
        """Per-pixel noise standard deviation for the noiseless ``model`` images."""
        if self.noise_map is None:
            return tf.sqrt(self.observation._variance(model))
        return self.noise_map

    def pixel_sigma(self, model_images):
        """Per-pixel noise sigma of the likelihood for noiseless ``model_images``
        ``[..., N, N]`` (the noise map, or the Observation's background + Poisson term)."""
        return self._pixel_sigma(tf.convert_to_tensor(model_images, self.dtype))

    def log_density(self, x, data, kind: str = "posterior"):
        """The objective's function itself, ``x [B, D] -> [B]`` for checked ``data``
        (:meth:`resolve_data`), uncompiled: for callers that compile their own loop with
        the data as an argument (so that one compilation serves many images)."""
        return self._unconstrained_impl(x, data, kind)

    def objective(self, data=None, kind: str = "posterior") -> Objective:
        """The :class:`Objective` for ``data`` (default the model's): ``kind`` is
        ``"posterior"`` or ``"likelihood"``."""
        self._check_objective(kind)
        return Objective(self, self.resolve_data(data), kind)

    @property
    def parameter_blocks(self) -> tuple:
        """The free parameters' blocks of ``x`` (:class:`ParameterBlock`), in order."""
        offsets = np.cumsum([0] + [p.size for p in self._params])
        return tuple(ParameterBlock(p.name, p.size, p.event_shape, int(o))
                     for p, o in zip(self._params, offsets))

    def _pixel_log_like(self, model, data):
        sigma = self._pixel_sigma(model)
        lp = tfd.Normal(model, sigma).log_prob(data)
        if self.mask is not None:
            lp = lp * self.mask
        return tf.reduce_sum(lp, axis=[-2, -1])

    def _log_like_flat(self, params, data):
        return self._pixel_log_like(self._render_flat(params, data), data)

    def log_prior(self, params: dict):
        """``log p(params)`` under the joint prior, shape ``[*batch]``."""
        flat, batch = self._batch(params)
        return tf.reshape(self._log_prior_flat(flat), batch)

    def log_likelihood(self, params: dict, data=None):
        """``log p(data | params)``, shape ``[*batch]`` (see class docs)."""
        d = self.resolve_data(data)
        flat, batch = self._batch(params)
        return tf.reshape(self._log_like_flat(flat, d), batch)

    def log_posterior(self, params: dict, data=None):
        """Unnormalized ``log p(params | data) = log_prior + log_likelihood``."""
        d = self.resolve_data(data)
        flat, batch = self._batch(params)
        return tf.reshape(self._log_prior_flat(flat) + self._log_like_flat(flat, d), batch)

    def sample_prior(self, n: int = 1, seed=None) -> dict:
        """``n`` draws from the joint prior :attr:`prior`: dict name -> ``[n, *event]``."""
        n = positive_int(n, "n")
        return dict(self.prior.sample(n, seed=as_seed(seed)))

    def _log_prior_flat(self, params):
        """``log p(params)`` under the joint prior :attr:`prior`, ``[B]``."""
        return self.prior.log_prob({p.name: params[p.name] for p in self._params})

    # ================================================== unconstrained coordinates
    def _split_flat(self, x):
        """x [B, D] -> ({name: constrained [B, *event]}, log|det J| [B])."""
        parts = tf.split(x, [p.size for p in self._params], axis=-1)
        blocks = {}
        for p, xp in zip(self._params, parts):
            blocks[p.name] = (tf.reshape(xp, tf.concat([tf.shape(x)[:-1],
                                                         list(p.unc_event_shape)], 0))
                              if p.unc_event_shape else xp[..., 0])
        bij = self.event_space_bijector
        ldj = bij.forward_log_det_jacobian(
            blocks, event_ndims={p.name: len(p.unc_event_shape) for p in self._params})
        out = bij.forward(blocks)  # (keys in the joint distribution's order: reorder)
        return {p.name: out[p.name] for p in self._params}, ldj

    def _as_x(self, x):
        x = tf.convert_to_tensor(x, dtype_hint=self.dtype)
        if x.dtype != self.dtype:
            x = tf.cast(x, self.dtype)
        if x.shape.rank is not None and (x.shape.rank < 1 or x.shape[-1] != self.num_params):
            raise ValueError(f"x must have shape [..., {self.num_params}] (D = number of "
                             f"parameters), got {x.shape.as_list()}")
        return x

    def from_flat(self, x) -> dict:
        """Unconstrained ``x [..., D]`` -> dict of constrained parameters ``[..., *event]``."""
        x = self._as_x(x)
        batch = tf.shape(x)[:-1]
        params, _ = self._split_flat(tf.reshape(x, [-1, self.num_params]))
        return {k: tf.reshape(v, tf.concat([batch, tf.shape(v)[1:]], 0))
                for k, v in params.items()}

    def to_flat(self, params: dict):
        """Dict of constrained parameters ``[*batch, *event]`` -> unconstrained
        ``x [*batch, D]`` (inverse of :meth:`from_flat`)."""
        flat, batch = self._batch(params)
        unc = self.event_space_bijector.inverse(flat)
        parts = [tf.reshape(unc[p.name], [-1, p.size]) for p in self._params]
        x = tf.concat(parts, axis=-1)
        return tf.reshape(x, batch.as_list() + [self.num_params])

    def _unconstrained_impl(self, x, data, objective: str = "posterior"):
        params, ldj = self._split_flat(x)
        ll = self._log_like_flat(params, data)
        if objective == "likelihood":
            return ll
        return ll + self._log_prior_flat(params) + ldj

    def _likelihood_and_prior(self, x, data):
        """``(log L, log prior + log|J|)`` at unconstrained ``x [B, D]``."""
        params, ldj = self._split_flat(x)
        return self._log_like_flat(params, data), self._log_prior_flat(params) + ldj

    @staticmethod
    def _weighted(prior_weight, ll, prior):
        """``log L`` plus the prior terms where ``prior_weight > 0``: the posterior for
        weight 1, the likelihood alone (exactly, whatever the prior terms are) for 0."""
        return ll + tf.where(prior_weight > 0, prior_weight * prior, tf.zeros_like(prior))

    def _weighted_impl(self, x, data, prior_weight):
        """The objective with a runtime ``prior_weight`` (:meth:`_weighted`), so that one
        compiled function serves the posterior and the likelihood."""
        return self._weighted(prior_weight, *self._likelihood_and_prior(x, data))

    def _compiled_fn(self, kind: str):
        """The compiled ``fn(x, data, prior_weight)`` of ``kind``: ``"value"``, ``"grad"``
        (value and gradient), ``"render"`` or ``"prior_hessian"`` (the last two ignore
        ``data`` or ``prior_weight``). The objective is an argument, not part of the key:
        a maximum-likelihood fit after a MAP of the same model (the subhalo detection)
        reuses its compilation."""
        if kind not in self._compiled:
            if kind == "value":
                fn = self._weighted_impl
            elif kind == "render":  # model images
                def fn(x, data, prior_weight):
                    return self._render_flat(self._split_flat(x)[0], data)
            elif kind == "prior_hessian":  # Hessian of -(log prior + log|J|)
                def fn(x, data, prior_weight):
                    return self._prior_hessian_flat(x)
            else:
                def fn(x, data, prior_weight):
                    # two gradients, so that the likelihood's is exactly its own when
                    # the prior is off (no 0 x inf from prior terms at a bound)
                    with tf.GradientTape(persistent=True) as tape:
                        tape.watch(x)
                        ll, prior = self._likelihood_and_prior(x, data)
                    g_ll, g_prior = tape.gradient(ll, x), tape.gradient(prior, x)
                    return (self._weighted(prior_weight, ll, prior),
                            self._weighted(prior_weight, g_ll, g_prior))
            # Without XLA, one trace with a relaxed batch size serves every batch (MAP
            # starts, Laplace's finite differences, LM's renders): each new trace and its
            # first graph optimisation cost seconds. XLA compiles per shape anyway and
            # keeps static shapes for its fast paths.
            self._compiled[kind] = tf.function(fn, jit_compile=self.jit_compile,
                                               autograph=False,
                                               reduce_retracing=not self.jit_compile)
        return self._compiled[kind]

    def _prior_hessian_flat(self, x, data=None):
        """Hessian ``[B, D, D]`` of ``-(log prior + log|J|)`` at ``x [B, D]``.

        The priors are independent across parameters (one block of ``x`` each), so the
        Hessian is block diagonal: for the one-dimensional blocks it is the diagonal
        ``d/dx_i sum_j dP/dx_j`` (one extra reverse pass for all of them together); only
        event-shaped blocks (e.g. the source latents) need a Jacobian of their gradient.
        (Against one ``batch_jacobian`` of the whole gradient, the first call, i.e. trace
        and graph optimisation, went from 17.8 s to 12.7 s for the 77-parameter demo
        model on the 2-core CPU.)
        """
        sizes = [p.size for p in self._params]
        parts = tf.split(x, sizes, axis=-1)
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(parts)
            with tf.GradientTape() as inner:
                inner.watch(parts)
                params, ldj = self._split_flat(tf.concat(parts, -1))
                total = -(self._log_prior_flat(params) + ldj)
            grads = inner.gradient(total, parts)
            scalar_sum = tf.add_n([tf.reduce_sum(g) for g, n in zip(grads, sizes) if n == 1]
                                  + [tf.zeros([], x.dtype)])
        diag = outer.gradient(scalar_sum, parts, unconnected_gradients="zero")
        blocks = [dg[:, :, None] if n == 1 else outer.batch_jacobian(g, xp)
                  for g, n, dg, xp in zip(grads, sizes, diag, parts)]
        return tf.linalg.LinearOperatorBlockDiag(
            [tf.linalg.LinearOperatorFullMatrix(b) for b in blocks]).to_dense()

    def _check_objective(self, objective):
        if objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")

    def unconstrained_log_posterior(self, x, data=None, objective: str = "posterior",
                                    jit_compile: bool = True):
        """``log p(theta(x)) + log L(data | theta(x)) + log|det J(x)|`` for ``x [..., D]``,
        shape ``[...]``. ``objective="likelihood"`` gives ``log L`` alone (no prior, no
        Jacobian; for maximum-likelihood fits). XLA-compiled unless ``jit_compile=False``.
        """
        self._check_objective(objective)
        x = self._as_x(x)
        d = self.resolve_data(data)
        batch = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, self.num_params])
        if jit_compile:
            val = self._value_2d(x2, d, objective)
        else:
            val = self._unconstrained_impl(x2, d, objective)
        return tf.reshape(val, batch)

    def _padded(self, kind, x2, d, objective):
        """Call a compiled function on ``x2 [B, D]``, padded/chunked to
        ``compile_batch_size`` rows when set."""
        fn = self._compiled_fn(kind)
        w = tf.constant(0.0 if objective == "likelihood" else 1.0, self.dtype)
        cb = self.compile_batch_size
        B = x2.shape[0]
        if cb is None or B is None or B == cb:
            return fn(x2, d, w)
        return run_in_batches(lambda part: fn(part, d, w), x2, cb)

    def _value_2d(self, x2, d, objective="posterior"):
        return self._padded("value", x2, d, objective)

    def _value_and_grad_2d(self, x2, d, objective="posterior"):
        return self._padded("grad", x2, d, objective)

    def value_and_gradient(self, x, data=None, objective: str = "posterior"):
        """``(unconstrained_log_posterior(x), its gradient in x)``, XLA-compiled."""
        self._check_objective(objective)
        x = self._as_x(x)
        d = self.resolve_data(data)
        shape = tf.shape(x)
        val, grad = self._value_and_grad_2d(tf.reshape(x, [-1, self.num_params]), d,
                                            objective)
        return tf.reshape(val, shape[:-1]), tf.reshape(grad, shape)

    def target_log_prob_fn(self, data=None, objective: str = "posterior"):
        """A function ``x [..., D] -> [...]`` (the unconstrained log posterior for this
        data), for samplers such as ``tfp.mcmc``: :meth:`Objective.target_log_prob`. It
        may be called inside a ``tf.function`` (it is then compiled as part of the
        caller)."""
        return self.objective(data, objective).target_log_prob

    def sample_unconstrained_prior(self, n: int, seed=None):
        """``n`` prior draws mapped to unconstrained space, ``[n, D]``."""
        return self.to_flat(self.sample_prior(n, seed))

    def __repr__(self):
        src = (self.source_model if self.source_model not in ("profile", "components")
               else [type(p).__name__ for p in self._components["source"]])
        light = [type(p).__name__ for p in self._components["lens_light"]]
        return (f"LensModel(lens={self.lens_model!r}, source={src!r}, lens_light={light}, "
                f"num_subhalos={self.num_subhalos}, D={self.num_params}, "
                f"noise={'noise_map' if self.noise_map is not None else 'observation'})")


def build_model(observation: Observation, data=None, lens="sie+shear", source="sersic",
                lens_light=None, num_subhalos: int = 0, **kwargs) -> LensModel:
    """A :class:`LensModel` whose amplitude priors are scaled to ``data``.

    ``amp_scale`` (unless given) is the 99.5th percentile of the data divided by the pixel
    area, i.e. the brightest arcs' surface brightness in e-/s/arcsec^2; the source and
    lens-light amplitude priors are log-uniform over decades around it (see
    :class:`LensModel`). Other arguments are passed on.
    """
    if data is not None and "amp_scale" not in kwargs:
        arr = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError("data must be finite")
        peak = float(np.percentile(arr, 99.5))
        if not peak > 0:
            raise ValueError("data has no positive signal (99.5th percentile <= 0); give "
                             "amp_scale= explicitly")
        kwargs["amp_scale"] = peak / observation.pixel_area
    if isinstance(num_subhalos, numbers.Integral) is False:
        raise ValueError(f"num_subhalos must be an integer >= 0, got {num_subhalos!r}")
    return LensModel(observation, lens=lens, source=source, lens_light=lens_light,
                     num_subhalos=num_subhalos, data=data, **kwargs)
