"""Observations (noise, units, instruments), cosmology and subhalo populations."""

from .instruments import INSTRUMENTS, get_instrument, instrument_names
from .observation import Observation
from .cosmology import LensCosmology
from .halos import (Duffy08Concentration, isothermal_enclosed_mass, tidal_radius,
                    truncation_radius_isothermal)
from .subhalo_mass import effective_lensing_mass, enclosed_mass, perturbation_radius
from .subhalos import (LOVELL20_HALO, LOVELL20_SUBHALO, SubhaloMassFunction, SubhaloPopulation,
                       UniformAnnulus, subhalo_deflection, subhalo_lens_kwargs,
                       unstack_lens_kwargs, wdm_suppression)

__all__ = ["Observation", "INSTRUMENTS", "get_instrument", "instrument_names"]
__all__ += [
    "LensCosmology",
    "Duffy08Concentration",
    "tidal_radius",
    "isothermal_enclosed_mass",
    "truncation_radius_isothermal",
    "SubhaloMassFunction",
    "UniformAnnulus",
    "SubhaloPopulation",
    "subhalo_lens_kwargs",
    "unstack_lens_kwargs",
    "subhalo_deflection",
    "wdm_suppression",
    "enclosed_mass",
    "perturbation_radius",
    "effective_lensing_mass",
    "LOVELL20_SUBHALO",
    "LOVELL20_HALO",
]
