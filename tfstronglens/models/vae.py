"""A variational autoencoder (VAE) for galaxy images, in Keras 3 with TFP distributions.

The encoder maps a noisy stamp to a Gaussian posterior over a latent vector ``z``; the
decoder (a DCGAN-style deconvolutional network, Radford, Metz & Chintala 2015,
arXiv:1511.06434) maps ``z`` back to a noise-free image. Trained on galaxy stamps, the
decoder is a differentiable, low-dimensional galaxy model that plugs into the lensing
core as a source (:class:`tfstronglens.models.VAESource`).
"""

from __future__ import annotations

import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .replicas import scale_loss_for_replicas

tfd = tfp.distributions

__all__ = ["VAE", "make_encoder", "make_decoder", "check_image_size", "NORMALIZATIONS"]

#: Normalisation layers the convolutional encoder/decoder can use.
NORMALIZATIONS = ("group", "batch", "layer", "none")
#: Smallest posterior scale, added to the softplus of the encoder output.
MIN_SCALE = 1e-4
_KERNEL = 4  # DCGAN: 4x4 kernels for the stride-2 (transposed) convolutions


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_image_size(image_size) -> int:
    """Return ``image_size`` as an int after checking that it is a power of two >= 16."""
    if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
            or image_size < 16 or image_size & (image_size - 1)):
        raise ValueError(
            f"image_size must be a power of two >= 16 (16, 32, 64, 128, ...), got {image_size!r}"
        )
    return int(image_size)


def _filters(base_filters, max_filters, n_down):
    """Filters of the encoder's stride-2 convolutions, from full resolution down to 4x4."""
    return [min(base_filters * 2**i, max_filters) for i in range(n_down)]


def _norm_layer(kind, channels, name, dtype):
    """The normalisation layer of a block (``None`` for ``"none"``)."""
    if kind == "group":
        # 8 groups, or fewer when there are fewer than 8 channels (gcd divides channels)
        return keras.layers.GroupNormalization(groups=math.gcd(8, channels), name=name,
                                               dtype=dtype)
    if kind == "batch":
        return keras.layers.BatchNormalization(name=name, dtype=dtype)
    if kind == "layer":
        return keras.layers.LayerNormalization(name=name, dtype=dtype)
    return None


def _check_common(image_size, latent_dim, base_filters, max_filters, normalization):
    image_size = check_image_size(image_size)
    latent_dim = _check_int(latent_dim, "latent_dim")
    base_filters = _check_int(base_filters, "base_filters")
    max_filters = _check_int(max_filters, "max_filters")
    if max_filters < base_filters:
        raise ValueError(f"max_filters ({max_filters}) must be >= base_filters ({base_filters})")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return image_size, latent_dim, base_filters, max_filters


def make_encoder(image_size: int = 64, latent_dim: int = 64, base_filters: int = 32,
                 max_filters: int = 128, normalization: str = "none", dtype="float32",
                 name: str = "encoder") -> keras.Model:
    """Convolutional encoder: ``[B, S, S]`` stamps -> ``[B, 2 latent_dim]`` posterior parameters.

    Architecture (DCGAN discriminator-like): ``log2(S) - 2`` blocks of a 4x4 convolution of
    stride 2 (``base_filters``, doubling per block up to ``max_filters``), normalisation
    (none on the first block) and LeakyReLU(0.2), which bring the stamp to 4x4; then a
    dense layer to ``2 latent_dim`` outputs: the posterior mean and the pre-softplus scale
    (see :class:`VAE`).

    Args:
      image_size: stamp side ``S`` in pixels, a power of two >= 16.
      latent_dim: dimension ``K`` of the latent space.
      base_filters, max_filters: filters of the first block and the cap.
      normalization: normalisation after each convolution: ``"none"`` (the default),
        ``"group"`` (GroupNormalization, up to 8 groups), ``"batch"`` or ``"layer"``. The
        default has none because per-example normalisations (group, layer) remove the
        overall scale of the features, which carries the galaxy's flux, and batch
        normalisation makes training and inference differ: on 16x16 Gaussian blobs of
        random amplitude (noise 0.1, latent 2, 12 epochs of 16 steps) the reconstruction
        chi^2/pixel reached 1.00 without normalisation, 1.42 with group and 3.3 with batch
        normalisation.
      dtype: Keras dtype policy of the layers (``"float32"`` or ``"float64"``).
      name: model name.
    """
    image_size, latent_dim, base_filters, max_filters = _check_common(
        image_size, latent_dim, base_filters, max_filters, normalization)
    n_down = int(round(math.log2(image_size))) - 2
    inputs = keras.Input((image_size, image_size), dtype=dtype, name="image")
    h = keras.layers.Reshape((image_size, image_size, 1), dtype=dtype, name="add_channel")(inputs)
    for i, f in enumerate(_filters(base_filters, max_filters, n_down)):
        h = keras.layers.Conv2D(f, _KERNEL, strides=2, padding="same", dtype=dtype,
                                name=f"conv_{i}")(h)
        norm = None if i == 0 else _norm_layer(normalization, f, f"norm_{i}", dtype)
        if norm is not None:
            h = norm(h)
        h = keras.layers.LeakyReLU(0.2, dtype=dtype, name=f"act_{i}")(h)
    h = keras.layers.Flatten(dtype=dtype, name="flatten")(h)
    outputs = keras.layers.Dense(2 * latent_dim, dtype=dtype, name="posterior_params")(h)
    return keras.Model(inputs, outputs, name=name)


