"""VAEs shipped inside the package (``tfstronglens/models/pretrained/<name>.keras``)."""

from __future__ import annotations

import os

__all__ = ["PRETRAINED_MODELS", "load_pretrained_vae", "pretrained_path", "PRETRAINED_DIR"]

#: Folder of the shipped model files (package data, see setup.cfg).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")

#: Known pretrained models: name -> description.
PRETRAINED_MODELS = {
    "synthetic_galaxies_64": "VAE (latent_dim 64, 64x64 stamps, base_filters 16, max_filters 64) "
                             "trained on the synthetic_galaxies/64 TFDS dataset for 12 epochs "
                             "(see tfstronglens/models/pretrained/README.md)",
}


def pretrained_path(name: str = "synthetic_galaxies_64") -> str:
    """Path of the file of pretrained model ``name`` (which may not exist yet)."""
    if not isinstance(name, str) or name not in PRETRAINED_MODELS:
        raise ValueError(f"unknown pretrained VAE {name!r}; known models: "
                         f"{sorted(PRETRAINED_MODELS)}")
    return os.path.join(PRETRAINED_DIR, f"{name}.keras")


def load_pretrained_vae(name: str = "synthetic_galaxies_64", compile: bool = False):
    """Load a VAE shipped with the package.

    Args:
      name: one of :data:`PRETRAINED_MODELS` (default ``"synthetic_galaxies_64"``).
      compile: restore the training configuration (optimizer) too (default False).

    Returns:
      A :class:`~tfstronglens.models.VAE`; its ``decoder`` is the source model of
      :class:`~tfstronglens.models.VAESource` (which also accepts the name directly).

    Raises:
      ValueError: for an unknown name.
      FileNotFoundError: when the model file is not in this installation.

    >>> vae = load_pretrained_vae("synthetic_galaxies_64")       # doctest: +SKIP
    >>> images = vae.decode(vae.sample_prior(4, seed=0))        # doctest: +SKIP
    """
    import keras

    from .vae import VAE  # noqa: F401  (registers the class for deserialisation)

    path = pretrained_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the pretrained VAE {name!r} is not in this installation: {path!r} does not exist. "
            "Train one with `tfstronglens train-vae --dataset synthetic_galaxies --out DIR` and "
            "load DIR/vae.keras with keras.models.load_model (or copy it to that path), or "
            "reinstall tfstronglens from a release that ships the weights."
        )
    return keras.models.load_model(path, compile=compile)
