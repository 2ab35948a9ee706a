r"""A recurrent inference machine (RIM) that reconstructs a pixelated source galaxy from a
lensed image, given the lens.

#### Mathematical details

Putzky & Welling (2017, arXiv 1706.04008) learn the iterations of an optimiser: starting
from ``x_0 = 0``, a recurrent network reads the current estimate ``x_t`` and the gradient
of the log-likelihood of the data with respect to it, and writes an update,

    g_t = grad_x log p(d | x) at x_t,
    (dx_t, h_{t+1}) = f_phi(x_t, g_t, h_t),    x_{t+1} = x_t + dx_t,   t = 0 .. T - 1,

trained to minimise ``(1/T) sum_{t=1..T} ||x_t - x_true||^2``. Morningstar et al. (2019,
arXiv 1901.01359) applied it to lensed sources, where the likelihood gradient carries the
lens, the PSF and the noise, and the network supplies the galaxy prior.

Here the data model is the package's renderer: ``d = A s + n``, where ``s`` is the source
surface brightness on a ``source_num_pix^2`` grid of ``source_pixel_scale`` arcsec
centred on (0, 0) (a :class:`~tfstronglens.profiles.PixelatedSource`, bilinear), ``A``
ray-traces the supersampled image pixels through the lens (any mass profiles of the
:class:`~tfstronglens.Simulator`, subhalos included), averages the sub-pixels, multiplies
by the pixel area and convolves with the PSF, and ``n ~ N(0, sigma^2)`` per pixel (the noise
map). The gradient ``g = A^T ((d - A s) / sigma^2)`` is computed exactly, by automatic
differentiation of the renderer inside the model's graph (XLA-compilable); the rays are
traced once per reconstruction, since ``A`` does not depend on ``s``.

**Units and normalisation.** ``A`` is linear, so each image is normalised by its own scale
``c = max(d)``: the network works on ``x = s a / c`` (``a`` the image pixel area: ``x``
is in units of the data's peak per pixel, of order 1 whatever the exposure), reads the
likelihood gradient of the normalised data ``d / c``, ``sigma / c`` in units of the
median noise variance (``g sigma_med^2``, of order the normalised residual), and a
constant channel ``log(c / sigma_med)`` (the peak S/N, telling it how far to trust the
data). Estimates are returned in e-/s/arcsec^2: ``s_t = x_t c / a``. The likelihood
gradient enters as data: training does not differentiate through it (Putzky & Welling's
choice), so no second derivatives of the renderer are needed.

**Network.** A small U-Net with a convolutional GRU (:class:`ConvGRU`) at each of two
coarser scales (``n/2``, ``n/4``), as in the RIMs of Morningstar et al. and Adam et al.
(2023, arXiv 2207.01073): the recurrent state lives at low resolution, the update is
written at full resolution through skip connections. The weights do not depend on the
lens model or the image grid: :meth:`RIM.with_observation` returns the same network for
another lens model, image size or pixel scale (useful within the range of data it was
trained on).

#### Inputs (a dict) and outputs

* ``image``: ``[B, N, N]`` data, e-/s per pixel (lens light subtracted or absent);
* ``noise``: ``[B, N, N]`` per-pixel noise sigma (e-/s), positive;
* ``psf``: ``[B, k, k]`` PSF kernels (odd ``k``; ``psf_size`` for the exported model);
* ``lens``: ``[B, P]`` lens parameters, columns :attr:`RIM.lens_param_names` (e.g.
  ``lens.0.theta_E`` ...; :meth:`RIM.pack_lens` builds it from lenstronomy-style lists).

Output: ``[B, T, n, n]``, the estimate of every step, e-/s/arcsec^2 (the last is the
reconstruction; :meth:`RIM.reconstruct`).
"""

from __future__ import annotations

import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from ..lensing.grid import PixelGrid
from ..lensing.source_operator import SourceOperator
from ..profiles.pixelated_source import PixelatedSource
from .replicas import scale_loss_for_replicas