def make_decoder(image_size: int = 64, latent_dim: int = 64, base_filters: int = 32,
                 max_filters: int = 128, normalization: str = "none", dtype="float32",
                 name: str = "decoder") -> keras.Model:
    """DCGAN-style decoder: ``[B, latent_dim]`` -> ``[B, S, S]`` noise-free images.

    Architecture (Radford et al. 2015 generator): dense layer -> reshape to ``4 x 4 x F``
    -> [normalisation] + LeakyReLU(0.2) -> ``log2(S) - 2`` blocks of a 4x4 transposed
    convolution of stride 2 (the encoder's filter counts in reverse), [normalisation] and
    LeakyReLU, doubling the resolution up to ``S x S`` -> a final 3x3 convolution to one
    channel with a linear output (surface brightness in the units of the training
    stamps). Arguments as :func:`make_encoder`.
    """
    image_size, latent_dim, base_filters, max_filters = _check_common(
        image_size, latent_dim, base_filters, max_filters, normalization)
    n_down = int(round(math.log2(image_size))) - 2
    filters = _filters(base_filters, max_filters, n_down)
    up_filters = list(reversed([base_filters] + filters[:-1]))
    inputs = keras.Input((latent_dim,), dtype=dtype, name="z")
    top = filters[-1]
    h = keras.layers.Dense(4 * 4 * top, dtype=dtype, name="project")(inputs)
    h = keras.layers.Reshape((4, 4, top), dtype=dtype, name="to_4x4")(h)
    norm = _norm_layer(normalization, top, "norm_in", dtype)
    if norm is not None:
        h = norm(h)
    h = keras.layers.LeakyReLU(0.2, dtype=dtype, name="act_in")(h)
    for i, f in enumerate(up_filters):
        h = keras.layers.Conv2DTranspose(f, _KERNEL, strides=2, padding="same", dtype=dtype,
                                         name=f"deconv_{i}")(h)
        norm = _norm_layer(normalization, f, f"norm_{i}", dtype)
        if norm is not None:
            h = norm(h)
        h = keras.layers.LeakyReLU(0.2, dtype=dtype, name=f"act_{i}")(h)
    h = keras.layers.Conv2D(1, 3, padding="same", dtype=dtype, name="to_image")(h)
    outputs = keras.layers.Reshape((image_size, image_size), dtype=dtype, name="image")(h)
    return keras.Model(inputs, outputs, name=name)


def model_dtype(model) -> tf.DType:
    """The float dtype a Keras model computes in: its (first) input's, else its policy's.

    (A Functional model's own ``compute_dtype`` is the global policy's, float32, even when
    its layers were built with ``dtype="float64"``.)
    """
    inputs = getattr(model, "inputs", None)
    if inputs:
        dt = tf.as_dtype(inputs[0].dtype)
        if dt.is_floating:
            return dt
    return tf.as_dtype(model.compute_dtype)


