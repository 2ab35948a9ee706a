"""Base classes for mass and light profiles.

Every profile is a small stateless object (only static settings such as ``dtype`` live on
the instance); parameters are passed at call time with lenstronomy's names, so that one
instance serves any batch of lenses.

Broadcasting
------------
Coordinates ``x, y`` (arcsec) and every scalar parameter broadcast elementwise with numpy
rules. To evaluate a batch of ``B`` lenses on an ``[H, W]`` grid, give parameters shape
``[B, 1, 1]`` (the :class:`~tfstronglens.lensing.Simulator` does this for you). Parameters
with an event shape (e.g. a pixelated map, ``param_event_ndims = {"kappa": 2}``) carry their
batch dimensions in front of the event dimensions.
"""

from __future__ import annotations

import tensorflow as tf

from .._validation import (as_tensor, broadcast_shapes, check_at_most, check_positive,
                           resolve_dtype)

__all__ = ["Profile", "MassProfile", "LightProfile", "PROFILE_REGISTRY", "get_profile"]

PROFILE_REGISTRY: dict = {}


def get_profile(name: str, **kwargs) -> "Profile":
    """Instantiate a registered profile by its lenstronomy-style name (e.g. ``"SIE"``)."""
    key = str(name).upper()
    if key not in PROFILE_REGISTRY:
        raise ValueError(
            f"profile name {name!r} is unknown; known profiles: {sorted(PROFILE_REGISTRY)}"
        )
    return PROFILE_REGISTRY[key](**kwargs)


class Profile:
    """Common machinery: parameter names, defaults, conversion and checking.

    Subclasses set the class attributes

    * ``name``: lenstronomy-style model name, e.g. ``"SIE"``;
    * ``param_names``: every accepted parameter, in canonical order;
    * ``defaults``: values of optional parameters (e.g. ``center_x = 0``);
    * ``positive_params``: parameters that must be > 0;
    * ``param_event_ndims``: number of trailing event dimensions of non-scalar parameters;
    * ``upper_bounds``: inclusive upper limits of parameters that have one (e.g. an axis
      ratio ``q <= 1``).
    """

    name: str = ""
    param_names: tuple = ()
    defaults: dict = {}
    positive_params: tuple = ()
    nonnegative_params: tuple = ()
    param_event_ndims: dict = {}
    upper_bounds: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            PROFILE_REGISTRY[cls.name.upper()] = cls

    def __init__(self, dtype=tf.float32):
        self.dtype = resolve_dtype(dtype)

    # ------------------------------------------------------------------ helpers
    @property
    def required_params(self) -> tuple:
        return tuple(p for p in self.param_names if p not in self.defaults)

    def param_event_shape(self, pname: str) -> tuple:
        """Static event shape of parameter ``pname``: ``()`` for a scalar; profiles with
        event-shaped parameters (``param_event_ndims``) override this."""
        if pname not in self.param_names:
            raise ValueError(f"{type(self).__name__} has no parameter {pname!r}; it has "
                             f"{list(self.param_names)}")
        if self.param_event_ndims.get(pname, 0):
            raise NotImplementedError(f"{type(self).__name__} does not declare the event "
                                      f"shape of {pname!r}")
        return ()

    def default_priors(self) -> dict:
        """Default priors of this profile's parameters as prior specs
        (:mod:`tfstronglens.inference.spec`), used when a model has no prior for them and
        the parameter's role (lens, lens light, source) has none either. Empty here."""
        return {}

    def get_config(self) -> dict:
        """Static settings needed to rebuild the profile with ``get_profile(**config)``."""
        return {"name": self.name, "dtype": self.dtype.name}

    def __repr__(self):
        cfg = {k: v for k, v in self.get_config().items() if k != "name"}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({args})"

    def _prepare_params(self, params: dict, method: str = "call", check: bool = True) -> dict:
        """Check names, fill defaults, convert to tensors and check values."""
        where = f"{type(self).__name__}.{method}"
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ValueError(
                f"{where}: unknown parameter(s) {unknown}; {type(self).__name__} takes "
                f"{list(self.param_names)}"
            )
        missing = [p for p in self.required_params if p not in params]
        if missing:
            raise ValueError(
                f"{where}: missing required parameter(s) {missing}; {type(self).__name__} "
                f"takes {list(self.param_names)}"
            )
        out = {}
        for pname in self.param_names:
            value = params.get(pname, self.defaults.get(pname))
            tensor = as_tensor(value, self.dtype, pname, check=check)
            if check and pname in self.positive_params:
                check_positive(value, pname)
            if check and pname in self.nonnegative_params:
                check_positive(value, pname, allow_zero=True)
            if check and pname in self.upper_bounds:
                check_at_most(value, self.upper_bounds[pname], pname)
            ndims = self.param_event_ndims.get(pname, 0)
            if ndims and tensor.shape.rank is not None and tensor.shape.rank < ndims:
                raise ValueError(
                    f"{where}: {pname} must have at least {ndims} dimensions, got shape "
                    f"{tensor.shape.as_list()}"
                )
            out[pname] = tensor
        return out

    def batch_shape(self, params: dict) -> tf.TensorShape:
        """Static broadcast shape of the parameters' batch parts (event dims removed)."""
        shapes = []
        for pname, value in params.items():
            shape = tf.TensorShape(value.shape)
            nd = self.param_event_ndims.get(pname, 0)
            if nd:
                shape = shape[:-nd]
            shapes.append((pname, shape))
        return broadcast_shapes(shapes, context=type(self).__name__)

    def _prepare(self, x, y, params, method, check=True):
        x = as_tensor(x, self.dtype, "x", check=check)
        y = as_tensor(y, self.dtype, "y", check=check)
        p = self._prepare_params(params, method, check=check)
        shapes = [("x", x.shape), ("y", y.shape)]
        shapes += [(n, v.shape) for n, v in p.items() if not self.param_event_ndims.get(n, 0)]
        broadcast_shapes(shapes, context=f"{type(self).__name__}.{method}")
        return x, y, p


