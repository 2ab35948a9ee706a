"""Simulated strong-lens datasets: priors, batched rendering, FITS/ECSV writers."""

from .generator import DEFAULT_PRIORS, LensDatasetGenerator, LensSimulationConfig
from .population import POPULATION_PARAMETERS, PopulationPairSimulator, PopulationPrior
from .writer import write_dataset

__all__ = ["LensSimulationConfig", "LensDatasetGenerator", "DEFAULT_PRIORS", "write_dataset",
           "PopulationPrior", "PopulationPairSimulator", "POPULATION_PARAMETERS"]
