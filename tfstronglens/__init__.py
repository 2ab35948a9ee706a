"""tfstronglens: differentiable strong gravitational lensing in TensorFlow.

The public API in one import::

    import tfstronglens as tsl
    grid = tsl.PixelGrid(60, 0.065, supersample=2)
    sim = tsl.Simulator(grid, lens=[tsl.EPL(), tsl.Shear()], source=[tsl.SersicEllipse()],
                        psf=tsl.GaussianPSF(0.1))
"""

__version__ = "0.1.0"

# The command line starts without TensorFlow's start-up log lines (unless --verbose): it is
# recognised here, before TensorFlow is first imported (see tfstronglens.cli_startup).
from .cli_startup import quiet_tensorflow_import as _quiet_tensorflow_import  # noqa: E402

with _quiet_tensorflow_import():
    import tensorflow as _tensorflow  # noqa: E402,F401
del _quiet_tensorflow_import, _tensorflow

from . import io, lensing, observation, profiles, runtime, simulation  # noqa: E402
from . import models  # noqa: E402  (Keras VAE galaxy source model)
from .lensing import (  # noqa: E402
    GaussianPSF,
    LensingLayer,
    MoffatPSF,
    PixelGrid,
    PixelPSF,
    Simulator,
    convolve,
)
from .observation import LensCosmology, Observation, SubhaloPopulation  # noqa: E402
from .profiles import (  # noqa: E402
    EPL,
    NFW,
    SIE,
    SIS,
    TNFW,
    Multipole,
    EllipticalMultipole,
    PseudoJaffe,
    Gaussian,
    LightProfile,
    MassProfile,
    PixelatedConvergence,
    PixelatedSource,
    PointMass,
    Sersic,
    SersicEllipse,
    Shear,
    get_profile,
)

__all__ = [
    "__version__",
    "io",
    "lensing",
    "observation",
    "profiles",
    "runtime",
    "simulation",
    "models",
    "PixelGrid",
    "GaussianPSF",
    "PixelPSF",
    "MoffatPSF",
    "Simulator",
    "LensingLayer",
    "Observation",
    "LensCosmology",
    "SubhaloPopulation",
    "convolve",
    "MassProfile",
    "LightProfile",
    "get_profile",
    "SIS",
    "SIE",
    "EPL",
    "Shear",
    "PointMass",
    "NFW",
    "TNFW",
    "Multipole",
    "EllipticalMultipole",
    "PseudoJaffe",
    "Sersic",
    "SersicEllipse",
    "Gaussian",
    "PixelatedSource",
    "PixelatedConvergence",
]
