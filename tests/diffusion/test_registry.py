"""The sampler registry is the one list of sampler and method names; the renamed costs keep their old names."""

import math
import subprocess
import sys
import warnings

import pytest
import torch

from multilevel_em.diffusion import registry
from multilevel_em.diffusion.registry import METHODS, SAMPLER_SPECS, SAMPLERS


def _choices(command, option):
    for p in command.params:
        if p.name == option:
            return tuple(p.type.choices)
    raise AssertionError(f"{command.name} has no --{option}")


def test_cli_choices_come_from_the_registry():
    from multilevel_em.cli.images import distill_cmd, sample_cmd

    assert _choices(sample_cmd, "method") == METHODS
    assert _choices(sample_cmd, "sampler") == SAMPLERS
    assert _choices(distill_cmd, "sampler") == registry.teacher_samplers()


def test_every_list_reads_the_registry():
    from multilevel_em.diffusion import SAMPLERS as exported
    from multilevel_em.diffusion.samplers import SAMPLERS as from_samplers
    from multilevel_em.images import distill, pipeline, sampler_calibration
    from multilevel_em.jobs import job

    assert exported is SAMPLERS and from_samplers is SAMPLERS
    assert SAMPLERS == ("em", "ddpm", "ddim", "euler_ode", "dpmpp_2m", "dpmpp_sde", "unipc")
    assert METHODS == ("mlem",) + SAMPLERS + ("stitch", "auto")
    assert pipeline.METHODS is METHODS and job._METHODS is METHODS
    assert dict(pipeline.DEFAULT_STEPS) == {
        "em": 250,
        "ddpm": 250,
        "ddim": 50,
        "euler_ode": 100,
        "dpmpp_2m": 20,
        "dpmpp_sde": 25,
        "unipc": 20,
        "stitch": 50,
    }
    assert sampler_calibration.MEASURABLE == {
        "em": "sde",
        "ddim": "ode",
        "euler_ode": "ode",
        "dpmpp_2m": "ode",
        "unipc": "ode",
    }
    assert distill.SAMPLERS == ("em", "ddim", "dpmpp_2m", "unipc")
    assert distill.CONDITIONAL_SCHEDULERS == {
        "em": "ddpm",
        "ddim": "ddim",
        "dpmpp_2m": "dpmpp_2m",
        "unipc": "unipc",
    }


def test_bench_labels_and_styles_come_from_the_registry():
    from multilevel_em.bench import images as bench

    assert bench.STYLE["dpmpp_2m"] == SAMPLER_SPECS["dpmpp_2m"].style
    assert bench.FAMILY_NAMES["mlem:ddpm"] == "ML-EM in DDPM (EM plan)"
    assert bench._label("dpmpp_2m", {"steps": 10}) == "DPM++ 10"
    assert bench._label("stitch", {"steps": 50}) == "T-Stitch 50"
    assert set(bench.ODE_SAMPLERS) == {"ddim", "euler_ode", "dpmpp_2m", "unipc"}


def test_every_registry_entry_resolves():
    for _name, spec in SAMPLER_SPECS.items():
        assert spec.family in ("sde", "ode") and spec.default_steps >= 1 and spec.label and spec.title
        assert callable(spec.loop_function())
        if spec.scheduler is not None:
            assert spec.loop_function().__name__ == "scheduler_loop"
            spec.scheduler_class()  # diffusers has it
        if spec.conditional is not None:
            assert SAMPLER_SPECS[spec.conditional].scheduler is not None
    for m in registry.METHOD_SPECS.values():
        assert m.default_sampler is None or m.default_sampler in SAMPLERS
    with pytest.raises(ValueError, match="sampler: expected one of"):
        registry.sampler_spec("heun")


def test_registry_and_diffusion_package_import_without_torch():
    code = (
        "import sys, multilevel_em.diffusion.registry, multilevel_em.jobs.job, multilevel_em.cli.main; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("t", [0.02, 0.5, 0.97])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drift_increments_equal_the_inlined_steps_bit_for_bit(t, dtype):
    """The samplers call the schedule's drifts; with dt they give the steps the samplers used to inline."""
    from multilevel_em.diffusion import VPSchedule

    g = torch.Generator().manual_seed(0)
    for s in (VPSchedule.linear(), VPSchedule.cosine()):
        x, eps = torch.randn(3, 5, generator=g, dtype=dtype), torch.randn(3, 5, generator=g, dtype=dtype)
        t_next = t - 0.013
        beta, sigma = float(s.beta(t)), float(s.sigma(t))
        assert torch.equal(s.reverse_sde_drift(x, t, eps, dt=t_next - t), (t - t_next) * beta * (0.5 * x - eps / sigma))
        assert torch.equal(
            s.probability_flow_drift(x, t, eps, dt=t_next - t), (t - t_next) * 0.5 * beta * (x - eps / sigma)
        )
        assert torch.equal(s.reverse_sde_drift(x, t, eps, dt=-1.0), beta * (0.5 * x - eps / sigma))


def test_sample_calls_back_after_every_step():
    from multilevel_em.diffusion import VPSchedule, sample

    seen = []
    out = sample(
        lambda x, t: 0.1 * x,
        torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),
        schedule=VPSchedule.linear(),
        steps=7,
        sampler="euler_ode",
        callback=lambda n, N: seen.append((n, N)),
    )
    assert seen == [(n, 7) for n in range(7)] and out.top_equivalents == 7


def test_old_cost_names_still_read_with_a_deprecation_warning():
    from multilevel_em import Ladder, solve
    from multilevel_em.diffusion import MultilevelDenoiser, VPSchedule, sample

    sol = solve(
        Ladder([lambda x, t: -x, lambda x, t: -1.1 * x], costs=[1.0, 4.0]),
        torch.ones(3, 2),
        t0=0.0,
        t1=1.0,
        steps=5,
        method="em",
    )
    with pytest.warns(DeprecationWarning, match="cost_per_sample"):
        assert sol.cost == sol.cost_per_sample == 20.0
    assert sol.top_equivalents == 5.0 and sol.to_dict()["cost"] == 20.0  # the report's key is unchanged
    den = MultilevelDenoiser([lambda x, t: 0.1 * x], costs=[3.0])
    out = sample(
        den,
        torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),
        schedule=VPSchedule.linear(),
        steps=4,
        sampler="em",
        generator=torch.Generator().manual_seed(1),
    )
    with pytest.warns(DeprecationWarning, match="top_equivalents"):
        assert out.cost == out.top_equivalents == 4
    with pytest.warns(DeprecationWarning, match="total_cost"):
        assert den.cost == den.total_cost == 2 * 4 * 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(den.total_cost + out.top_equivalents + sol.cost_per_sample)


def test_one_helper_unwraps_outputs():
    from multilevel_em.diffusion.outputs import model_output, single_time

    x = torch.zeros(2)

    class Out:
        sample = x

    assert model_output(x) is x and model_output(Out()) is x and model_output((x,)) is x
    with pytest.raises(TypeError, match="level 1"):
        model_output("nope", "level 1")
    assert single_time(torch.tensor([0.5, 0.5]), name="t", why="") == 0.5
    with pytest.raises(ValueError, match="t: one per call"):
        single_time(torch.tensor([0.5, 0.4]), name="t", why="one per call")
