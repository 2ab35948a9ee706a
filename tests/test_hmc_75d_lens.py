"""NUTS convergence on the 75-parameter lens posterior (issue #5 validation, slow).

The reference work samples ~75 parameters: the 64 latents of a VAE source plus the lens.
Here: the demo's HST/ACS-like image (64x64, 0.05") at arc S/N 50 of an EPL + shear lens
(8 parameters) and the pretrained VAE source (64 latents, amplitude, position), without
subhalos, fitted by the public pipeline (multi-start MAP -> full-rank VI -> NUTS with a
dense metric adapted in Stan's windows). It must converge: rank-normalised split R-hat
(Vehtari et al. 2021) below 1.01 for every parameter, no divergences after warm-up, and
the lens parameters' truths inside their posteriors.

Opt-in (``pytest -m slow tests/test_hmc_75d_lens.py``): NUTS costs ~37 ms per leapfrog
step of the 4 chains on the 2-core CPU (without XLA), and the run takes over an hour
there. Status when written (session 3): the pipeline path was smoke-run with tiny
settings (4 chains x 50 steps, end to end); a full run was stopped unfinished after
45 minutes, so this test has not yet been seen to pass. Run it on a GPU or overnight.
"""

import numpy as np
import pytest

from tfstronglens.inference import fit_lens
from tfstronglens.inference.demo import demo_problem


@pytest.mark.slow
def test_nuts_converges_on_75_parameter_lens_posterior():
    model, truth, data = demo_problem(snr=50.0, lens="epl+shear", num_subhalos=0, seed=3)
    assert model.num_params == 75
    res = fit_lens(model, data, method="hmc", seed=0, num_starts=16, map_steps=300,
                   vi_steps=300, num_chains=4, num_burnin=400, num_results=500,
                   max_tree_depth=8, progress=False)
    rhat = {n: s["r_hat"] for n, s in res.summary.items()}
    worst = max(rhat, key=rhat.get)
    assert rhat[worst] < 1.01, (worst, rhat[worst])
    assert int(np.sum(res.mcmc.num_divergences)) == 0
    ess = min(s["ess_bulk"] for s in res.summary.values())
    assert ess > 100, ess
    for name in ("lens.0.theta_E", "lens.0.gamma", "lens.0.e1", "lens.0.e2",
                 "lens.0.center_x", "lens.0.center_y", "lens.1.gamma1", "lens.1.gamma2"):
        s = res.summary[name]
        assert abs(s["mean"] - truth[name]) < 4.0 * s["std"], (name, s, truth[name])
