"""Mass and light profiles with lenstronomy's parameter names and conventions."""

from .base import PROFILE_REGISTRY, LightProfile, MassProfile, Profile, get_profile
from .epl import EPL
from .light import Gaussian, Sersic, SersicEllipse
from .multipole import EllipticalMultipole, Multipole
from .nfw import NFW
from .pixelated_convergence import PixelatedConvergence
from .pixelated_source import PixelatedSource
from .pjaffe import PseudoJaffe
from .point_mass import PointMass
from .shear import Shear
from .sie import SIE
from .sis import SIS
from .tnfw import TNFW

__all__ = [
    "Profile",
    "MassProfile",
    "LightProfile",
    "PROFILE_REGISTRY",
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