__all__ = ["RIM", "RIMSource", "ConvGRU", "source_error", "footprint_mask", "load_rim",
           "PRETRAINED_RIM"]


def _int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _pos(value, name):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="tfstronglens")
class ConvGRU(keras.layers.Layer):
    r"""A convolutional gated recurrent unit (Ballas et al. 2016, arXiv 1511.06432).

    For input ``u`` ``[B, H, W, C]`` and state ``h`` ``[B, H, W, F]``:

        z = sigmoid(W_z * [u, h]),   r = sigmoid(W_r * [u, h]),
        h~ = tanh(W_h * [u, r h]),   h' = (1 - z) h + z h~,

    ``*`` a ``kernel_size`` convolution ("same" padding). Returns ``h'`` ``[B, H, W, F]``.
    """

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = _int(filters, "filters")
        self.kernel_size = _int(kernel_size, "kernel_size")
        conv = lambda n, act, name: keras.layers.Conv2D(  # noqa: E731
            n, self.kernel_size, padding="same", activation=act, name=name, dtype=self.dtype_policy)
        self.gates = conv(2 * self.filters, "sigmoid", "gates")
        self.candidate = conv(self.filters, "tanh", "candidate")

    def build(self, inputs_shape, state_shape=None):
        c = inputs_shape[-1]
        self.gates.build(tuple(inputs_shape[:-1]) + (c + self.filters,))
        self.candidate.build(tuple(inputs_shape[:-1]) + (c + self.filters,))
        self.built = True

    def call(self, inputs, state):
        z, r = tf.split(self.gates(tf.concat([inputs, state], -1)), 2, axis=-1)
        cand = self.candidate(tf.concat([inputs, r * state], -1))
        return (1.0 - z) * state + z * cand

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


def footprint_mask(source, fraction: float = 0.01):
    """``source > fraction * max(source)`` per image ``[..., n, n]`` (bool): the pixels
    where a source has light, over which :func:`source_error` is measured."""
    source = tf.convert_to_tensor(source)
    peak = tf.reduce_max(source, axis=[-2, -1], keepdims=True)
    return source > fraction * peak


def source_error(estimate, truth, fraction: float = 0.01):
    r"""Normalised mean squared error of source estimates over the true source's footprint:
    ``sum_F (s_hat - s)^2 / sum_F s^2``, ``F`` = :func:`footprint_mask` (truth), per image.
    0 is perfect; an estimate of zeros scores 1."""
    truth = tf.convert_to_tensor(truth)
    estimate = tf.cast(estimate, truth.dtype)
    mask = tf.cast(footprint_mask(truth, fraction), truth.dtype)
    num = tf.reduce_sum(mask * tf.square(estimate - truth), axis=[-2, -1])
    return num / tf.reduce_sum(mask * tf.square(truth), axis=[-2, -1])


