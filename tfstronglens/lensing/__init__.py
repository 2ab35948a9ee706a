"""Grids, ray tracing, rendering and PSFs."""

from .grid import PixelGrid
from .psf import PSF, GaussianPSF, MoffatPSF, PixelPSF, convolve
from .simulator import Simulator
from .layer import LensingLayer
from .source_operator import SourceOperator

__all__ = ["PixelGrid", "PSF", "GaussianPSF", "MoffatPSF", "PixelPSF", "convolve", "Simulator", "LensingLayer",
           "SourceOperator"]
