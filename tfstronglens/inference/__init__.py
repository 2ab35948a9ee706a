"""Probabilistic inference: the lens model as TFP joint distributions, MAP, VI, subhalo
detection (and, when present, HMC/NUTS and diagnostics)."""

from .amortized import AMORTIZED_INITS, amortized_starts
from .calibration import TARPResult, interval_coverage, tarp_coverage
from .detection import (NullCalibration, SubhaloDetection, SubhaloScan, calibrate_null,
                        detect_subhalo, empirical_p_value, fit_null_distribution,
                        scan_subhalo, subhalo_point, wilks_significance)
from .diagnostics import (
    effective_sample_size,
    format_summary,
    potential_scale_reduction,
    save_samples,
    summarize,
)
from .map import MAPResult, find_map, polish_levenberg_marquardt
from .mcmc import MCMCResult, sample_hmc
from .kernels import SAMPLERS, Sampler
from .model import LensModel, build_model, log_uniform
from .pipeline import (FIT_OUTPUT_FILES, ConvergenceWarning, FitResult, fit_lens, hmc_advice,
                       write_fit_outputs)
from .sensitivity import (SensitivityMap, detection_threshold, sensitivity_map,
                          write_sensitivity_outputs)
from .population import PopulationPosterior, ensemble_coverage, population_posterior
from .vi import LaplaceResult, VIResult, fit_vi, laplace_approximation
from .reconstruction import (
    SourceReconstruction,
    pixelated_inversion,
    reconstruct_source,
    source_init_from_rim,
)

__all__ = [
    "fit_lens",
    "amortized_starts",
    "AMORTIZED_INITS",
    "interval_coverage",
    "tarp_coverage",
    "TARPResult",
    "reconstruct_source",
    "pixelated_inversion",
    "SourceReconstruction",
    "source_init_from_rim",
    "FitResult",
    "write_fit_outputs",
    "FIT_OUTPUT_FILES",
    "ConvergenceWarning",
    "hmc_advice",
    "LensModel",
    "build_model",
    "log_uniform",
    "find_map",
    "polish_levenberg_marquardt",
    "MAPResult",
    "fit_vi",
    "VIResult",
    "LaplaceResult",
    "laplace_approximation",
    "detect_subhalo",
    "SubhaloDetection",
    "scan_subhalo",
    "SubhaloScan",
    "subhalo_point",
    "wilks_significance",
    "calibrate_null",
    "NullCalibration",
    "empirical_p_value",
    "fit_null_distribution",
    "sample_hmc",
    "Sampler",
    "SAMPLERS",
    "MCMCResult",
    "potential_scale_reduction",
    "effective_sample_size",
    "summarize",
    "format_summary",
    "save_samples",
    "sensitivity_map",
    "SensitivityMap",
    "detection_threshold",
    "write_sensitivity_outputs",
    "PopulationPosterior",
    "population_posterior",
    "ensemble_coverage",
]
