"""A Keras 3 layer that lenses a pixelated source image through a parametric lens."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from ..profiles.base import MassProfile, get_profile
from ..profiles.pixelated_source import PixelatedSource
from .grid import PixelGrid
from .psf import GaussianPSF
from .simulator import Simulator

__all__ = ["LensingLayer"]

#: What a process must run before ``keras.saving.load_model`` reads a ``.keras`` file
#: holding a :class:`LensingLayer` (written into the layer's config; see its docstring).
LOAD_REQUIRES = ("import tfstronglens (Keras 3 imports no third-party module when "
                 "loading a .keras file)")


def _check_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_pos(value, name, unit="arcsec"):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive number ({unit}), got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="tfstronglens")
class LensingLayer(keras.layers.Layer):
    r"""Lens a pixelated source image through a parametric lens: ``(source, params) -> image``.

    #### Mathematical details

    For every (sub-)pixel ``theta`` of the image grid the source-plane position is
    ``beta = theta - sum_k alpha_k(theta; p_k)`` (the lens models ``lens_models``, e.g. an
    SIE plus external shear, with parameters ``p_k`` from ``lens_params``); surface
    brightness is conserved, so

        I(theta) = S(beta(theta)),

    where ``S`` is the source image interpolated on the source grid
    (:class:`~tfstronglens.profiles.PixelatedSource`: pixel ``(i, j)`` at
    ``((j - (n-1)/2) s, (i - (n-1)/2) s)``, bilinear by default, zero outside). Sub-pixels
    are averaged, multiplied by the pixel area and convolved with a Gaussian PSF of FWHM
    ``psf_fwhm``, exactly as :class:`~tfstronglens.lensing.Simulator` (which the layer
    builds and calls). The source image is a surface brightness (flux / arcsec^2); the
    output is in flux per image pixel; bilinear interpolation conserves flux: the
    unlensed source has total flux ``s^2 sum(source)``.

    #### Shapes

    * ``source_image``: ``[B, n_src, n_src]`` or ``[B, n_src, n_src, 1]`` (channels-last,
      one channel), ``n_src = source_num_pix``.
    * ``lens_params``: ``[B, P]``, columns in the order of :attr:`param_names`, e.g.
      ``["lens.0.theta_E", "lens.0.e1", "lens.0.e2", "lens.0.center_x",
      "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2", "lens.1.ra_0",
      "lens.1.dec_0"]`` for ``["SIE", "SHEAR"]`` (every parameter of every lens model,
      lenstronomy names, arcsec; see :meth:`pack_params`).
    * output: ``[B, num_pix, num_pix]``, or ``[B, num_pix, num_pix, 1]`` when the source
      had a channel axis.

    Call it as ``layer(source_image, lens_params)`` or ``layer([source_image,
    lens_params])``. The layer has no weights; it is differentiable w.r.t. both inputs,
    runs under XLA (``model.compile(jit_compile=True)``), serializes with
    ``get_config``/``from_config`` (``.keras`` files) and exports with
    ``model.export(path)`` to a TF SavedModel.

    #### Saving and loading

    * ``model.export(path)``: the SavedModel is standalone (``tf.saved_model.load`` in a
      process that never imports tfstronglens) and keeps the layer's first derivatives:
      the hand-written gradients (shear, PSF adjoint, XLA barriers) are written into it
      (``tf.saved_model.SaveOptions(experimental_custom_gradients=True)``, TensorFlow's
      default, which ``model.export`` uses), so ``tf.GradientTape`` through
      ``loaded.serve`` gives the original model's gradients. With a PSF, loading logs
      "Importing a function (...internal_grad_fn...) with ops with unsaved custom
      gradients": that concerns the gradient *of* a gradient (the PSF adjoint is itself
      a custom-gradient op). Second derivatives (Hessians) are not supported by the
      layer, before or after export: the XLA barrier of the rendering has no gradient.
    * ``.keras`` files: Keras 3 imports no third-party module while loading (only
      ``keras*`` modules, a safety rule), so ``keras.saving.load_model`` finds
      ``LensingLayer`` only after ``import tfstronglens`` (or ``tfstronglens.layers``)
      in that process: the import registers the class. The layer's config carries that
      instruction (``"load_requires"``, ignored by :meth:`from_config`) so that Keras's
      "Could not locate class 'LensingLayer'" error, which prints the config, names the
      fix.

    Args:
      num_pix: image pixels per side.
      pixel_scale: image pixel size (arcsec).
      source_num_pix: source-grid pixels per side.
      source_pixel_scale: source pixel size (arcsec).
      lens_models: lens (mass) profile names registered in
        :func:`tfstronglens.profiles.get_profile`, e.g. ``("SIE", "SHEAR")``.
      supersample: sub-pixels per image pixel per side (default 1).
      psf_fwhm: FWHM (arcsec) of a Gaussian PSF, or ``None`` (default) for no PSF.
      source_interpolation: ``"bilinear"`` (default) or ``"bicubic"``.
      dtype: ``"float32"`` (default) or ``"float64"``; inputs are cast to it.

    #### Example

    ```python
    import numpy as np, keras
    from tfstronglens.layers import LensingLayer

    layer = LensingLayer(num_pix=32, pixel_scale=0.08, source_num_pix=24,
                         source_pixel_scale=0.04, lens_models=["SIE", "SHEAR"],
                         psf_fwhm=0.1)
    params = layer.pack_params([dict(theta_E=[1.0, 0.9], e1=0.1, e2=0.0),
                                dict(gamma1=0.02, gamma2=-0.01)])      # [2, 9]
    source = np.random.rand(2, 24, 24).astype("float32")
    image = layer(source, params)                                       # [2, 32, 32]

    src_in = keras.Input((24, 24)); par_in = keras.Input((len(layer.param_names),))
    model = keras.Model([src_in, par_in], layer(src_in, par_in))
    ```
    """

    def __init__(self, num_pix, pixel_scale, source_num_pix, source_pixel_scale,
                 lens_models=("SIE", "SHEAR"), supersample=1, psf_fwhm=None,
                 source_interpolation="bilinear", dtype="float32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        policy = self.dtype_policy
        if policy.compute_dtype not in ("float32", "float64") or (
                policy.variable_dtype != policy.compute_dtype):
            raise ValueError(
                f"dtype must be 'float32' or 'float64' (no mixed precision), got {policy.name!r}"
            )
        dt = tf.as_dtype(policy.compute_dtype)
        self.num_pix = _check_int(num_pix, "num_pix")
        self.pixel_scale = _check_pos(pixel_scale, "pixel_scale")
        self.source_num_pix = _check_int(source_num_pix, "source_num_pix")
        self.source_pixel_scale = _check_pos(source_pixel_scale, "source_pixel_scale")
        self.supersample = _check_int(supersample, "supersample")
        self.psf_fwhm = None if psf_fwhm is None else _check_pos(psf_fwhm, "psf_fwhm")
        if isinstance(lens_models, str) or not isinstance(lens_models, (list, tuple)):
            raise ValueError(f"lens_models must be a list of profile names, got {lens_models!r}")
        self.lens_models = [str(m) for m in lens_models]
        lens = []
        for i, name in enumerate(self.lens_models):
            try:
                prof = get_profile(name, dtype=dt)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"lens_models[{i}] = {name!r} is not a usable lens model: {exc}") from None
            if not isinstance(prof, MassProfile):
                raise ValueError(
                    f"lens_models[{i}] = {name!r} is not a mass (lens) profile but "
                    f"{type(prof).__name__}"
                )
            if prof.param_event_ndims:
                raise ValueError(
                    f"lens_models[{i}] = {name!r} has map-valued parameters "
                    f"{sorted(prof.param_event_ndims)}, which cannot be columns of lens_params"
                )
            lens.append(prof)
        self.source_interpolation = source_interpolation
        source = PixelatedSource(self.source_num_pix, self.source_pixel_scale,
                                 interpolation=source_interpolation, dtype=dt)
        grid = PixelGrid(self.num_pix, self.pixel_scale, self.supersample, dtype=dt)
        psf = None if self.psf_fwhm is None else GaussianPSF(self.psf_fwhm)
        # Keras compiles (or not) the function the layer is traced into, so the
        # simulator's own rendering function is not used: the layer calls its graph body.
        self.simulator = Simulator(grid, lens=lens, source=[source], psf=psf, jit_compile=False)
        self._param_names = self.simulator.param_names(("lens",))
        self.built = True

    # --------------------------------------------------------------- parameters
    @property
    def param_names(self) -> list:
        """Names of the ``lens_params`` columns: ``"lens.<k>.<name>"`` for lens model ``k``."""
        return list(self._param_names)

    def pack_params(self, lens) -> np.ndarray:
        """Stack a lenstronomy-style list of lens parameter dicts (one per lens model,
        values scalars or ``[B]`` arrays, omitted parameters at their defaults) into the
        ``[B, P]`` array the layer takes."""
        prepared = self.simulator.prepare("lens", lens)
        cols = [np.asarray(p[name], dtype=self.compute_dtype)
                for p, prof in zip(prepared, self.simulator.lens) for name in prof.param_names]
        cols = np.broadcast_arrays(*cols)
        if cols[0].ndim > 1:
            raise ValueError(f"lens parameters must be scalars or 1D [B] arrays, got shape {cols[0].shape}")
        return np.stack([np.atleast_1d(c) for c in cols], axis=-1)

    # ---------------------------------------------------------------- shapes
    @staticmethod
    def _unpack(source_image, lens_params):
        if lens_params is None:
            if isinstance(source_image, (list, tuple)) and len(source_image) == 2:
                return source_image[0], source_image[1]
            raise ValueError(
                "LensingLayer takes (source_image, lens_params): call layer(source, params) "
                "or layer([source, params])"
            )
        return source_image, lens_params

    def _check_shapes(self, src_shape, par_shape):
        src_shape, par_shape = tuple(src_shape), tuple(par_shape)
        n = self.source_num_pix
        ok = len(src_shape) in (3, 4) and all(d in (None, n) for d in src_shape[1:3])
        if ok and len(src_shape) == 4:
            ok = src_shape[3] in (None, 1)
        if not ok:
            raise ValueError(
                f"source_image must have shape [B, {n}, {n}] or [B, {n}, {n}, 1] "
                f"(source_num_pix={n}), got {list(src_shape)}"
            )
        P = len(self._param_names)
        if len(par_shape) != 2 or par_shape[1] not in (None, P):
            raise ValueError(
                f"lens_params must have shape [B, {P}] (columns {self._param_names}), got "
                f"{list(par_shape)}"
            )
        if par_shape[1] is None:
            raise ValueError(f"lens_params needs a static last dimension {P}, got {list(par_shape)}")
        return len(src_shape) == 4

    def compute_output_shape(self, source_image_shape, lens_params_shape=None):
        src, par = self._unpack(source_image_shape, lens_params_shape)
        if not isinstance(src, (list, tuple)) or (src and isinstance(src[0], (list, tuple))):
            raise ValueError(f"source_image shape must be a shape tuple, got {src!r}")
        channel = self._check_shapes(src, par)
        b = src[0] if src[0] is not None else par[0]
        return (b, self.num_pix, self.num_pix) + ((1,) if channel else ())

    # ------------------------------------------------------------------ call
    @tf.autograph.experimental.do_not_convert  # static Python logic only
    def call(self, source_image, lens_params=None):
        source_image, lens_params = self._unpack(source_image, lens_params)
        source_image = tf.convert_to_tensor(source_image, self.compute_dtype)
        lens_params = tf.convert_to_tensor(lens_params, self.compute_dtype)
        channel = self._check_shapes(source_image.shape, lens_params.shape)
        if channel:
            source_image = source_image[..., 0]
        columns = tf.unstack(lens_params, axis=-1)
        lens, k = [], 0
        for prof in self.simulator.lens:
            lens.append({name: columns[k + i] for i, name in enumerate(prof.param_names)})
            k += len(prof.param_names)
        sim = self.simulator
        lens = sim.prepare("lens", lens, check=False)
        source = sim.prepare("source", [{"image": source_image}], check=False)
        image = sim.render(lens, source, [])
        return image[..., None] if channel else image

    # ------------------------------------------------------------- serialization
    def get_config(self):
        config = super().get_config()
        config.update({
            "num_pix": self.num_pix,
            "pixel_scale": self.pixel_scale,
            "source_num_pix": self.source_num_pix,
            "source_pixel_scale": self.source_pixel_scale,
            "lens_models": list(self.lens_models),
            "supersample": self.supersample,
            "psf_fwhm": self.psf_fwhm,
            "source_interpolation": self.source_interpolation,
            # not an argument: read by a person when Keras cannot find the class
            "load_requires": LOAD_REQUIRES,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("load_requires", None)
        return super().from_config(config)
