"""Learned models (Keras 3): the galaxy variational autoencoder and its lensing source.

* :class:`VAE`: a convolutional VAE with a noise-aware Gaussian likelihood (TFP);
  :func:`make_encoder`, :func:`make_decoder` build its networks.
* :class:`VAESource`: a trained decoder as a differentiable source light profile
  (parameters ``z``, ``amp``, ``center_x``, ``center_y``) for the
  :class:`~tfstronglens.Simulator`.
* :func:`train_vae`: train on a galaxy dataset with checkpoints, resume and a report.
* :func:`load_pretrained_vae`: a VAE shipped with the package.
* :class:`RIM`: the recurrent inference machine source reconstructor; :func:`load_rim`
  (the shipped one), :func:`train_rim` on simulated lenses.
* :class:`LensPosteriorNetwork`: a CNN that gives a posterior over the lens parameters in
  milliseconds (Gaussian or normalizing-flow head); :func:`load_lens_cnn` (the shipped
  one), :func:`train_cnn` on simulated lenses.
* :class:`PopulationRatioEstimator`: a likelihood-ratio estimator of the subhalo population
  (classifier or ALICES loss); :func:`load_ratio_estimator`, :func:`train_ratio` on paired
  simulations, :func:`evaluate_ratio` (calibration curve, ensemble coverage).
"""

from .vae import NORMALIZATIONS, VAE, check_image_size, make_decoder, make_encoder
from .source import VAESource, load_decoder
from ._pretrained import PRETRAINED_MODELS, load_pretrained_vae, pretrained_path
from .training import train_on_stream, train_vae
from .rim import RIM, ConvGRU, footprint_mask, load_rim, source_error
from .rim_training import evaluate_rim, rim_dataset, train_rim
from .amortized import (POSTERIOR_HEADS, PRETRAINED_CNNS, LensPosteriorNetwork, load_lens_cnn,
                        posterior_parameter_names)
from .amortized_training import DEFAULT_CNN_SIMULATIONS, cnn_dataset, evaluate_cnn, train_cnn
from .ratio import RATIO_LOSSES, PopulationRatioEstimator, load_ratio_estimator
from .ratio_training import DEFAULT_RATIO_SIMULATION, evaluate_ratio, train_ratio

__all__ = [
    "VAE",
    "VAESource",
    "make_encoder",
    "make_decoder",
    "check_image_size",
    "NORMALIZATIONS",
    "load_decoder",
    "train_vae",
    "load_pretrained_vae",
    "pretrained_path",
    "PRETRAINED_MODELS",
    "PRETRAINED_CNNS",
    "train_on_stream",
    "RIM",
    "ConvGRU",
    "load_rim",
    "source_error",
    "footprint_mask",
    "train_rim",
    "rim_dataset",
    "evaluate_rim",
    "LensPosteriorNetwork",
    "POSTERIOR_HEADS",
    "load_lens_cnn",
    "posterior_parameter_names",
    "train_cnn",
    "cnn_dataset",
    "evaluate_cnn",
    "DEFAULT_CNN_SIMULATIONS",
    "PopulationRatioEstimator",
    "RATIO_LOSSES",
    "load_ratio_estimator",
    "train_ratio",
    "evaluate_ratio",
    "DEFAULT_RATIO_SIMULATION",
]
