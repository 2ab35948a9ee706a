"""TensorFlow Datasets builders; importing this module registers them with ``tfds``.

* ``lens_simulations``: simulated galaxy-galaxy strong lenses
  (:mod:`tfstronglens.datasets.lens_simulations`), e.g.
  ``tfds.load("lens_simulations/euclid_vis-none-64")``.
"""

from .lens_simulations import LensSimulations, LensSimulationsConfig

__all__ = ["LensSimulations", "LensSimulationsConfig"]