@keras.saving.register_keras_serializable(package="tfstronglens")
class VAE(keras.Model):
    r"""Variational autoencoder with a noise-aware Gaussian likelihood.

    #### Mathematical details

    For a stamp ``x`` (``S x S`` pixels) with per-pixel Gaussian noise ``sigma`` (the
    ``noise_std`` of each example), the model is

        z ~ p(z) = N(0, I_K),
        x | z ~ p(x | z) = prod_pixels N(x_p; D(z)_p, sigma),

    with the decoder ``D`` (:func:`make_decoder`), and the approximate posterior is
    ``q(z | x) = N(mu(x), diag(s(x)^2))`` with ``(mu, s_raw) = E(x)`` (the encoder,
    :func:`make_encoder`) and ``s = softplus(s_raw) + 1e-4``. Training maximises the
    evidence lower bound of each stamp

        ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)) <= log p(x),

    estimated with one reparameterised sample ``z = mu + s * eps``, ``eps ~ N(0, I)``,
    and the analytic KL of two diagonal Gaussians (``tfd.kl_divergence``). The training
    loss is ``-(E_q[log p(x|z)] - beta_t KL)`` averaged over the batch, with a beta-VAE
    weight and a linear KL warm-up ``beta_t = beta min(1, (t + 1) / kl_warmup_steps)``
    (``t`` the optimizer step; ``beta_t = beta`` when ``kl_warmup_steps = 0`` and at
    evaluation).

    Metrics (``fit``/``evaluate``; all per image, averaged over the batch): ``loss``;
    ``elbo`` (the true ELBO, ``beta = 1``, in nats); ``kl``; ``log_likelihood``; and
    ``chi2``, the reconstruction chi^2 per pixel ``mean_p ((x_p - D(mu)_p) / sigma)^2`` of
    the decoded posterior mean, which is ~1 when the reconstruction is within the noise.

    #### Inputs

    ``fit``, ``evaluate`` and ``__call__`` take the galaxy feature dict of
    :mod:`tfstronglens.datasets` (``{"image": [B, S, S], "noise_std": [B], ...}``; other
    keys are ignored) or a tuple ``(image, noise_std)``. Images must be floating point
    (other float types are cast to the model's) with shape ``[B, S, S]`` (``[B, S, S, 1]``
    is accepted); anything else is a ``ValueError`` naming the expected shape. Calling
    the model returns the reconstruction ``D(mu(x))``.

    The encoder and decoder default to the convolutional ones (``image_size``,
    ``latent_dim``, ``base_filters``, ``max_filters``, ``normalization``), but any Keras
    models with matching shapes work: the encoder maps data of the decoder's output shape
    to ``2 K`` numbers, the decoder maps ``[B, K]`` to data (e.g. dense networks for 1D
    curves). All shapes are static, so training runs under ``jit_compile=True``
    (``model.compile(..., jit_compile=True)``), on TPUs and under
    ``tf.distribute`` strategies (build and compile the model in ``strategy.scope()``).

    Args:
      encoder, decoder: Keras models, or ``None`` for the convolutional defaults.
      image_size: stamp side in pixels for the default networks (power of two >= 16).
      latent_dim: latent dimension ``K`` (default 64).
      base_filters, max_filters, normalization: see :func:`make_encoder`.
      beta: weight of the KL term in the loss (``beta``-VAE; default 1).
      kl_warmup_steps: optimizer steps of the linear KL warm-up (default 0: none).
      seed: seed of the sampling noise (int or None).

    #### Example

    >>> vae = VAE(image_size=32, latent_dim=8, base_filters=8)
    >>> vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     {"image": np.zeros([64, 32, 32], np.float32),
    ...      "noise_std": np.full([64], 0.1, np.float32)}).batch(16)
    >>> history = vae.fit(ds, epochs=1, verbose=0)
    >>> z = vae.sample_prior(4, seed=1)            # [4, 8] latent vectors
    >>> images = vae.decode(z)                     # [4, 32, 32]
    """

    def __init__(self, encoder=None, decoder=None, *, image_size: int = 64, latent_dim: int = 64,
                 base_filters: int = 32, max_filters: int = 128, normalization: str = "none",
                 beta: float = 1.0, kl_warmup_steps: int = 0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if isinstance(decoder, dict):
            decoder = keras.saving.deserialize_keras_object(decoder)
        if (encoder is None) != (decoder is None):
            raise ValueError("give both encoder and decoder, or neither (for the default "
                             f"convolutional networks); got encoder={encoder!r}, "
                             f"decoder={decoder!r}")
        arch = dict(image_size=image_size, latent_dim=latent_dim, base_filters=base_filters,
                    max_filters=max_filters, normalization=normalization)
        if encoder is None:
            encoder = make_encoder(**arch)
            decoder = make_decoder(**arch)
        for obj, nm in ((encoder, "encoder"), (decoder, "decoder")):
            if not isinstance(obj, keras.Model):
                raise ValueError(f"{nm} must be a keras.Model, got {obj!r}")
        if (isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta)
                or beta < 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.kl_warmup_steps = _check_int(kl_warmup_steps, "kl_warmup_steps", minimum=0)
        self.beta = float(beta)
        self.seed = seed
        self.encoder = encoder
        self.decoder = decoder
        z_shape = tuple(decoder.input_shape[1:])
        if len(z_shape) != 1 or z_shape[0] is None:
            raise ValueError(f"the decoder must take [batch, latent_dim] inputs, its input shape "
                             f"is {decoder.input_shape}")
        self.latent_dim = int(z_shape[0])
        self.data_shape = tuple(decoder.output_shape[1:])
        if any(d is None for d in self.data_shape):
            raise ValueError("the decoder's output shape must be static, got "
                             f"{decoder.output_shape}")
        enc_out = tuple(encoder.output_shape[1:])
        if enc_out != (2 * self.latent_dim,):
            raise ValueError(f"the encoder must output [batch, {2 * self.latent_dim}] (mean and "
                             f"scale of {self.latent_dim} latents), its output shape is "
                             f"{encoder.output_shape}")
        if tuple(encoder.input_shape[1:]) != self.data_shape:
            raise ValueError(f"the encoder's input shape {encoder.input_shape} does not match "
                             f"the decoder's output shape {decoder.output_shape}")
        self._arch = arch
        self.image_size = self.data_shape[0] if len(self.data_shape) == 2 else None
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.elbo_tracker = keras.metrics.Mean(name="elbo")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.loglik_tracker = keras.metrics.Mean(name="log_likelihood")
        self.chi2_tracker = keras.metrics.Mean(name="chi2")
        self.built = True

    # ----------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            beta=self.beta, kl_warmup_steps=self.kl_warmup_steps, seed=self.seed,
            **{k: v for k, v in self._arch.items()},
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def build(self, input_shape=None):  # the sub-models are built at construction
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.elbo_tracker, self.kl_tracker, self.loglik_tracker,
                self.chi2_tracker]

    # ------------------------------------------------------------------ inputs
    @property
    def _dtype(self):
        return model_dtype(self.decoder)

    def _check_image(self, image, where="VAE"):
        expected = [None, *self.data_shape]
        dtype = getattr(image, "dtype", None)
        if dtype is None:
            image = np.asarray(image)
            dtype = image.dtype
        dtype = tf.as_dtype(dtype)
        if not dtype.is_floating:
            raise ValueError(f"{where}: image must be a floating-point tensor (float32) of shape "
                             f"{expected}, got dtype {dtype.name}")
        image = tf.convert_to_tensor(image)
        if image.dtype != self._dtype:
            image = tf.cast(image, self._dtype)
        shape = image.shape
        if (shape.rank == len(self.data_shape) + 2 and shape[-1] == 1
                and tuple(shape[1:-1]) == self.data_shape):
            image = image[..., 0]
            shape = image.shape
        if shape.rank != len(self.data_shape) + 1 or tuple(shape[1:]) != self.data_shape:
            raise ValueError(f"{where}: image must have shape [batch, "
                             f"{', '.join(str(d) for d in self.data_shape)}] (expected "
                             f"{expected}), got "
                             f"{shape.as_list() if shape.rank is not None else None}")
        return image

    def _unpack(self, data, where, need_noise=True):
        """``(image, noise_std [B, 1, ..., 1])`` from a feature dict or a tuple."""
        noise = None
        if isinstance(data, dict):
            if "image" not in data:
                raise ValueError(f"{where}: the feature dict has no 'image' key (keys: "
                                 f"{sorted(data)})")
            image, noise = data["image"], data.get("noise_std")
        elif isinstance(data, (tuple, list)):
            data = tuple(data)
            while len(data) > 1 and data[-1] is None:  # Keras' (x, y, sample_weight=None)
                data = data[:-1]
            if len(data) == 1 and isinstance(data[0], dict):
                return self._unpack(data[0], where, need_noise)
            if len(data) == 1:
                image = data[0]
            elif len(data) == 2:
                image, noise = data
            else:
                raise ValueError(f"{where}: expected a feature dict or an (image, noise_std) "
                                 f"tuple, got a sequence of {len(data)} items")
        else:
            image = data
        image = self._check_image(image, where)
        if noise is None:
            if need_noise:
                raise ValueError(f"{where}: the per-stamp noise standard deviation "
                                 "('noise_std') is required")
            return image, None
        noise = tf.cast(tf.convert_to_tensor(noise), self._dtype)
        if noise.shape.rank is not None and noise.shape.rank > 1:
            noise = tf.reshape(noise, [-1])
        noise = tf.broadcast_to(noise, tf.shape(image)[:1]) if noise.shape.rank == 0 else noise
        noise = tf.reshape(noise, [-1] + [1] * len(self.data_shape))
        return image, noise

    # ------------------------------------------------------------- probability
    def posterior(self, image, training=False):
        """The Gaussian posterior ``q(z | x)``: ``tfd.MultivariateNormalDiag``, batch ``[B]``."""
        image = self._check_image(image, "VAE.posterior")
        params = self.encoder(image, training=training)
        loc, raw = params[..., :self.latent_dim], params[..., self.latent_dim:]
        scale = tf.nn.softplus(raw) + tf.cast(MIN_SCALE, raw.dtype)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)

    def prior(self):
        """The standard normal prior ``p(z) = N(0, I_K)``."""
        zeros = tf.zeros([self.latent_dim], self._dtype)
        return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))

    def likelihood(self, z, noise_std, training=False):
        """``p(x | z) = Independent(Normal(D(z), noise_std))`` over the data dimensions."""
        mean = self.decoder(z, training=training)
        return tfd.Independent(tfd.Normal(mean, noise_std),
                               reinterpreted_batch_ndims=len(self.data_shape))

    def encode(self, image):
        """Posterior mean ``mu(x)`` ``[B, K]``."""
        return self.posterior(image).mean()

    def decode(self, z):
        """Noise-free images ``D(z)`` for latents ``z`` ``[B, K]``."""
        return self.decoder(tf.convert_to_tensor(z, self._dtype), training=False)

    def sample_prior(self, n: int, seed=None):
        """``n`` latent vectors drawn from the prior, ``[n, K]``."""
        n = _check_int(n, "n")
        if seed is None:
            return tf.random.normal([n, self.latent_dim], dtype=self._dtype)
        return tf.random.stateless_normal([n, self.latent_dim], seed=[0, int(seed)],
                                          dtype=self._dtype)

    def reconstruct(self, image):
        """``D(mu(x))``: the decoded posterior mean."""
        return self.decode(self.encode(image))

    def call(self, inputs, training=False):
        image, _ = self._unpack(inputs, "VAE.call", need_noise=False)
        params = self.encoder(image, training=training)
        return self.decoder(params[..., :self.latent_dim], training=training)

    def elbo_terms(self, image, noise_std, training=False, eps=None):
        """Per-image ``(log_likelihood, kl, chi2_per_pixel)``, each ``[B]``.

        ``log_likelihood = log p(x | z)`` at ``z = mu + s * eps`` (``eps ~ N(0, I)`` drawn
        from the model's seed generator unless given, ``[B, K]``), so that
        ``log_likelihood - kl`` is a one-sample estimate of the ELBO; ``kl`` is the
        analytic ``KL(q(z|x) || p(z))``; ``chi2`` is computed from the decoded posterior
        mean, without gradient. ``noise_std`` broadcasts against the images (e.g.
        ``[B, 1, 1]``).
        """
        q = self.posterior(image, training=training)
        if eps is None:
            eps = keras.random.normal(tf.shape(q.mean()), dtype=self._dtype,
                                      seed=self.seed_generator)
        else:
            eps = tf.cast(eps, self._dtype)
        z = q.mean() + q.stddev() * eps
        loglik = self.likelihood(z, noise_std, training=training).log_prob(image)
        kl = tfd.kl_divergence(q, self.prior())
        recon = tf.stop_gradient(self.decoder(tf.stop_gradient(q.mean()), training=False))
        axes = list(range(1, 1 + len(self.data_shape)))
        chi2 = tf.reduce_mean(tf.square((image - recon) / noise_std), axis=axes)
        return loglik, kl, chi2

    def kl_weight(self, step=None):
        """The KL weight ``beta_t`` at optimizer step ``step`` (the current one by default)."""
        if self.kl_warmup_steps == 0:
            return tf.constant(self.beta, self._dtype)
        if step is None:
            step = self.optimizer.iterations if self.optimizer is not None else 0
        frac = tf.minimum(1.0, (tf.cast(step, self._dtype) + 1.0) / float(self.kl_warmup_steps))
        return self.beta * frac

    def _update_metrics(self, loss, loglik, kl, chi2):
        self.loss_tracker.update_state(loss)
        self.elbo_tracker.update_state(loglik - kl)
        self.kl_tracker.update_state(kl)
        self.loglik_tracker.update_state(loglik)
        self.chi2_tracker.update_state(chi2)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        image, noise = self._unpack(data, "VAE.train_step")
        with tf.GradientTape() as tape:
            loglik, kl, chi2 = self.elbo_terms(image, noise, training=True)
            loss = -tf.reduce_mean(loglik - self.kl_weight() * kl)
            scaled = scale_loss_for_replicas(loss)
            if self.losses:  # regularisers of the sub-models
                scaled = scaled + scale_loss_for_replicas(tf.add_n(self.losses))
            scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update_metrics(loss, loglik, kl, chi2)

    def test_step(self, data):
        image, noise = self._unpack(data, "VAE.test_step")
        loglik, kl, chi2 = self.elbo_terms(image, noise, training=False)
        loss = -tf.reduce_mean(loglik - self.beta * kl)
        return self._update_metrics(loss, loglik, kl, chi2)

    # ----------------------------------------------------------------- export
    def export(self, filepath, format="tf_saved_model", verbose=None, overwrite: bool = False,
               **kwargs):
        """Export the encoder and the decoder as TF SavedModels in ``filepath/encoder`` and
        ``filepath/decoder``.

        The SavedModels load without tfstronglens (or Keras): ``m =
        tf.saved_model.load(filepath + "/decoder")``; ``m.serve(z)`` maps ``[B, K]`` latents
        to ``[B, *data_shape]`` images, and ``tf.saved_model.load(filepath +
        "/encoder").serve(x)`` maps images to ``{"mean": [B, K], "scale": [B, K]}`` (the
        posterior's parameters). Both are also the ``serving_default`` signatures.

        The directory is written beside the target and renamed into place (atomic: a
        reader never sees half an export). An existing ``filepath`` is a
        ``FileExistsError`` unless ``overwrite=True``.
        """
        if format != "tf_saved_model":
            raise ValueError(f"format must be 'tf_saved_model', got {format!r}")
        from ..io._atomic import atomic_directory

        filepath = os.fspath(filepath)
        with atomic_directory(filepath, overwrite=overwrite) as tmp:
            os.makedirs(tmp)
            dt = self._dtype
            enc = keras.export.ExportArchive()
            enc.track(self.encoder)
            k = self.latent_dim

            def encode_fn(x):
                p = self.encoder(x, training=False)
                return {"mean": p[..., :k],
                        "scale": tf.nn.softplus(p[..., k:]) + tf.cast(MIN_SCALE, p.dtype)}

            enc.add_endpoint("serve", encode_fn,
                             input_signature=[tf.TensorSpec([None, *self.data_shape], dt)])
            enc.write_out(os.path.join(tmp, "encoder"), verbose=False)
            dec = keras.export.ExportArchive()
            dec.track(self.decoder)
            dec.add_endpoint("serve", lambda z: self.decoder(z, training=False),
                             input_signature=[tf.TensorSpec([None, k], dt)])
            dec.write_out(os.path.join(tmp, "decoder"), verbose=False)
        return filepath
