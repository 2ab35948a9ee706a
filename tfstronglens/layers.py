"""Keras 3 layers of tfstronglens (importing this module registers them for
``keras.saving.load_model``)."""

from .lensing.layer import LensingLayer

__all__ = ["LensingLayer"]
