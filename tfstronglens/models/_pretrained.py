"""VAEs shipped inside the package (``tfstronglens/models/pretrained/<name>.keras``)."""

from __future__ import annotations

import os

__all__ = ["PRETRAINED_MODELS", "load_pretrained_vae", "pretrained_path", "PRETRAINED_DIR",
           "load_model_spec"]

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


def load_model_spec(spec, cls, *, what: str, inner: str, pretrained, command: str):
    """The ``cls`` model named by ``spec``, the one rule of the package's model loaders
    (:func:`~tfstronglens.models.load_rim`, :func:`~tfstronglens.models.load_lens_cnn`):
    ``None`` or ``"pretrained"`` (the shipped file ``pretrained`` in
    :data:`PRETRAINED_DIR`; ``pretrained`` may also be a ``{name: file}`` table of shipped
    models, ``"pretrained"`` among the names), an instance (returned as is), a training
    folder holding ``inner`` (written by ``tfstronglens <command> --out DIR``) or a
    ``.keras`` path. ``FileNotFoundError`` for a missing file, ``ValueError`` for one that
    does not hold a ``cls`` (``what`` names it in the messages)."""
    import keras

    if isinstance(spec, cls):
        return spec
    shipped = {"pretrained": pretrained} if isinstance(pretrained, str) else dict(pretrained)
    if spec is None or (isinstance(spec, str) and spec in shipped):
        path = os.path.join(PRETRAINED_DIR, shipped["pretrained" if spec is None else spec])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the shipped {what} is not in this installation ({path!r}); "
                                    f"train one with `tfstronglens {command} --out DIR` and "
                                    "pass --model DIR")
    else:
        try:
            path = os.fspath(spec)
        except TypeError:
            raise ValueError(f"model must be a {what}, a folder with {inner} or a .keras file, "
                             f"got {spec!r}") from None
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, inner)):
                raise ValueError(f"model folder {path!r} holds no {inner}: it is not a {what} "
                                 f"training folder (tfstronglens {command} --out DIR)")
            path = os.path.join(path, inner)
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"model {path!r} does not exist")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not such a model"
        raise ValueError(f"model {path!r} could not be loaded as a {what}: {exc}") from None
    if not isinstance(model, cls):
        raise ValueError(f"model {path!r} holds a {type(model).__name__}, not a {what}")
    return model