class MassProfile(Profile):
    """A lens (mass) profile: deflection, convergence, potential and hessian.

    Units: positions and deflections in arcsec; the potential in arcsec^2; convergence
    dimensionless (surface density over the critical density).

    The lens equation is ``beta = theta - alpha(theta)``; the identities
    ``alpha = grad(psi)`` and ``div(alpha) = 2 kappa`` hold for every profile and are
    tested.
    """

    # ------------------------------------------------------------ public API
    def deflection(self, x, y, **params):
        """Deflection angle ``(alpha_x, alpha_y)`` in arcsec at positions ``(x, y)``."""
        x, y, p = self._prepare(x, y, params, "deflection")
        return self._deflection(x, y, **p)

    def potential(self, x, y, **params):
        """Lensing potential ``psi`` in arcsec^2, with ``grad(psi) = alpha``."""
        x, y, p = self._prepare(x, y, params, "potential")
        return self._potential(x, y, **p)

    def convergence(self, x, y, **params):
        """Convergence ``kappa = Sigma / Sigma_crit`` (dimensionless)."""
        x, y, p = self._prepare(x, y, params, "convergence")
        return self._convergence(x, y, **p)

    def hessian(self, x, y, **params):
        """Second derivatives of the potential ``(f_xx, f_xy, f_yx, f_yy)``.

        Computed by automatic differentiation of the deflection; ``f_xy`` and ``f_yx`` are
        returned separately (lenstronomy's convention) and agree to rounding.
        """
        x, y, p = self._prepare(x, y, params, "hessian")
        return self._hessian(x, y, **p)

    # ------------------------------------------------------- implementations
    def _deflection(self, x, y, **p):  # pragma: no cover - abstract
        raise NotImplementedError

    def _potential(self, x, y, **p):
        raise NotImplementedError(f"{type(self).__name__} has no closed-form potential")

    def _convergence(self, x, y, **p):
        f_xx, _, _, f_yy = self._hessian(x, y, **p)
        return 0.5 * (f_xx + f_yy)

    def _hessian(self, x, y, **p):
        shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))
        scalar_params = [v for n, v in p.items() if not self.param_event_ndims.get(n, 0)]
        for v in scalar_params:
            shape = tf.broadcast_dynamic_shape(shape, tf.shape(v))
        xb = tf.broadcast_to(x, shape)
        yb = tf.broadcast_to(y, shape)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([xb, yb])
            ax, ay = self._deflection(xb, yb, **p)
            ax = tf.broadcast_to(ax, shape)
            ay = tf.broadcast_to(ay, shape)
        f_xx, f_xy = tape.gradient(ax, [xb, yb], unconnected_gradients="zero")
        f_yx, f_yy = tape.gradient(ay, [xb, yb], unconnected_gradients="zero")
        del tape
        return f_xx, f_xy, f_yx, f_yy


class LightProfile(Profile):
    """A surface-brightness profile ``I(x, y)`` in flux per arcsec^2."""

    def surface_brightness(self, x, y, **params):
        """Surface brightness at ``(x, y)`` (arcsec), in flux units per arcsec^2."""
        x, y, p = self._prepare(x, y, params, "surface_brightness")
        return self._surface_brightness(x, y, **p)

    def _surface_brightness(self, x, y, **p):  # pragma: no cover - abstract
        raise NotImplementedError