@keras.saving.register_keras_serializable(package="tfstronglens")
class RIM(keras.Model):
    r"""Recurrent inference machine for lensed sources (see the module docs).

    Args:
      num_pix, pixel_scale, supersample: the image grid (pixels per side, arcsec per pixel,
        sub-pixels per side for the ray tracing).
      lens_models: mass profile names of the lens (default ``("SIE", "SHEAR")``).
      source_num_pix, source_pixel_scale: the reconstructed source grid (default 64 pixels
        of 0.03", centred on (0, 0)); ``source_num_pix`` must be a multiple of 4.
      steps: recurrent steps ``T`` (default 10).
      filters: channels at full, half and quarter resolution (the two GRU states are the
        last two), default ``(16, 16, 32)``.
      psf_size: PSF kernel side of the exported signature (odd; calls take any odd size).

    #### Example

    >>> rim = RIM(num_pix=64, pixel_scale=0.05)
    >>> lens = rim.pack_lens([dict(theta_E=1.2, e1=0.1, e2=0.0), dict(gamma1=0.02, gamma2=0.0)])
    >>> out = rim({"image": data[None], "noise": sigma[None], "psf": psf[None], "lens": lens})
    >>> source = out[:, -1]                                        # [1, 64, 64], e-/s/arcsec^2
    """

    def __init__(self, num_pix: int = 64, pixel_scale: float = 0.05, supersample: int = 2,
                 lens_models=("SIE", "SHEAR"), source_num_pix: int = 64,
                 source_pixel_scale: float = 0.03, steps: int = 10, filters=(16, 16, 32),
                 psf_size: int = 9, **kwargs):
        super().__init__(**kwargs)
        self.num_pix = _int(num_pix, "num_pix", 4)
        self.pixel_scale = _pos(pixel_scale, "pixel_scale")
        self.supersample = _int(supersample, "supersample")
        self.source_num_pix = _int(source_num_pix, "source_num_pix", 8)
        if self.source_num_pix % 4:
            raise ValueError(f"source_num_pix must be a multiple of 4, got {source_num_pix!r}")
        self.source_pixel_scale = _pos(source_pixel_scale, "source_pixel_scale")
        self.steps = _int(steps, "steps")
        self.psf_size = _int(psf_size, "psf_size")
        if self.psf_size % 2 == 0:
            raise ValueError(f"psf_size must be odd, got {psf_size!r}")
        if isinstance(filters, (str, bytes)) or len(filters) != 3:
            raise ValueError(f"filters must be three channel counts, got {filters!r}")
        self.filters = tuple(_int(f, f"filters[{i}]") for i, f in enumerate(filters))
        self.operator = SourceOperator(
            PixelGrid(self.num_pix, self.pixel_scale, self.supersample), lens_models,
            self.source_num_pix, self.source_pixel_scale)
        self.lens_models = tuple(str(m) for m in lens_models)
        self._lens_names = self.operator.lens_param_names

        f0, f1, f2 = self.filters
        conv = lambda n, k=3, s=1, act="leaky_relu", name=None: keras.layers.Conv2D(  # noqa: E731
            n, k, strides=s, padding="same", activation=act, name=name)
        up = lambda n, name: keras.layers.Conv2DTranspose(  # noqa: E731
            n, 4, strides=2, padding="same", activation="leaky_relu", name=name)
        self.encode0 = conv(f0, name="encode0")
        self.down1 = conv(f1, 3, 2, name="down1")
        self.gru1 = ConvGRU(f1, name="gru1")
        self.down2 = conv(f2, 3, 2, name="down2")
        self.gru2 = ConvGRU(f2, name="gru2")
        self.up2 = up(f1, "up2")
        self.merge1 = conv(f1, name="merge1")
        self.up1 = up(f0, "up1")
        self.merge0 = conv(f0, name="merge0")
        self.update = conv(1, 1, act=None, name="update")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.error_tracker = keras.metrics.Mean(name="source_error")
        self._build_network()

    def _build_network(self):
        n, (_, f1, f2) = self.source_num_pix, self.filters
        x = tf.zeros([1, n, n, 3])
        e0 = self.encode0(x)
        h1 = tf.zeros([1, n // 2, n // 2, f1])
        h1 = self.gru1(self.down1(e0), h1)
        h2 = self.gru2(self.down2(h1), tf.zeros([1, n // 4, n // 4, f2]))
        u1 = self.merge1(tf.concat([self.up2(h2), h1], -1))
        self.update(self.merge0(tf.concat([self.up1(u1), e0], -1)))
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    # ------------------------------------------------------------ lens inputs
    @property
    def lens_param_names(self) -> list:
        """Columns of the ``lens`` input: ``lens.<k>.<name>`` in profile order."""
        return list(self._lens_names)

    def pack_lens(self, lens) -> np.ndarray:
        """A lenstronomy-style list of lens parameter dicts -> the ``[B, P]`` ``lens`` input
        (:meth:`~tfstronglens.lensing.SourceOperator.pack`)."""
        return self.operator.pack(lens)

    def with_observation(self, **changes) -> "RIM":
        """The same network (weights copied) for another ``lens_models``, ``num_pix``,
        ``pixel_scale``, ``supersample``, ``steps`` or ``psf_size``."""
        allowed = {"lens_models", "num_pix", "pixel_scale", "supersample", "steps", "psf_size"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ValueError(f"with_observation() cannot change {unknown}; it changes "
                             f"{sorted(allowed)}")
        config = self.get_config()
        config.update(changes)
        other = RIM.from_config(config)
        other.set_weights(self.get_weights())
        return other

    # ---------------------------------------------------------------- physics
    def _unpack(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError("RIM inputs must be a dict with 'image', 'noise', 'psf' and 'lens'")
        missing = [k for k in ("image", "noise", "psf", "lens") if k not in inputs]
        if missing:
            raise ValueError(f"RIM inputs lack {missing} (need image, noise, psf, lens)")
        image = tf.cast(inputs["image"], tf.float32)
        noise = tf.cast(inputs["noise"], tf.float32)
        psf = tf.cast(inputs["psf"], tf.float32)
        lens = tf.cast(inputs["lens"], tf.float32)
        n, P = self.num_pix, len(self._lens_names)
        if image.shape.rank != 3 or image.shape[1:] != (n, n):
            raise ValueError(f"image must have shape [B, {n}, {n}] (num_pix={n}), got "
                             f"{image.shape.as_list()}")
        if noise.shape.rank != 3 or noise.shape[1:] != (n, n):
            raise ValueError(f"noise must have shape [B, {n}, {n}], got {noise.shape.as_list()}")
        if lens.shape.rank != 2 or lens.shape[-1] != P:
            raise ValueError(f"lens must have shape [B, {P}] (columns {self._lens_names}), got "
                             f"{lens.shape.as_list()}")
        k = psf.shape[-1]
        if psf.shape.rank != 3 or k is None or psf.shape[-2] != k or k % 2 == 0:
            raise ValueError(f"psf must have shape [B, k, k] with odd k, got {psf.shape.as_list()}")
        return image, noise, psf, lens

    # The physics runs XLA-compiled inside the (uncompiled) recurrent graph: on CPUs
    # TensorFlow's oneDNN convolutions run this network faster than XLA:CPU does, while
    # XLA fuses the ray tracing and rendering well (benchmarks/rim.py times both). Under a
    # caller's jit_compile=True (GPU/TPU) these nested functions are compiled with the rest.
    @tf.function(jit_compile=True, autograph=False)
    def _compiled_trace(self, lens):
        return self.operator.trace(lens)

    @tf.function(jit_compile=True, autograph=False)
    def _compiled_gradient(self, source, rays, psf, data, inv_var):
        return self.operator.log_likelihood_gradient(source, rays, psf, data, inv_var)

    def _scales(self, image, noise):
        scale = tf.maximum(tf.reduce_max(image, axis=[1, 2]), 1e-30)
        sigma_med = tf.maximum(
            tf.sqrt(tf.reduce_mean(tf.square(noise), axis=[1, 2])) / scale, 1e-12)
        return scale, sigma_med

    # ------------------------------------------------------------------ model
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=False):
        image, noise, psf, lens = self._unpack(inputs)
        xs = self._iterate(image, noise, psf, lens, training)
        scale = self._scales(image, noise)[0]
        area = self.pixel_scale**2
        return tf.stack(xs, axis=1) * (scale / area)[:, None, None, None]

    def _iterate(self, image, noise, psf, lens, training):
        """The normalised estimates ``x_1 .. x_T`` (a list of ``[B, n, n]``)."""
        n, (_, f1, f2) = self.source_num_pix, self.filters
        scale, sigma_med = self._scales(image, noise)
        area = self.pixel_scale**2
        d = image / scale[:, None, None]
        inv_var = tf.square(scale[:, None, None] / noise)
        rays = self._compiled_trace(lens)
        batch = tf.shape(image)[0]
        snr = tf.broadcast_to(-tf.math.log(sigma_med)[:, None, None, None], [batch, n, n, 1])
        x = tf.zeros([batch, n, n])
        h1 = tf.zeros([batch, n // 2, n // 2, f1])
        h2 = tf.zeros([batch, n // 4, n // 4, f2])
        out = []
        for _ in range(self.steps):
            g = self._compiled_gradient(x / area, rays, psf, d, inv_var) / area
            g = tf.stop_gradient(g) * tf.square(sigma_med)[:, None, None]
            e0 = self.encode0(tf.concat([x[..., None], g[..., None], snr], -1))
            h1 = self.gru1(self.down1(e0), h1)
            h2 = self.gru2(self.down2(h1), h2)
            u1 = self.merge1(tf.concat([self.up2(h2), h1], -1))
            dx = self.update(self.merge0(tf.concat([self.up1(u1), e0], -1)))[..., 0]
            x = x + dx
            out.append(x)
        return out

    def reconstruct(self, inputs):
        """The final estimate ``[B, n, n]`` (e-/s/arcsec^2)."""
        return self(inputs, training=False)[:, -1]

    def source_grid(self):
        """``(x, y)`` ``[n, n]`` arcsec of the reconstructed source's pixel centres."""
        c = (np.arange(self.source_num_pix) - 0.5 * (self.source_num_pix - 1)) * self.source_pixel_scale
        return np.meshgrid(c, c)

    # --------------------------------------------------------------- training
    def _loss(self, inputs, target, training):
        image, noise, psf, lens = self._unpack(inputs)
        xs = self._iterate(image, noise, psf, lens, training)
        scale = self._scales(image, noise)[0]
        x_true = tf.cast(target, tf.float32) * self.pixel_scale**2 / scale[:, None, None]
        per_step = [tf.reduce_mean(tf.square(x - x_true), axis=[1, 2]) for x in xs]
        loss = tf.reduce_mean(tf.add_n(per_step) / len(per_step))
        error = tf.reduce_mean(source_error(xs[-1], x_true))
        return loss, error

    def train_step(self, data):
        inputs, target = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, error = self._loss(inputs, target, training=True)
            scaled = self.optimizer.scale_loss(scale_loss_for_replicas(loss))
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.loss_tracker.update_state(loss)
        self.error_tracker.update_state(error)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        loss, error = self._loss(data[0], data[1], training=False)
        self.loss_tracker.update_state(loss)
        self.error_tracker.update_state(error)
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.loss_tracker, self.error_tracker]

    # ------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(num_pix=self.num_pix, pixel_scale=self.pixel_scale,
                      supersample=self.supersample, lens_models=list(self.lens_models),
                      source_num_pix=self.source_num_pix,
                      source_pixel_scale=self.source_pixel_scale, steps=self.steps,
                      filters=list(self.filters), psf_size=self.psf_size)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("trainable", "dtype", "name"):
            config.pop(key, None)
        return cls(**config)

    def input_signature(self, batch_size=None) -> dict:
        n, k = self.num_pix, self.psf_size
        return {"image": tf.TensorSpec([batch_size, n, n], tf.float32, name="image"),
                "noise": tf.TensorSpec([batch_size, n, n], tf.float32, name="noise"),
                "psf": tf.TensorSpec([batch_size, k, k], tf.float32, name="psf"),
                "lens": tf.TensorSpec([batch_size, len(self._lens_names)], tf.float32,
                                      name="lens")}

    def export(self, filepath, format="tf_saved_model", verbose=None, overwrite: bool = False,
               **kwargs):
        """Export as a TF SavedModel that loads without tfstronglens or Keras:
        ``m = tf.saved_model.load(path)``; ``m.serve(image=..., noise=..., psf=..., lens=...)``
        returns ``[B, T, n, n]`` estimates (``psf`` of side ``psf_size``). Written beside the
        target and renamed into place; an existing ``filepath`` is a ``FileExistsError``
        unless ``overwrite=True``."""
        from ..io._atomic import atomic_directory

        if format != "tf_saved_model":
            raise ValueError(f"format must be 'tf_saved_model', got {format!r}")
        filepath = os.fspath(filepath)
        with atomic_directory(filepath, overwrite=overwrite) as tmp:
            archive = keras.export.ExportArchive()
            archive.track(self)
            sig = self.input_signature()

            def serve(image, noise, psf, lens):
                return self({"image": image, "noise": noise, "psf": psf, "lens": lens},
                            training=False)

            archive.add_endpoint("serve", serve, input_signature=[sig["image"], sig["noise"],
                                                                  sig["psf"], sig["lens"]])
            archive.write_out(tmp, verbose=False)
        return filepath


#: File name of the shipped RIM in ``tfstronglens/models/pretrained``.
PRETRAINED_RIM = "rim_hst_acs_f814w.keras"


def load_rim(spec=None) -> RIM:
    """The RIM named by ``spec``: ``None`` (the shipped one, trained for the
    ``hst_acs_f814w`` preset; see ``tfstronglens/models/pretrained/README.md``), a
    :class:`RIM`, a training folder holding ``rim.keras`` (``train-rim --out DIR``) or the
    path of a ``.keras`` file. ``FileNotFoundError`` for a missing file, ``ValueError``
    for a file or folder that does not hold a RIM."""
    from ._pretrained import load_model_spec

    return load_model_spec(spec, RIM, what="RIM", inner="rim.keras", pretrained=PRETRAINED_RIM,
                           command="train-rim")


class RIMSource(PixelatedSource):
    r"""A source reconstructed from the data by a :class:`RIM` for the current lens.

    Given to :class:`~tfstronglens.inference.LensModel` as ``source=RIMSource()``, it has
    no free parameters: at every evaluation the source image is the RIM's reconstruction
    from the data for the lens parameters being evaluated (every lens component, subhalos
    included), so optimising the likelihood over the lens alone fits lens and source
    (``tfstronglens fit --source rim``). The RIM reads the likelihood gradient as data
    (the module docs), so the derivative of the fit objective with respect to the lens is
    taken at the reconstructed source, i.e. ``d log L / d lens = partial_lens log L(lens,
    s)`` at ``s = RIM(data, lens)``: exact where the reconstruction maximises the
    likelihood over the source (the envelope theorem), an approximation otherwise. It is
    a point estimate of the source: use it for MAP fits of the lens, and a VAE or
    pixelated source (seeded by it, ``--source-init rim``) for posteriors.

    Args:
      rim: a :func:`load_rim` spec (default: the shipped RIM).
    """

    name = None  # built with a RIM, not from the profile registry
    derived_from_data = True

    def __init__(self, rim=None, dtype=tf.float32):
        self.rim = load_rim(rim)
        super().__init__(self.rim.source_num_pix, self.rim.source_pixel_scale, dtype=dtype)

    def bind(self, grid: PixelGrid, lens_models, psf_size: int) -> "RIMSource":
        """This source with its RIM set up for an image grid, lens profiles and PSF size."""
        out = RIMSource.__new__(RIMSource)
        PixelatedSource.__init__(out, self.num_pix, self.pixel_scale, dtype=self.dtype)
        out.rim = self.rim.with_observation(
            num_pix=grid.num_pix, pixel_scale=grid.pixel_scale, supersample=grid.supersample,
            lens_models=[str(m) for m in lens_models], psf_size=int(psf_size))
        return out

    def reconstruct(self, data, noise, psf, lens_columns):
        """The RIM's source ``[B, n, n]`` for ``data`` and ``noise`` ``[N, N]``, ``psf``
        ``[k, k]`` and lens parameters ``[B, P]`` (columns ``rim.lens_param_names``)."""
        batch = tf.shape(lens_columns)[0]
        tile = lambda a: tf.broadcast_to(tf.cast(a, tf.float32)[None],  # noqa: E731
                                         tf.concat([[batch], tf.shape(a)], 0))
        inputs = {"image": tile(data), "noise": tile(noise), "psf": tile(psf),
                  "lens": tf.cast(lens_columns, tf.float32)}
        return tf.cast(self.rim(inputs, training=False)[:, -1], self.dtype)
