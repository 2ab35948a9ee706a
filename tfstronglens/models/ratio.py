r"""A neural likelihood-ratio estimator of the subhalo population from lens images.

Brehmer, Mishra-Sharma, Hermans, Louppe & Cranmer 2019 (ApJ 886, 49; arXiv:1909.02005)
learn the likelihood ratio of lens images under different subhalo populations with a
classifier; the log-ratios of many lenses add up to a posterior of the population
parameters ``theta`` (:mod:`tfstronglens.simulation.population`). Here:

#### What the network is

One network ``f(x, theta)`` of an image and *one* parameter point, read as
``log p(x | theta)`` up to a function of ``x`` alone: the ratio between any two points is
``log r(x | theta_0, theta_1) = f(x, theta_0) - f(x, theta_1)`` (Brehmer's parameterised
``r(x | theta_0, theta_1)``). Why this form:

* it is consistent by construction (``r(0, 1) r(1, 2) = r(0, 2)``), and
  ``exp f(x, theta) p(theta)`` is the posterior up to normalisation, so a grid over
  ``theta`` gives the posterior of one lens or, summing ``f`` over lenses, of many;
* the reference point ``theta_1`` is a simulated parameter point rather than the
  marginal ``p(x)`` (the "joint vs. product of marginals" classifier of Hermans et al.
  2020): the *joint* ratio ``p(z | theta_0) / p(z | theta_1)`` that the gold-mining
  losses regress on is tractable for two points, while ``p(z)`` is not.

Layout: the image is read as S/N per pixel (``image / noise``, linear by default:
the lens CNN's ``asinh`` compression would shrink a subhalo's change of a bright arc
pixel by that pixel's S/N, while the likelihood weighs it linearly) by a :class:`~tfstronglens.models.amortized.ResNetBackbone` into ``features``
numbers, computed once per image; an MLP of those and the standardised ``theta`` (the
prior box mapped to ``[-1, 1]``) gives ``f``. A grid of ``G`` points costs one backbone
call and ``G`` MLP calls per image (:meth:`PopulationRatioEstimator.log_ratio_grid`).

#### Losses (:data:`RATIO_LOSSES`)

Training pairs come from :class:`~tfstronglens.simulation.population.PopulationPairSimulator`:
``x`` drawn at ``theta_0`` (``y = 1``) or ``theta_1`` (``y = 0``), with the joint log
ratio ``log r(x, z | theta_0, theta_1)`` and the joint score ``t(x, z | theta)`` at the
point ``x`` was drawn at. With ``s = f(x, theta_0) - f(x, theta_1)`` the classifier's
logit:

* ``"classifier"`` (CARL, Cranmer et al. 2015): binary cross-entropy of ``s`` against
  ``y``. Its minimiser is ``s = log p(x | theta_0) / p(x | theta_1)``.
* ``"alices"`` (Brehmer et al. 2020, PNAS 117, 5242, "ALICES"): the cross-entropy
  against the *soft* label ``sigmoid(log r(x, z | theta_0, theta_1))`` (the joint
  ratio, whose expectation given ``x`` is the ratio sought, so the minimiser is the
  same), plus ``score_weight`` times the squared error between ``grad_theta f(x, theta)``
  and the joint score ``t(x, z | theta)`` at the simulated point (its minimiser is
  ``grad_theta log p(x | theta)``), both in the standardised coordinates. The soft label
  removes the label noise of which point ``x`` came from, and the score term tells the
  network how ``log p`` changes locally: both cut the number of simulations needed
  (``benchmarks/population.py`` measures by how much here).

Both losses add ``latent_weight`` times the squared error of an auxiliary head that
predicts, from the image features alone, a summary of the latent subhalos (their number and
log total mass, :meth:`~tfstronglens.simulation.population.PopulationPairSimulator.latent_summary`):
latent supervision, another thing only the simulator knows. It does not change the
minimiser of the ratio losses (it only shapes the features they read), but it gives the
features a direct signal: the classifier's signal about the population is weak per image
(on the default simulation, the ideal classifier *that knows the subhalos* reaches a
cross-entropy of 0.53 against 0.69 by chance). Measured on a fixed lens with only the
subhalos varying: without the auxiliary head, neither loss moved off chance in 3000 steps;
with it, both did within 300 (``benchmarks/README.md``).

Metrics reported during training: ``loss``, ``bce`` (the cross-entropy against the hard
labels ``y``, the same number for both losses, lower is better), ``score_mse`` and
``latent_mse``.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from .amortized import ResNetBackbone, snr_input
from .replicas import scale_loss_for_replicas

__all__ = ["PopulationRatioEstimator", "RATIO_LOSSES", "PRETRAINED_RATIO", "load_ratio_estimator"]

#: File name of the shipped estimator in ``tfstronglens/models/pretrained/``.
PRETRAINED_RATIO = "population_ratio.keras"

#: The training losses (see the module docs).
RATIO_LOSSES = ("alices", "classifier")


@keras.saving.register_keras_serializable(package="tfstronglens")
class PopulationRatioEstimator(keras.Model):
    r"""``f(x, theta) = log p(x | theta) + c(x)`` (see the module docs).

    Args:
      param_names: the population parameters (names of
        :data:`~tfstronglens.simulation.population.POPULATION_PARAMETERS`).
      prior_low, prior_high: their uniform prior box (one value per name).
      num_pix, pixel_scale: the image size and arcsec per pixel it is trained for.
      filters, features: the :class:`~tfstronglens.models.amortized.ResNetBackbone`.
      hidden: widths of the MLP of features and ``theta``.
      loss: one of :data:`RATIO_LOSSES`; ``score_weight``: the weight of the score term
        of ``"alices"``.
      simulation: the ``LensSimulationConfig`` dict the estimator is trained on (kept
        with the model: what ``infer-population --show-config`` prints and the
        configuration images must match).

    Inputs: ``{"image": [B, n, n], "noise": [B, n, n] or [B], "theta": [B, D]}``;
    ``call`` returns ``f`` ``[B]``. ``fit`` trains on dicts of paired simulations.
    """

    def __init__(self, param_names, prior_low, prior_high, num_pix: int = 64,
                 pixel_scale: float = 0.05, filters=(16, 32, 64, 128), features: int = 128,
                 hidden=(128, 128), loss: str = "alices", score_weight: float = 1.0,
                 simulation: dict | None = None, calibration: float = 1.0,
                 input_scale: str = "linear", latent_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        from ..simulation.population import PopulationPrior

        self.prior = PopulationPrior.from_names(
            list(param_names), {n: (lo, hi) for n, lo, hi in
                                zip(param_names, np.ravel(prior_low), np.ravel(prior_high))})
        if loss not in RATIO_LOSSES:
            raise ValueError(f"loss must be one of {RATIO_LOSSES}, got {loss!r}")
        score_weight, latent_weight = float(score_weight), float(latent_weight)
        for name, w in (("score_weight", score_weight), ("latent_weight", latent_weight)):
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be >= 0, got {w!r}")
        self.latent_weight = latent_weight
        self.num_pix, self.pixel_scale = int(num_pix), float(pixel_scale)
        self.filters, self.features = [int(f) for f in filters], int(features)
        self.hidden = [int(h) for h in hidden]
        self.loss_kind, self.score_weight = loss, score_weight
        self.simulation = json.loads(json.dumps(simulation)) if simulation else None
        if input_scale not in ("linear", "asinh"):
            raise ValueError(f"input_scale must be 'linear' or 'asinh', got {input_scale!r}")
        self.input_scale = input_scale
        self.set_calibration(calibration)
        self.backbone = ResNetBackbone(self.filters, self.features, name="backbone")
        self.mlp = [keras.layers.Dense(h, activation="silu", name=f"mlp{i}")
                    for i, h in enumerate(self.hidden)]
        self.out = keras.layers.Dense(1, name="log_ratio")
        self.latent_head = keras.layers.Dense(2, name="latent_summary")
        self.trackers = {k: keras.metrics.Mean(name=k)
                         for k in ("loss", "bce", "score_mse", "latent_mse")}
        n = self.num_pix
        self.build({"image": (None, n, n), "noise": (None, n, n), "theta": (None, self.dim)})

    def set_calibration(self, scale: float):
        """Multiply every log-ratio by ``scale`` (temperature scaling, fitted on held-out
        pairs by :func:`~tfstronglens.models.ratio_training.fit_calibration`)."""
        scale = float(scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"calibration must be a positive number, got {scale!r}")
        self.calibration = scale
        self.__dict__.pop("_grid_fn", None)

    @property
    def param_names(self) -> list:
        return list(self.prior.names)

    @property
    def dim(self) -> int:
        return self.prior.dim

    def build(self, input_shape):
        self.backbone.build((None, self.num_pix, self.num_pix, 1))
        width = self.features + self.dim
        for layer in self.mlp:
            layer.build((None, width))
            width = layer.units
        self.out.build((None, width))
        self.latent_head.build((None, self.features))
        self.built = True

    # ---------------------------------------------------------------- forward
    def embed(self, inputs):
        """Backbone features ``[B, features]`` of ``{"image", "noise"}``."""
        return self.backbone(snr_input(inputs, self.num_pix,
                                       compress=self.input_scale == "asinh"))

    def head(self, features, u):
        """``f`` from features ``[B, F]`` and *standardised* ``u [B, ..., D]`` (any number
        of middle axes, e.g. grid points): ``[B, ...]``."""
        u = tf.convert_to_tensor(u, tf.float32)
        extra = u.shape.rank - 2
        h = tf.reshape(features, [-1] + [1] * extra + [self.features])
        h = tf.concat([tf.broadcast_to(h, tf.concat([tf.shape(u)[:-1], [self.features]], 0)),
                       u], axis=-1)
        for layer in self.mlp:
            h = layer(h)
        return self.out(h)[..., 0] * self.calibration

    def call(self, inputs, training=False):
        return self.head(self.embed(inputs), self.prior.standardize(inputs["theta"]))

    def log_ratio(self, inputs, theta_0, theta_1):
        """``log r(x | theta_0, theta_1) = f(x, theta_0) - f(x, theta_1)`` ``[B]``."""
        h = self.embed(inputs)
        std = self.prior.standardize
        return self.head(h, std(theta_0)) - self.head(h, std(theta_1))

    def log_ratio_grid(self, inputs, grid, batch_size: int = 64) -> np.ndarray:
        """``f(x_b, theta_g)`` ``[B, G]`` (numpy, float64) for images ``inputs`` and
        parameter points ``grid [G, D]``, ``batch_size`` images per compiled call."""
        grid = np.asarray(grid, np.float32)
        if grid.ndim != 2 or grid.shape[1] != self.dim:
            raise ValueError(f"grid must be [num_points, {self.dim}] ({self.param_names}), "
                             f"got shape {grid.shape}")
        if "_grid_fn" not in self.__dict__:
            self._grid_fn = tf.function(
                lambda image, noise, u: self.head(
                    self.embed({"image": image, "noise": noise}),
                    tf.broadcast_to(u[None], tf.concat([tf.shape(image)[:1], tf.shape(u)], 0))),
                autograph=False)
        image = np.asarray(inputs["image"], np.float32)
        noise = np.broadcast_to(np.asarray(inputs["noise"], np.float32).reshape(
            image.shape[:1] + (1, 1) if np.ndim(inputs["noise"]) == 1 else image.shape),
            image.shape)
        u = self.prior.standardize(grid)
        out = []
        for i in range(0, len(image), int(batch_size)):
            out.append(self._grid_fn(tf.constant(image[i:i + batch_size]),
                                     tf.constant(noise[i:i + batch_size]), u).numpy())
        return np.concatenate(out).astype(np.float64)

    # ---------------------------------------------------------------- training
    def losses_of(self, data):
        """``(loss, bce, score_mse, latent_mse)`` of a batch of pairs (see the module
        docs)."""
        h = self.embed(data)
        u0, u1 = self.prior.standardize(data["theta_0"]), self.prior.standardize(data["theta_1"])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([u0, u1])
            f0, f1 = self.head(h, u0), self.head(h, u1)
            total = tf.reduce_sum(f0) + tf.reduce_sum(f1)
        logit = f0 - f1
        y = tf.cast(data["y"], tf.float32)
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit))
        g0, g1 = tape.gradient(total, [u0, u1])
        grad = tf.where(y[:, None] > 0, g0, g1)
        half_width = (np.float32(self.prior.high) - np.float32(self.prior.low)) / 2
        target = tf.cast(data["joint_score"], tf.float32) * half_width
        score_mse = tf.reduce_mean(tf.reduce_sum(tf.square(grad - target), -1))
        latent_mse = tf.reduce_mean(tf.reduce_sum(tf.square(
            self.latent_head(h) - tf.cast(data["latent_summary"], tf.float32)), -1))
        if self.loss_kind == "classifier":
            loss = bce
        else:
            soft = tf.sigmoid(tf.cast(data["joint_log_ratio"], tf.float32))
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=soft,
                                                                          logits=logit))
            loss = loss + self.score_weight * score_mse
        return loss + self.latent_weight * latent_mse, bce, score_mse, latent_mse

    def train_step(self, data):
        with tf.GradientTape() as tape:
            values = self.losses_of(data)
            scaled = scale_loss_for_replicas(values[0])
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update(*values)

    def test_step(self, data):
        return self._update(*self.losses_of(data))

    def _update(self, *values):
        for k, v in zip(("loss", "bce", "score_mse", "latent_mse"), values):
            self.trackers[k].update_state(v)
        return {k: t.result() for k, t in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ---------------------------------------------------------------- (de)serialisation
    def get_config(self):
        return {"param_names": self.param_names, "prior_low": list(self.prior.low),
                "prior_high": list(self.prior.high), "num_pix": self.num_pix,
                "pixel_scale": self.pixel_scale, "filters": self.filters,
                "features": self.features, "hidden": self.hidden, "loss": self.loss_kind,
                "score_weight": self.score_weight, "simulation": self.simulation,
                "calibration": self.calibration, "input_scale": self.input_scale,
                "latent_weight": self.latent_weight,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def export(self, filepath, format="tf_saved_model", verbose=None, overwrite: bool = False,
               **kwargs):
        """Export as a TF SavedModel that loads without tfstronglens or Keras:
        ``m = tf.saved_model.load(path)``; ``m.log_ratio(image, noise, theta)``
        (``[B, n, n]``, ``[B, n, n]``, ``[B, D]``) returns ``f(x, theta)`` ``[B]``
        (calibrated); ``m.param_names()``, ``m.prior_low()``, ``m.prior_high()``. Written
        beside the target and renamed into place; an existing ``filepath`` is a
        ``FileExistsError`` unless ``overwrite=True``."""
        import os

        from ..io._atomic import atomic_directory

        if format != "tf_saved_model":
            raise ValueError(f"format must be 'tf_saved_model', got {format!r}")
        filepath = os.fspath(filepath)
        n, d = self.num_pix, self.dim
        consts = {"param_names": tf.constant(self.param_names),
                  "prior_low": tf.constant(self.prior.low, tf.float32),
                  "prior_high": tf.constant(self.prior.high, tf.float32)}
        with atomic_directory(filepath, overwrite=overwrite) as tmp:
            archive = keras.export.ExportArchive()
            archive.track(self)
            spec = tf.TensorSpec([None, n, n], tf.float32)
            archive.add_endpoint(
                "log_ratio", lambda image, noise, theta: self(
                    {"image": image, "noise": noise, "theta": theta}),
                input_signature=[spec, spec, tf.TensorSpec([None, d], tf.float32)])
            for name, value in consts.items():
                archive.add_endpoint(name, lambda v=value: v, input_signature=[])
            archive.write_out(tmp, verbose=False)
        return filepath


def load_ratio_estimator(spec=None) -> PopulationRatioEstimator:
    """The ratio estimator ``spec`` names: ``None``/``"pretrained"`` (the shipped one), an
    instance, a ``train-ratio`` output folder or a ``.keras`` file (the rules of
    :func:`~tfstronglens.models._pretrained.load_model_spec`)."""
    from ._pretrained import load_model_spec

    return load_model_spec(spec, PopulationRatioEstimator, what="population ratio estimator",
                           inner="ratio.keras", pretrained=PRETRAINED_RATIO,
                           command="train-ratio")
