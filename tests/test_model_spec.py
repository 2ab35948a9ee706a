"""Declarative model specs: shorthands as data, JSON round trips, any registered profile in
the main lens (multipoles), ties, and errors that name the spec's field."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfstronglens as tsl
from tfstronglens.inference import LensModel, find_map
from tfstronglens.inference.spec import LENS_SHORTHANDS, ModelSpec, expand_lens

OBS = tsl.Observation(40, 0.05, 2000.0, background_rms=0.05, psf=tsl.GaussianPSF(0.1))
TRUTH = {"lens.0.theta_E": 0.65, "lens.0.e1": 0.08, "lens.0.e2": -0.04,
         "lens.0.center_x": 0.02, "lens.0.center_y": -0.01, "lens.1.gamma1": 0.02,
         "lens.1.gamma2": 0.01, "lens.2.a_m": 0.05, "lens.2.phi_m": 0.25,
         "source.0.amp": 20.0, "source.0.R_sersic": 0.12, "source.0.n_sersic": 1.5,
         "source.0.e1": 0.1, "source.0.e2": 0.0, "source.0.center_x": 0.03,
         "source.0.center_y": 0.02}


def _same_density(a: LensModel, b: LensModel, seed=3):
    assert a.param_names == b.param_names
    x = a.sample_unconstrained_prior(4, seed=seed)
    data = a.simulate(a.from_flat(x[:1]), seed=1)[0]
    np.testing.assert_allclose(a.unconstrained_log_posterior(x, data, jit_compile=False),
                               b.unconstrained_log_posterior(x, data, jit_compile=False),
                               rtol=1e-6)


def test_shorthand_equals_its_components_and_json_round_trip(tmp_path):
    """"sie+shear" is the list [SIE, SHEAR] (same names, same posterior density); a spec
    written to JSON reads back equal and builds the same model."""
    short = LensModel(OBS, "sie+shear", "sersic", amp_scale=10.0)
    explicit = LensModel(OBS, [{"profile": "SIE"}, "shear"], "sersic", amp_scale=10.0)
    _same_density(short, explicit)
    assert short.param_names[:7] == ["lens.0.theta_E", "lens.0.e1", "lens.0.e2",
                                     "lens.0.center_x", "lens.0.center_y", "lens.1.gamma1",
                                     "lens.1.gamma2"]

    spec = ModelSpec.from_dict({
        "lens": "epl+shear+m4", "lens_light": "sersic", "source": "sersic",
        "subhalos": {"count": 1, "profile": "POINT_MASS", "mass_range": [1e8, 1e10]},
        "z_lens": 0.4, "z_source": 1.5,
        "priors": {"lens.0.theta_E": {"uniform": [0.5, 1.5]},
                   "lens.2.a_m": {"uniform": [0.0, 0.05]}},
        "fixed": {"lens.0.gamma": 2.0}})
    path = tmp_path / "model.json"
    spec.to_json(str(path))
    again = ModelSpec.from_json(str(path))
    assert again == spec and again.to_dict() == json.load(open(path))
    with pytest.raises(FileExistsError):
        spec.to_json(str(path))  # never overwrites silently
    a = LensModel(OBS, source="sersic", amp_scale=10.0, **spec.model_kwargs())
    b = LensModel(OBS, source="sersic", amp_scale=10.0, **again.model_kwargs())
    _same_density(a, b)
    assert "lens.0.gamma" not in a.param_names and "subhalo.0.mass" in a.param_names
    assert a.lens_cosmology.z_lens == 0.4
    lo, hi = (float(v) for v in (a.prior.model["lens.2.a_m"].low,
                                 a.prior.model["lens.2.a_m"].high))
    assert (lo, hi) == (0.0, pytest.approx(0.05))


def test_one_shorthand_table_and_the_simulator_does_not_import_inference():
    """``LENS_SHORTHANDS`` is built from the profiles' table (same names, profiles,
    settings; multipoles tied to the lens centre), and the dataset generator reads that
    table without importing the inference layer."""
    import subprocess
    import sys

    from tfstronglens.profiles.shorthands import LENS_SHORTHAND_COMPONENTS
    from tfstronglens.simulation.generator import LENS_PROFILES

    assert set(LENS_SHORTHANDS) == set(LENS_SHORTHAND_COMPONENTS)
    for name, comps in LENS_SHORTHANDS.items():
        assert [(c.profile, dict(c.settings)) for c in comps] == \
            [(p, dict(s)) for p, s in LENS_SHORTHAND_COMPONENTS[name]]
        assert all(c.tied.get("center_x") == "lens.0.center_x" for c in comps
                   if c.profile == "MULTIPOLE")
    assert LENS_PROFILES == {"sie+shear": "SIE", "epl+shear": "EPL"}
    code = ("import sys, tfstronglens.simulation.generator; "
            "sys.exit(any(m.startswith('tfstronglens.inference') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_shorthand_builds_and_renders():
    for name in LENS_SHORTHANDS:
        model = LensModel(OBS, name, "sersic", amp_scale=10.0, jit_compile=False)
        if name in ("sie+shear+m4", "epl+shear+m1m3m4"):
            img = model.render(model.sample_prior(2, seed=0))
            assert img.shape == (2, 40, 40) and np.all(np.isfinite(img))
    assert len(expand_lens("sie+shear+m1m3m4")) == 5


def test_tied_multipole_follows_the_lens_centre():
    """With "+m4" the multipole's centre is the main lens' centre: rendering equals the
    model whose multipole centre is fixed at the same (non-zero) values, and differs from
    one centred at the origin."""
    centre = {"lens.0.center_x": 0.07, "lens.0.center_y": -0.05}
    tied = LensModel(OBS, "sie+shear+m4", "sersic", amp_scale=10.0, fixed=centre,
                     jit_compile=False)
    comps = [dict(c.to_dict(), tied={}) for c in expand_lens("sie+shear+m4")]
    free = LensModel(OBS, comps, "sersic", amp_scale=10.0, jit_compile=False,
                     fixed={**centre, "lens.2.center_x": 0.07, "lens.2.center_y": -0.05})
    origin = LensModel(OBS, comps, "sersic", amp_scale=10.0, jit_compile=False,
                       fixed={**centre, "lens.2.center_x": 0.0, "lens.2.center_y": 0.0})
    params = {k: tf.constant([v]) for k, v in TRUTH.items() if k in tied.parameters}
    params["lens.2.a_m"] = tf.constant([0.08])
    np.testing.assert_allclose(tied.render(params), free.render(params), rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(tied.render(params) - origin.render(params))) > 1e-3


def test_map_recovers_an_m4_multipole():
    """Data from SIE + shear + an m = 4 multipole (a_4 = 0.05", 8% of theta_E): the MAP of
    the "sie+shear+m4" model recovers a_4 and phi_4, and fits the data to chi^2/pixel ~ 1;
    the model without multipoles cannot (its best chi^2 is worse by > 12 for 2 fewer
    parameters)."""
    model = LensModel(OBS, "sie+shear+m4", "sersic", amp_scale=10.0, jit_compile=False)
    truth = {k: tf.constant([v], tf.float32) for k, v in TRUTH.items()}
    data = model.simulate(truth, seed=5)[0]
    init = {k: v[0] for k, v in truth.items()}
    fit = find_map(model, data, num_starts=2, num_steps=30, learning_rate=0.01, lm_steps=10,
                   init=init, init_jitter=0.05,
                   seed=1, progress=False)
    best = fit.summary()
    assert best["lens.2.a_m"] == pytest.approx(0.05, abs=0.007)
    assert best["lens.2.phi_m"] == pytest.approx(0.25, abs=0.1)
    plain = LensModel(OBS, "sie+shear", "sersic", amp_scale=10.0, jit_compile=False)
    init_plain = {k: v for k, v in init.items() if not k.startswith("lens.2")}
    fit_plain = find_map(plain, data, num_starts=2, num_steps=30, learning_rate=0.01,
                         lm_steps=10, init=init_plain, init_jitter=0.05, seed=1,
                         progress=False)
    chi2 = [-2 * float(m.log_likelihood(f.summary(), data)) for m, f in
            ((model, fit), (plain, fit_plain))]
    assert chi2[1] - chi2[0] > 12.0, chi2


@pytest.mark.parametrize("spec,match", [
    ({"lens": ["SIE", "NOPE"]}, r"lens\[1\]\.profile: unknown profile 'NOPE'"),
    ({"lens": ["SIE", "SERSIC"]}, r"lens\[1\]\.profile: SERSIC is not a mass profile"),
    ({"lens": "sie+shear", "subhalos": 1}, "subhalos: a model with subhalos needs z_lens"),
    ({"lens": "sie+shear", "colour": 1}, r"unknown model spec field\(s\) \[.colour.\]"),
    ({"lens": "sie+shear", "priors": {"lens.0.theta_E": {"gauss": [0, 1]}}},
     r"priors\['lens.0.theta_E'\] must name one prior family"),
    ({"lens": "sie+shear", "priors": {"lens.0.theta_E": {"uniform": [2, 1]}}},
     "uniform needs low < high"),
    ({"lens": "sie+shear", "z_lens": 1.0, "z_source": 0.5}, "z_source must exceed z_lens"),
    ({"lens": [{"profile": "MULTIPOLE", "settings": {"m": 0}}]}, None),
])
def test_bad_specs_name_the_field(spec, match):
    if match is None:  # a bad setting is reported when the profile is made
        comps = ModelSpec.from_dict(spec).lens
        with pytest.raises(ValueError, match=r"lens\[0\]\.settings: m \(the multipole order\)"):
            LensModel(OBS, list(comps), "sersic", amp_scale=1.0)
        return
    with pytest.raises(ValueError, match=match):
        ModelSpec.from_dict(spec)


def test_bad_model_arguments_name_the_parameter():
    with pytest.raises(ValueError, match=r"priors\['lens.0.theta_E'\].*must be positive"):
        LensModel(OBS, "sie+shear", priors={"lens.0.theta_E": {"normal": [1.0, 0.2]}})
    with pytest.raises(ValueError, match=r"q of MULTIPOLE_ELL must be <= 1"):
        LensModel(OBS, ["SIE", {"profile": "MULTIPOLE_ELL", "settings": {"m": 4}}],
                  priors={"lens.1.q": {"uniform": [0.5, 1.5]}})
    kappa_map = {"profile": "PIXELATED_CONVERGENCE",
                 "settings": {"num_pix": 8, "pixel_scale": 0.25}}
    with pytest.raises(ValueError, match=r"priors\['lens.1.kappa'\] must have batch shape "
                                         r"\[\] and event shape \[8, 8\]"):
        LensModel(OBS, ["SIE", kappa_map],
                  priors={"lens.1.kappa": tfp.distributions.Normal(0.0, 0.1)})
    with pytest.raises(ValueError, match=r"lens\[1\]\.settings .* do not fit "
                                         "PIXELATED_CONVERGENCE"):
        LensModel(OBS, ["SIE", "PIXELATED_CONVERGENCE"])
    with pytest.raises(ValueError, match=r"lens\[1\]\.tied: SHEAR has no parameter 'q'"):
        LensModel(OBS, ["SIE", {"profile": "SHEAR", "tied": {"q": "lens.0.e1"}}])
    with pytest.raises(ValueError, match="tied to 'lens.5.x', which is not"):
        LensModel(OBS, ["SIE", {"profile": "SHEAR", "tied": {"gamma1": "lens.5.x"}}])
    with pytest.raises(ValueError, match="which needs a theta_E"):
        LensModel(OBS, ["SHEAR", "SIE"], num_subhalos=1)


def test_every_mass_profile_fits_with_its_default_priors():
    """Every registered mass profile, alone as the lens: its declared default priors lie
    inside its declared support, prior draws do too, and the posterior and its gradient are
    finite there (event-shaped parameters, the pixelated convergence, included)."""
    from tfstronglens.inference.spec import check_prior, check_support
    from tfstronglens.profiles.base import PROFILE_REGISTRY, MassProfile

    settings = {"PIXELATED_CONVERGENCE": {"num_pix": 8, "pixel_scale": 0.25}}
    obs = tsl.Observation(20, 0.1, 2000.0, background_rms=0.05)
    names = sorted(n for n, c in PROFILE_REGISTRY.items() if issubclass(c, MassProfile))
    assert {"SIE", "EPL", "NFW", "TNFW", "PJAFFE", "MULTIPOLE", "MULTIPOLE_ELL",
            "PIXELATED_CONVERGENCE", "POINT_MASS", "SIS", "SHEAR"} <= set(names)
    for name in names:
        comp = {"profile": name, "settings": settings.get(name, {})}
        model = LensModel(obs, [comp], "sersic", amp_scale=10.0, jit_compile=False)
        prof = model.simulator.lens[0]
        for pname, spec in prof.default_priors().items():
            check_support(check_prior(spec, name), prof, pname, f"{name}.{pname}")
        draws = model.sample_prior(16, seed=3)
        for pname in prof.param_names:
            v = draws.get(f"lens.0.{pname}")
            if v is None:
                continue
            v = np.asarray(v)
            if pname in prof.positive_params:
                assert np.all(v > 0), (name, pname)
            if pname in prof.nonnegative_params:
                assert np.all(v >= 0), (name, pname)
            if pname in prof.upper_bounds:
                assert np.all(v <= prof.upper_bounds[pname]), (name, pname)
        x = model.to_flat(draws)
        np.testing.assert_allclose(model.to_flat(model.from_flat(x)), x, rtol=1e-4, atol=1e-4)
        data = model.simulate({k: v[:1] for k, v in draws.items()}, seed=1)[0]
        val, grad = model.value_and_gradient(x[:4], data)
        assert np.all(np.isfinite(val)) and np.all(np.isfinite(grad)), name


def test_readme_model_spec_example_builds():
    """The README's --model example stays valid: it parses and builds the model it shows."""
    import os
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = re.search(r"```json\n(.*?)```", readme, re.S).group(1)
    spec = ModelSpec.from_dict(json.loads(block))
    model = LensModel(OBS, source="sersic", amp_scale=10.0, **spec.model_kwargs())
    assert {"lens.2.a_m", "lens_light.0.amp", "subhalo.0.mass"} <= set(model.parameters)
    assert model.subhalo_profile == "PJAFFE" and model.tied["lens.2.center_x"] == "lens.0.center_x"


def test_rim_source_refuses_profiles_with_settings():
    """The RIM carries its lens models by name: a multipole of order 3 would silently become
    the default order 4 there, so it is refused."""
    from tfstronglens.models.rim import RIMSource

    with pytest.raises(ValueError, match=r"\['MULTIPOLE'\] have non-default settings"):
        LensModel(OBS, "sie+shear+m3m4", source=RIMSource(), amp_scale=10.0)


def test_source_components_add_and_round_trip(tmp_path):
    """A source given as components: two Sersics render the sum of each alone (parameters
    ``source.0.*``, ``source.1.*``, per-component priors applied), the spec round-trips
    through JSON, and a PIXELATED component is the same model as ``source="pixelated"``."""
    spec = ModelSpec.from_dict({
        "lens": "sie+shear",
        "source": ["SERSIC_ELLIPSE", {"profile": "SERSIC_ELLIPSE",
                                      "priors": {"R_sersic": {"uniform": [0.02, 0.05]}}}]})
    path = str(tmp_path / "m.json")
    spec.to_json(path)
    assert ModelSpec.from_json(path) == spec
    two = LensModel(OBS, amp_scale=10.0, jit_compile=False, **spec.model_kwargs())
    assert {"source.1.R_sersic", "source.1.center_x"} <= set(two.parameters)
    assert float(two.prior.model["source.1.R_sersic"].high) == pytest.approx(0.05)
    draws = two.sample_prior(2, seed=4)
    one = LensModel(OBS, amp_scale=10.0, jit_compile=False)

    def alone(k):
        return {name: draws[name.replace("source.0.", f"source.{k}.")]
                for name in one.parameters}

    np.testing.assert_allclose(two.render(draws), one.render(alone(0)) + one.render(alone(1)),
                               rtol=1e-5, atol=1e-5)
    pix = LensModel(OBS, source=[{"profile": "PIXELATED",
                                  "settings": {"num_pix": 12, "pixel_scale": 0.08}}],
                    amp_scale=10.0, jit_compile=False)
    ref = LensModel(OBS, source="pixelated", source_num_pix=12, source_pixel_scale=0.08,
                    amp_scale=10.0, jit_compile=False)
    assert pix.param_names == ref.param_names
    x = ref.sample_unconstrained_prior(2, seed=1)
    data = ref.simulate(ref.from_flat(x[:1]), seed=2)[0]
    np.testing.assert_allclose(pix.unconstrained_log_posterior(x, data),
                               ref.unconstrained_log_posterior(x, data), rtol=1e-5)
    with pytest.raises(ValueError, match=r"source\[1\]\.profile: SIE is not a light profile"):
        ModelSpec.from_dict({"lens": "sie+shear", "source": ["SERSIC", "SIE"]})
    with pytest.raises(ValueError, match=r"source\[0\]\.profile: a PIXELATED source must be "
                                         "the only"):
        LensModel(OBS, source=[{"profile": "PIXELATED", "settings": {"num_pix": 8,
                                                                      "pixel_scale": 0.1}},
                               "SERSIC"])
