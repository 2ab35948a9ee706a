"""Grids, ray tracing, rendering and PSFs."""

from .grid import PixelGrid
from .psf import PSF, GaussianPSF, PixelPSF, convolve
from .simulator import Simulator
from .layer import LensingLayer

__all__ = ["PixelGrid", "PSF", "GaussianPSF", "PixelPSF", "convolve", "Simulator", "LensingLayer"]
