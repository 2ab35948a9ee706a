"""TensorFlow Datasets builders; importing this module registers them with ``tfds``.

* ``lens_simulations``: simulated galaxy-galaxy strong lenses
  (:mod:`tfstronglens.datasets.lens_simulations`), e.g.
  ``tfds.load("lens_simulations/euclid_vis-none-64")``.
* ``synthetic_galaxies``: synthetic HST-like galaxy stamps, no download
  (:mod:`tfstronglens.datasets.synthetic_galaxies`), e.g. ``"synthetic_galaxies/64"``.
* ``cosmos_galaxies``: real HST stamps from a GalSim RealGalaxyCatalog in the TFDS
  ``manual_dir`` (:mod:`tfstronglens.datasets.cosmos_galaxies`), e.g. ``"cosmos_galaxies/64"``.

Both galaxy datasets share the features of :mod:`tfstronglens.datasets.galaxies`.

``lens_simulations`` and ``cosmos_galaxies`` build with Apache Beam when the build is given
Beam options (``tfds build ... --beam_pipeline_options=...`` or
``tfds.download.DownloadConfig(beam_options=...)``), writing the same records as the plain
build (``datasets/lens_simulations/BEAM.md``).
"""

from .cosmos_galaxies import CosmosGalaxies, CosmosGalaxiesConfig
from .lens_simulations import LensSimulations, LensSimulationsConfig
from .synthetic_galaxies import SyntheticGalaxies, SyntheticGalaxiesConfig

__all__ = ["LensSimulations", "LensSimulationsConfig", "SyntheticGalaxies",
           "SyntheticGalaxiesConfig", "CosmosGalaxies", "CosmosGalaxiesConfig"]
