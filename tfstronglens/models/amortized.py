r"""Amortized lens modelling: a CNN that maps an image to a posterior over the lens parameters.

Neural posterior estimation (NPE; Papamakarios & Murray 2016, Greenberg et al. 2019), in
the line of Hezaveh, Perreault Levasseur & Marshall 2017 (arXiv:1708.08842) and Perreault
Levasseur et al. 2017 (arXiv:1708.08843): a convolutional network reads a noisy lens image
and returns a distribution :math:`q_\phi(\theta \mid d)` over the main-lens parameters and
the source position, trained on simulations :math:`(\theta, d) \sim p(\theta) p(d \mid
\theta)` by minimising :math:`-\mathbb{E}\,\log q_\phi(\theta \mid d)`. That loss is
minimised by the true posterior (for the training prior), so a network that reaches it is
calibrated; :mod:`tfstronglens.inference.calibration` measures by how much it is not.

#### The network

* **Input**: the image divided by its per-pixel noise sigma (so the network sees S/N per
  pixel, whatever the exposure or units), compressed with ``asinh``; one channel.
* **Backbone** (:class:`ResNetBackbone`): a strided stem convolution, then per stage a
  residual block and a strided convolution that halves the image and doubles the filters,
  then the final feature map *flattened* (not pooled: the lens and source positions are
  absolute positions on the pixel grid, which global pooling would throw away), and one
  dense layer to ``features`` numbers. A ResNet because the residual form trains
  reliably without normalisation layers at these depths and keeps the cost per image at a
  few tens of MFLOP: at batch 256 the whole network runs at thousands of images per
  second on two CPU cores (``benchmarks/amortized.py``).
* **Head** (one of :data:`POSTERIOR_HEADS`), on parameters standardised with the
  training prior's mean and standard deviation:

  - :class:`GaussianHead` (``"gaussian"``): ``MultivariateNormalTriL``, a full
    covariance per image;
  - :class:`FlowHead` (``"flow"``): a conditional masked autoregressive flow
    (Papamakarios et al. 2017): ``flow_layers`` affine MAF bijectors (each a MADE,
    :class:`ConditionalMADE`, that also reads the CNN features), with reversed orderings
    in between, on a standard normal. It represents skewed and multimodal posteriors,
    e.g. the two mirrored ellipticity/shear modes of a nearly round lens.

:meth:`LensPosteriorNetwork.posterior` returns the TFP distribution in physical units
(lenstronomy conventions; arcsec), named by :attr:`LensPosteriorNetwork.param_names`
(``lens.0.theta_E``, ... as in ``fit``'s summary).

#### Example

>>> net = load_lens_cnn()                                       # doctest: +SKIP
>>> q = net.posterior({"image": image[None], "noise": sigma[None]})    # doctest: +SKIP
>>> q.sample(1000, seed=0)                                      # doctest: +SKIP
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .replicas import scale_loss_for_replicas

tfd, tfb = tfp.distributions, tfp.bijectors

__all__ = ["LensPosteriorNetwork", "ResNetBackbone", "GaussianHead", "FlowHead",
           "ConditionalMADE", "POSTERIOR_HEADS", "PRETRAINED_CNN", "PRETRAINED_CNNS",
           "load_lens_cnn", "posterior_parameter_names", "match_network_grid", "snr_input"]


def posterior_parameter_names(generator) -> list:
    """The parameters a lens-parameter posterior of ``generator``'s simulations is over:
    every scalar parameter of the main lens and the shear that the generator draws (not
    the shear's fixed origin ``ra_0, dec_0``), and the source position."""
    names = [n for n in generator.truth_names
             if n.startswith("lens.") and not n.endswith((".ra_0", ".dec_0"))]
    return names + ["source.0.center_x", "source.0.center_y"]


def snr_input(inputs, num_pix: int, compress: bool = True):
    """The image networks' input: ``asinh(image / noise)[..., None]``, the S/N per pixel
    compressed (or, with ``compress=False``, ``image / noise / 10``: linear, so that a
    change of the image keeps its chi^2 scale in the bright pixels too), from ``{"image":
    [B, n, n], "noise": [B, n, n] or [B]}`` (``ValueError`` for another layout or an
    image size other than ``num_pix``, the trained one)."""
    if not isinstance(inputs, dict) or "image" not in inputs or "noise" not in inputs:
        raise ValueError("inputs must be a dict with 'image' and 'noise'")
    image = tf.convert_to_tensor(inputs["image"], tf.float32)
    if image.shape.rank != 3 or image.shape[-1] != num_pix or image.shape[-2] != num_pix:
        raise ValueError(f"image must be [batch, {num_pix}, {num_pix}] (the size this network "
                         f"was trained for), got shape {image.shape}")
    noise = tf.convert_to_tensor(inputs["noise"], tf.float32)
    if noise.shape.rank == 1:  # one sigma per image
        noise = noise[:, None, None]
    noise = tf.broadcast_to(noise, tf.shape(image))
    snr = image / noise
    return (tf.asinh(snr) if compress else 0.1 * snr)[..., None]


# ------------------------------------------------------------------------- backbone
@keras.saving.register_keras_serializable(package="tfstronglens")
class ResNetBackbone(keras.layers.Layer):
    """Image ``[B, n, n, 1]`` -> features ``[B, features]``: a stride-2 stem, then per
    entry of ``filters`` a residual block (two 3x3 convolutions, LeakyReLU) followed, for all
    but the last, by a stride-2 3x3 convolution to the next width; the last map is
    flattened and projected by a dense layer."""

    def __init__(self, filters=(16, 32, 64, 128), features: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.features = int(features)
        act = keras.layers.LeakyReLU(0.1)
        conv = lambda f, s=1, name=None: keras.layers.Conv2D(  # noqa: E731
            f, 3, strides=s, padding="same", name=name)
        self.stem = keras.layers.Conv2D(self.filters[0], 4, strides=2, padding="same",
                                        name="stem")
        self.blocks, self.downs = [], []
        for i, f in enumerate(self.filters):
            self.blocks.append((conv(f, name=f"res{i}a"), conv(f, name=f"res{i}b")))
            if i + 1 < len(self.filters):
                self.downs.append(conv(self.filters[i + 1], 2, name=f"down{i}"))
        self.act = act
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(self.features, name="features")

    def build(self, input_shape):
        b, n = input_shape[0], int(input_shape[1])
        self.stem.build(input_shape)
        n = -(-n // 2)
        for i, (a, c) in enumerate(self.blocks):
            f = self.filters[i]
            a.build((b, n, n, f))
            c.build((b, n, n, f))
            if i < len(self.downs):
                self.downs[i].build((b, n, n, f))
                n = -(-n // 2)
        self.dense.build((b, n * n * self.filters[-1]))
        self.built = True

    def call(self, x):
        h = self.act(self.stem(x))
        for i, (a, b) in enumerate(self.blocks):
            h = h + b(self.act(a(h)))
            # max(h, 0.1 h) is LeakyReLU(0.1); written so that TF's graph optimiser does not
            # fuse it with the convolution and the residual add: that fused kernel
            # (Conv2D + BiasAdd + Add + LeakyRelu, oneDNN, TF 2.21 on CPU) returns wrong
            # values in inference graphs (tests/test_amortized.py checks graph == eager)
            h = tf.maximum(h, 0.1 * h)
            if i < len(self.downs):
                h = self.act(self.downs[i](h))
        return self.act(self.dense(self.flatten(h)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "features": self.features}


# ------------------------------------------------------------------------- heads
@keras.saving.register_keras_serializable(package="tfstronglens")
class GaussianHead(keras.layers.Layer):
    r"""Features -> :math:`\mathcal{N}(\mu, L L^\top)` over ``dim`` standardised
    parameters (``tfd.MultivariateNormalTriL``; the diagonal of ``L`` is a softplus, so
    positive). Initialised at :math:`\mathcal{N}(0, I)`, the standardised prior's first
    two moments."""

    kind = "gaussian"

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        n_tril = self.dim * (self.dim + 1) // 2
        self.out = keras.layers.Dense(self.dim + n_tril, kernel_initializer="zeros",
                                      name="gaussian_params")
        self._fill = tfb.FillScaleTriL(diag_bijector=tfb.Chain([tfb.Shift(1e-4),
                                                                 tfb.Softplus()]),
                                       diag_shift=None)
        self._n_tril = n_tril

    def build(self, input_shape):
        self.out.build(input_shape)
        # softplus(0.5413) = 1: unit diagonal at initialisation
        bias = np.zeros(self.dim + self._n_tril, np.float32)
        tril = tfb.FillTriangular().inverse(
            tf.eye(self.dim) * np.float32(np.log(np.expm1(1.0 - 1e-4))))
        bias[self.dim:] = tril.numpy()
        self.out.bias.assign(bias)

    def call(self, features):
        return self.out(features)

    def distribution(self, params):
        loc = params[..., :self.dim]
        scale_tril = self._fill(params[..., self.dim:])
        return tfd.MultivariateNormalTriL(loc, scale_tril)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package="tfstronglens")
class ConditionalMADE(keras.layers.Layer):
    r"""A masked autoencoder for distribution estimation (Germain et al. 2015) that also
    reads a context vector: ``(x [..., D], context [..., F]) -> params [..., D, P]`` where
    the ``P`` parameters of output ``i`` depend on ``x_{<i}`` and the whole context only
    (the autoregressive property that makes the flow's Jacobian triangular). The last
    layer starts at zero."""

    def __init__(self, dim: int, hidden=(64, 64), params_per_dim: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden = int(dim), [int(h) for h in hidden]
        self.params_per_dim = int(params_per_dim)
        d_in = np.arange(1, self.dim + 1)
        degrees = [d_in]
        for h in self.hidden:  # hidden degrees cycle through 1 .. D-1
            degrees.append(np.arange(h) % max(self.dim - 1, 1) + 1)
        self._masks = []
        for prev, nxt in zip(degrees[:-1], degrees[1:]):
            self._masks.append((nxt[None, :] >= prev[:, None]).astype(np.float32))
        out_deg = np.repeat(d_in, self.params_per_dim)  # dimension-major: [D, P] reshaped
        self._masks.append((out_deg[None, :] > degrees[-1][:, None]).astype(np.float32))
        self._sizes = [self.dim] + self.hidden + [self.params_per_dim * self.dim]

    def build(self, input_shape):
        x_shape, c_shape = input_shape
        f = int(c_shape[-1])
        self.kernels, self.biases, self.context_kernels = [], [], []
        for i, (a, b) in enumerate(zip(self._sizes[:-1], self._sizes[1:])):
            last = i == len(self._sizes) - 2
            init = "zeros" if last else "glorot_uniform"
            self.kernels.append(self.add_weight(shape=(a, b), initializer=init, name=f"w{i}"))
            self.biases.append(self.add_weight(shape=(b,), initializer="zeros", name=f"b{i}"))
            if i == 0:
                self.context_kernels.append(self.add_weight(shape=(f, b), name="wc0"))

    def call(self, inputs):
        x, context = inputs
        lead = tf.shape(x)[:-1]  # e.g. [samples, batch]; context broadcasts against it
        # 2-D matmuls only: oneDNN's broadcasting batch matmul corrupts memory when the
        # leading shape is dynamic (TF 2.21 on CPU; seen as "free(): invalid pointer")
        h = tf.reshape(x, [-1, self.dim])
        n = len(self.kernels)
        for i in range(n):
            h = tf.matmul(h, self.kernels[i] * self._masks[i]) + self.biases[i]
            if i == 0:
                h = tf.reshape(h, tf.concat([lead, [-1]], 0))
                h = h + tf.matmul(context, self.context_kernels[0])
                h = tf.reshape(h, [-1, self._sizes[1]])
            if i < n - 1:
                h = tf.nn.leaky_relu(h, 0.1)
        return tf.reshape(h, tf.concat([lead, [self.dim, self.params_per_dim]], 0))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden,
                "params_per_dim": self.params_per_dim}


def _affine_transform(params):
    """MADE parameters ``[..., D, 2]`` -> an affine bijector ``x * exp(s) + m``, the
    log-scale soft-clipped to (-5, 5) for stable training."""
    return tfb.Chain([tfb.Shift(params[..., 0]), tfb.Scale(log_scale=5.0 * tf.tanh(
        params[..., 1] / 5.0))])


def _spline_transform(bins: int, bound: float):
    """MADE parameters ``[..., D, 3K - 1]`` -> a monotone rational-quadratic spline on
    ``[-bound, bound]`` with ``K`` bins (identity outside; Durkan et al. 2019); zero
    parameters give equal bins of unit slope, i.e. the identity."""
    def make(params):
        def sizes(raw):
            return tf.math.softmax(raw, axis=-1) * (2 * bound - bins * 1e-2) + 1e-2

        slopes = tf.math.softplus(params[..., 2 * bins:] + np.log(np.expm1(1.0 - 1e-3))) + 1e-3
        return tfb.RationalQuadraticSpline(sizes(params[..., :bins]),
                                           sizes(params[..., bins:2 * bins]), slopes,
                                           range_min=-bound)
    return make


@keras.saving.register_keras_serializable(package="tfstronglens")
class FlowHead(keras.layers.Layer):
    r"""Features -> a conditional masked autoregressive flow over ``dim`` standardised
    parameters: :math:`\theta = T_K \circ P \circ \dots \circ P \circ T_1(u)`,
    :math:`u \sim \mathcal{N}(0, I)`, each :math:`T_k` a ``tfb.MaskedAutoregressiveFlow``
    whose per-dimension transform has its parameters from a :class:`ConditionalMADE` of
    the previous variables and the features, :math:`P` a reversal of the order.

    ``transform="spline"`` (default): monotone rational-quadratic splines of
    ``spline_bins`` bins on ``[-spline_bound, spline_bound]`` (neural spline flow, Durkan
    et al. 2019), which can split one mode into two, e.g. the mirrored ellipticity/shear
    modes of a nearly round lens; ``"affine"``: ``x e^s + m`` (MAF, Papamakarios et al.
    2017), cheaper but unable to make a variable bimodal given the earlier ones.
    ``log_prob`` costs one pass per layer, ``sample`` ``dim`` passes. Initialised at the
    identity, i.e. ``N(0, I)``."""

    kind = "flow"
    TRANSFORMS = ("spline", "affine")

    def __init__(self, dim: int, flow_layers: int = 4, hidden=(64, 64),
                 transform: str = "spline", spline_bins: int = 8, spline_bound: float = 5.0,
                 **kwargs):
        super().__init__(**kwargs)
        if transform not in self.TRANSFORMS:
            raise ValueError(f"transform must be one of {self.TRANSFORMS}, got {transform!r}")
        self.dim, self.flow_layers = int(dim), int(flow_layers)
        self.hidden = [int(h) for h in hidden]
        self.transform = transform
        self.spline_bins, self.spline_bound = int(spline_bins), float(spline_bound)
        per = 2 if transform == "affine" else 3 * self.spline_bins - 1
        self._make = (_affine_transform if transform == "affine"
                      else _spline_transform(self.spline_bins, self.spline_bound))
        self.mades = [ConditionalMADE(self.dim, self.hidden, per, name=f"made{k}")
                      for k in range(self.flow_layers)]

    def build(self, input_shape):
        for made in self.mades:
            made.build(((None, self.dim), input_shape))

    def call(self, features):
        return features

    def distribution(self, features):
        bijectors = []
        for k, made in enumerate(self.mades):
            fn = (lambda m: lambda x: self._make(m((x, features))))(made)
            bijectors.append(tfb.MaskedAutoregressiveFlow(bijector_fn=fn, name=f"maf{k}"))
            if k + 1 < self.flow_layers:
                bijectors.append(tfb.Permute(list(range(self.dim))[::-1]))
        batch = tf.shape(features)[:-1]
        base = tfd.Sample(tfd.Normal(tf.zeros(batch), 1.0), [self.dim])
        return tfd.TransformedDistribution(base, tfb.Chain(bijectors[::-1]))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "flow_layers": self.flow_layers,
                "hidden": self.hidden, "transform": self.transform,
                "spline_bins": self.spline_bins, "spline_bound": self.spline_bound}


#: The posterior heads, by name: a class with ``kind``, ``call(features) -> params`` and
#: ``distribution(params) -> tfd.Distribution`` over standardised parameters.
POSTERIOR_HEADS = {cls.kind: cls for cls in (GaussianHead, FlowHead)}


# ------------------------------------------------------------------------- the model
@keras.saving.register_keras_serializable(package="tfstronglens")
class LensPosteriorNetwork(keras.Model):
    r"""CNN posterior estimator :math:`q(\theta \mid d)` for lens parameters (see the module
    docs).

    Args:
      param_names: names of the parameters (:func:`posterior_parameter_names`).
      param_loc, param_scale: the training prior's mean and standard deviation of each
        (the head works on ``(theta - loc) / scale``).
      num_pix, pixel_scale: the image size and arcsec per pixel it was trained for.
      head: ``"flow"`` or ``"gaussian"`` (:data:`POSTERIOR_HEADS`).
      filters, features: the :class:`ResNetBackbone`.
      flow_layers, flow_hidden, flow_transform: the :class:`FlowHead`.

    Inputs: ``{"image": [B, n, n], "noise": [B, n, n]}`` (e-/s per pixel; the noise is the
    per-pixel sigma, a scalar per image broadcast). ``call`` returns the head's parameters;
    :meth:`posterior` the distribution. ``fit`` trains on ``(inputs, theta [B, D])`` by
    maximum likelihood of the true parameters.
    """

    def __init__(self, param_names, param_loc, param_scale, num_pix: int = 64,
                 pixel_scale: float = 0.05, head: str = "flow", filters=(16, 32, 64, 128),
                 features: int = 128, flow_layers: int = 4, flow_hidden=(64, 64),
                 flow_transform: str = "spline", **kwargs):
        super().__init__(**kwargs)
        self.param_names = [str(n) for n in param_names]
        d = len(self.param_names)
        if d == 0 or len(set(self.param_names)) != d:
            raise ValueError(f"param_names must be distinct names, got {param_names!r}")
        loc = np.asarray(param_loc, np.float32).reshape(-1)
        scale = np.asarray(param_scale, np.float32).reshape(-1)
        if loc.shape != (d,) or scale.shape != (d,):
            raise ValueError(f"param_loc and param_scale must have {d} entries (one per name), "
                             f"got {loc.shape[0]} and {scale.shape[0]}")
        if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(f"param_scale must be positive and finite, got {scale.tolist()}")
        if head not in POSTERIOR_HEADS:
            raise ValueError(f"head must be one of {sorted(POSTERIOR_HEADS)}, got {head!r}")
        self.param_loc, self.param_scale = loc, scale
        self.num_pix, self.pixel_scale = int(num_pix), float(pixel_scale)
        self.head_kind = head
        self.filters, self.features = [int(f) for f in filters], int(features)
        self.flow_layers, self.flow_hidden = int(flow_layers), [int(h) for h in flow_hidden]
        self.flow_transform = flow_transform
        self.backbone = ResNetBackbone(self.filters, self.features, name="backbone")
        if head == "flow":
            self.head = FlowHead(d, self.flow_layers, self.flow_hidden, flow_transform,
                                 name="head")
        else:
            self.head = GaussianHead(d, name="head")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        n = self.num_pix
        self.build({"image": (None, n, n), "noise": (None, n, n)})

    @property
    def dim(self) -> int:
        return len(self.param_names)

    def build(self, input_shape):
        n = self.num_pix
        self.backbone.build((None, n, n, 1))
        self.head.build((None, self.features))
        self.built = True

    # ---------------------------------------------------------------- forward
    def preprocess(self, inputs):
        """``asinh(image / noise)[..., None]``: S/N per pixel, compressed."""
        return snr_input(inputs, self.num_pix)

    def call(self, inputs, training=False):
        return self.head(self.backbone(self.preprocess(inputs)))

    def standardized_posterior(self, inputs):
        """The head's distribution over ``(theta - param_loc) / param_scale``."""
        return self.head.distribution(self(inputs))

    def posterior(self, inputs) -> tfd.Distribution:
        """``q(theta | image)`` in physical units, event ``[D]`` ordered as
        :attr:`param_names`, batch ``[B]``."""
        q = self.standardized_posterior(inputs)
        loc, scale = tf.constant(self.param_loc), tf.constant(self.param_scale)
        if isinstance(q, tfd.MultivariateNormalTriL):
            return tfd.MultivariateNormalTriL(loc + scale * q.loc,
                                              scale[:, None] * q.scale.to_dense())
        return tfd.TransformedDistribution(q, tfb.Chain([tfb.Shift(loc), tfb.Scale(scale)]))

    def standardize(self, theta):
        return (tf.convert_to_tensor(theta, tf.float32) - self.param_loc) / self.param_scale

    # ---------------------------------------------------------------- training
    # (no AutoGraph conversion: the TFP flow has no Python control flow on tensors, and
    # converting its internals multiplies the train step's tracing time)
    @tf.autograph.experimental.do_not_convert
    def _loss(self, inputs, theta):
        q = self.standardized_posterior(inputs)
        return -tf.reduce_mean(q.log_prob(self.standardize(theta)))

    def train_step(self, data):
        inputs, theta = data
        with tf.GradientTape() as tape:
            loss = self._loss(inputs, theta)
            scaled = scale_loss_for_replicas(loss)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        inputs, theta = data
        self.loss_tracker.update_state(self._loss(inputs, theta))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]

    # ---------------------------------------------------------------- (de)serialisation
    def get_config(self):
        return {"param_names": self.param_names, "param_loc": self.param_loc.tolist(),
                "param_scale": self.param_scale.tolist(), "num_pix": self.num_pix,
                "pixel_scale": self.pixel_scale, "head": self.head_kind,
                "filters": self.filters, "features": self.features,
                "flow_layers": self.flow_layers, "flow_hidden": self.flow_hidden,
                "flow_transform": self.flow_transform,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def export(self, filepath, format="tf_saved_model", verbose=None, overwrite: bool = False,
               num_samples: int = 500, **kwargs):
        """Export as a TF SavedModel that loads without tfstronglens or Keras:
        ``m = tf.saved_model.load(path)``; ``m.serve(image, noise, seed)`` (``[B, n, n]``
        each, ``seed`` an int32 pair) returns ``{"samples": [B, num_samples, D],
        "mean": [B, D], "std": [B, D]}`` in physical units; ``m.param_names()`` the names.
        Written beside the target and renamed into place; an existing ``filepath`` is a
        ``FileExistsError`` unless ``overwrite=True``."""
        from ..io._atomic import atomic_directory

        if format != "tf_saved_model":
            raise ValueError(f"format must be 'tf_saved_model', got {format!r}")
        filepath = os.fspath(filepath)
        n = self.num_pix
        names = tf.constant(self.param_names)
        with atomic_directory(filepath, overwrite=overwrite) as tmp:
            archive = keras.export.ExportArchive()
            archive.track(self)

            def serve(image, noise, seed):
                draws = self.posterior({"image": image, "noise": noise}).sample(
                    num_samples, seed=seed)
                draws = tf.transpose(draws, [1, 0, 2])
                return {"samples": draws, "mean": tf.reduce_mean(draws, 1),
                        "std": tf.math.reduce_std(draws, 1)}

            spec = tf.TensorSpec([None, n, n], tf.float32)
            archive.add_endpoint("serve", serve, input_signature=[
                spec, spec, tf.TensorSpec([2], tf.int32)])
            archive.add_endpoint("param_names", lambda: names, input_signature=[])
            archive.write_out(tmp, verbose=False)
        return filepath


def match_network_grid(image, noise, pixel_scale: float, num_pix: int,
                       network_pixel_scale: float, resample: bool = False):
    """Put an image ``[N, N]`` and its noise sigma (``[N, N]`` or a scalar) on a network's
    grid of ``num_pix`` pixels of ``network_pixel_scale`` arcsec, centred as the image.

    Without ``resample`` the pixel scales must agree within 1%; the image is then
    centre-cropped or zero-padded (padded pixels get the median noise, so they read as
    empty sky), which needs ``N - num_pix`` even (an odd difference would shift the image
    by half a pixel). With ``resample`` the surface brightness is interpolated (bilinear)
    at the network's pixel centres and multiplied by the pixel area (flux per pixel is
    kept); the noise sigma is transformed the same way, which is exact for the mean
    level but ignores the correlation interpolation gives the noise.

    Returns ``(image, noise, notes)`` (float32 ``[num_pix, num_pix]`` each, a list of
    strings). ``ValueError`` naming the problem otherwise.
    """
    from scipy import ndimage

    image = np.asarray(image, np.float64)
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be a square 2D array, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"image has {int(np.sum(~np.isfinite(image)))} NaN or infinite "
                         "pixel(s)")
    noise = np.broadcast_to(np.asarray(noise, np.float64), image.shape)
    if not (np.all(np.isfinite(noise)) and np.all(noise > 0)):
        raise ValueError("noise must be finite and positive everywhere (a noise level of "
                         f"zero cannot be right), got min {float(np.min(noise))!r}")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"pixel_scale must be positive, got {pixel_scale!r}")
    n_in, notes = image.shape[0], []
    ratio = pixel_scale / network_pixel_scale
    if not resample:
        if abs(ratio - 1.0) > 0.01:
            raise ValueError(f"the image's pixel scale {pixel_scale:g}\" differs from the "
                             f"network's {network_pixel_scale:g}\" by {100 * abs(ratio - 1):.1f}% "
                             "(more than 1%); resample it (--resample / resample=True) or use "
                             "a network trained at that pixel scale")
        diff = n_in - num_pix
        if diff % 2:
            raise ValueError(f"a {n_in}x{n_in} image cannot be centre-cropped or padded to "
                             f"{num_pix}x{num_pix} without shifting it by half a pixel; "
                             "resample it (--resample / resample=True)")
        if diff > 0:
            h = diff // 2
            image, noise = image[h:h + num_pix, h:h + num_pix], noise[h:h + num_pix, h:h + num_pix]
            notes.append(f"centre-cropped from {n_in}x{n_in} to {num_pix}x{num_pix}")
        elif diff < 0:
            h = -diff // 2
            fill = float(np.median(noise))
            image = np.pad(image, h)
            noise = np.pad(noise, h, constant_values=fill)
            notes.append(f"zero-padded from {n_in}x{n_in} to {num_pix}x{num_pix}")
    else:
        c_out = (np.arange(num_pix) - (num_pix - 1) / 2) * network_pixel_scale
        idx = c_out / pixel_scale + (n_in - 1) / 2
        rows, cols = np.meshgrid(idx, idx, indexing="ij")
        area = (network_pixel_scale / pixel_scale) ** 2
        image = ndimage.map_coordinates(image, [rows, cols], order=1, mode="constant") * area
        fill = float(np.median(noise)) * area
        noise = ndimage.map_coordinates(noise, [rows, cols], order=1, mode="constant",
                                        cval=np.nan) * area
        noise = np.where(np.isfinite(noise) & (noise > 0), noise, fill)
        notes.append(f"resampled from {n_in}x{n_in} pixels of {pixel_scale:g}\" to "
                     f"{num_pix}x{num_pix} of {network_pixel_scale:g}\"")
    return image.astype(np.float32), noise.astype(np.float32), notes


#: The shipped lens-parameter CNNs (``tfstronglens/models/pretrained``), by the name that
#: :func:`load_lens_cnn` and ``--model`` take: ``"pretrained"`` (SIE + shear) and
#: ``"pretrained-epl"`` (EPL + shear, which adds ``lens.0.gamma``), both for the
#: ``hst_acs_f814w`` preset (64x64 pixels of 0.05").
PRETRAINED_CNNS = {"pretrained": "lens_cnn_hst_acs_f814w.keras",
                   "pretrained-epl": "lens_cnn_epl_hst_acs_f814w.keras"}
#: File name of the default shipped lens-parameter CNN (SIE + shear).
PRETRAINED_CNN = PRETRAINED_CNNS["pretrained"]


def load_lens_cnn(spec=None) -> LensPosteriorNetwork:
    """The :class:`LensPosteriorNetwork` named by ``spec``: ``None`` or one of
    :data:`PRETRAINED_CNNS` (``"pretrained"``: the shipped SIE + shear network,
    ``"pretrained-epl"``: EPL + shear; see ``tfstronglens/models/pretrained/README.md``),
    a network, a training folder holding ``cnn.keras`` (``train-cnn --out DIR``) or the
    path of a ``.keras`` file. ``FileNotFoundError`` for a missing file, ``ValueError`` for
    one that does not hold such a network."""
    from ._pretrained import load_model_spec

    return load_model_spec(spec, LensPosteriorNetwork, what="lens CNN", inner="cnn.keras",
                           pretrained=PRETRAINED_CNNS, command="train-cnn")
