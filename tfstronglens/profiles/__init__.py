"""Mass and light profiles with lenstronomy's parameter names and conventions."""

from .base import PROFILE_REGISTRY, LightProfile, MassProfile, Profile, get_profile
from .light import Gaussian, Sersic, SersicEllipse
from .point_mass import PointMass
from .shear import Shear
from .sie import SIE
from .sis import SIS

__all__ = [
    "Profile",
    "MassProfile",
    "LightProfile",
    "PROFILE_REGISTRY",
    "get_profile",
    "SIS",
    "SIE",
    "Shear",
    "PointMass",
    "Sersic",
    "SersicEllipse",
    "Gaussian",
]
