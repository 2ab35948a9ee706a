"""HMC convergence on the 75-parameter lens posterior (issue #5 validation, slow).

The reference work samples ~75 parameters: the 64 latents of a VAE source plus the lens.
Here: the demo's HST/ACS-like image (64x64, 0.05") at arc S/N 50 of an EPL + shear lens
(8 parameters) and the pretrained VAE source (64 latents, amplitude, position), without
subhalos, fitted by the public pipeline with the model under XLA: multi-start MAP (16
starts x 300 Adam steps, no Levenberg-Marquardt polish) -> full-rank VI started at the
Laplace approximation -> ChEES-HMC with 8 chains, 100 warm-up steps (a dense metric
adapted in Stan's windows, started at the VI covariance) and 600 kept draws per chain
(the settings with which ``benchmarks/fit_vae.py`` met issue #19's 10-minute target on
its seed 0, not on seed 1: ``benchmarks/README.md``). It
must converge:
rank-normalised split R-hat (Vehtari et al. 2021) below 1.01 for every parameter, bulk
ESS above 1000, at most 0.1% divergent transitions after warm-up, and the lens
parameters' truths inside their posteriors.

Opt-in (``pytest -m slow tests/test_hmc_75d_lens.py``). With these settings (2026-12-07,
one core) it **fails narrowly** after 7.5 minutes: worst R-hat 1.0104 (``lens.0.gamma``),
the issue's 10-minute target not yet met on this seed. Recorded run (2026-11-26, 2-core
CPU shared with other jobs, then with 16 x 300 Adam + 30 LM steps, 32 chains and 300 +
300 steps, without XLA): worst R-hat 1.0084 (source.0.center_y),
min bulk / tail ESS 2493 / 2278, 1 divergence in 9600 post-warm-up transitions, every lens
truth within 1.5 sd; VI ELBO 14410.9 against a MAP log density of 14431.8; wall time
106 min (MAP 594 s, VI 94 s, ChEES 5662 s, including a 10-minute pause). It failed before
the Laplace fix of that day: the polished MAP has ~9 negative Hessian eigenvalues (VAE
latents), the Laplace start of VI was then thousands of nats off, and ChEES ended with
R-hat 1.73.
"""

import numpy as np
import pytest

from tfstronglens.inference import fit_lens
from tfstronglens.inference.demo import demo_problem


@pytest.mark.slow
def test_chees_converges_on_75_parameter_lens_posterior():
    model, truth, data = demo_problem(snr=50.0, lens="epl+shear", num_subhalos=0, seed=3,
                                      jit_compile=True)
    assert model.num_params == 75
    num_chains, num_results = 8, 600
    res = fit_lens(model, data, method="hmc", seed=0, num_starts=16, map_steps=300,
                   map_polish_steps=0, vi_steps=300, hmc_kernel="chees",
                   num_chains=num_chains, num_burnin=100, num_results=num_results,
                   max_tree_depth=8, progress=False)
    rhat = {n: s["r_hat"] for n, s in res.summary.items()}
    worst = max(rhat, key=rhat.get)
    assert rhat[worst] < 1.01, (worst, rhat[worst])
    transitions = num_chains * num_results
    assert int(np.sum(res.mcmc.num_divergences)) <= 1e-3 * transitions
    ess = min(s["ess_bulk"] for s in res.summary.values())
    assert ess > 1000, ess
    for name in ("lens.0.theta_E", "lens.0.gamma", "lens.0.e1", "lens.0.e2",
                 "lens.0.center_x", "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2"):
        s = res.summary[name]
        assert abs(s["mean"] - truth[name]) < 4.0 * s["std"], (name, s, truth[name])
