"""Issue 11, part 1: plans that know the sampler (SamplerFit, Calibration.plan(sampler=...), the pipeline's
calibrate_samplers and the CLI's --samplers / --sampler)."""

import math
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from multilevel_em import Calibration
from multilevel_em.calibration.samplers import SamplerFit, combine_gains
from multilevel_em.cli.main import main
from multilevel_em.images import MultilevelPipeline

SHIPPED = os.path.join(
    os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits", "calibration.json"
)


def power_fit(name, C, q, family="ode", gain=1.0, steps=(4, 8, 16, 32, 64)):
    errors = [C * n**-q for n in steps]
    return SamplerFit(
        sampler=name,
        family=family,
        steps=steps,
        errors=errors,
        errors_se=[0.0] * len(steps),
        ref_steps=500,
        n=16,
        gain=gain,
    )


@pytest.fixture
def cal():
    c = Calibration.load(SHIPPED)
    c.samplers = {}  # this file's tests set their own fits
    return c


# ----------------------------------------------------------------------------- SamplerFit


def test_fit_recovers_a_power_law_and_interpolates_the_measured_points():
    f = power_fit("s", 3.0, 2.0)
    assert f.order == pytest.approx(2.0, abs=1e-9) and f.constant == pytest.approx(3.0, rel=1e-9)
    for n, e in zip(f.steps, f.errors):
        assert f.error(n) == pytest.approx(e, rel=1e-12)
    assert f.error(128) == pytest.approx(3.0 * 128**-2, rel=1e-9)  # extrapolated with the fitted order
    assert f.error(2) == pytest.approx(3.0 * 2**-2, rel=1e-9)


def test_steps_for_is_the_fewest_steps_reaching_the_target():
    f = power_fit("s", 3.0, 1.0)
    for target in (0.5, 0.1, 0.03):
        n = f.steps_for(target)
        assert f.error(n) <= target < f.error(n - 1)
    assert f.steps_for(1e-12, max_steps=1000) is None


def test_a_measured_rise_is_kept_and_steps_for_finds_the_first_crossing():
    """DDIM's errors rise at step counts that do not divide T: the curve keeps what was measured."""
    f = SamplerFit(
        sampler="s",
        family="ode",
        steps=(4, 8, 16, 32),
        errors=(1.0, 0.5, 0.9, 0.2),
        errors_se=(0,) * 4,
        ref_steps=500,
        n=8,
    )
    assert f.error(16) == pytest.approx(0.9)
    assert f.steps_for(0.5) == 8 and f.steps_for(0.3) > 16 and f.error(f.steps_for(0.3)) <= 0.3
    assert f.error(f.steps_for(0.3) - 1) > 0.3


def test_gain_interpolates_its_points_and_round_trips():
    f = power_fit("s", 3.0, 1.0)
    f.gain_points = [
        {"steps": 8, "measured_variance": 2.0, "predicted_variance": 1.0},
        {"steps": 32, "measured_variance": 8.0, "predicted_variance": 1.0},
    ]
    assert f.gain_at(8) == pytest.approx(2.0) and f.gain_at(32) == pytest.approx(8.0)
    assert f.gain_at(16) == pytest.approx(4.0)  # log-log midpoint
    assert f.gain_at(4) == pytest.approx(2.0) and f.gain_at(1000) == pytest.approx(8.0)  # constant beyond
    g = SamplerFit.from_dict(f.to_dict())
    assert g.to_dict() == f.to_dict()
    gain, se = combine_gains([2.0, 8.0], [1.0, 1.0])
    assert gain == pytest.approx(4.0) and se == pytest.approx(np.std(np.log([2.0, 8.0]), ddof=1) / math.sqrt(2))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(family="sdx"), "family"),
        (dict(errors=(1.0, -1.0)), "errors"),
        (dict(steps=(8, 4)), "steps"),
        (dict(errors_se=(0.0,)), "errors_se"),
    ],
)
def test_bad_fits_are_refused_by_name(kw, match):
    base = dict(sampler="s", family="ode", steps=(4, 8), errors=(1.0, 0.5), errors_se=(0.0, 0.0), ref_steps=500, n=4)
    with pytest.raises(ValueError, match=match):
        SamplerFit(**{**base, **kw})


# ----------------------------------------------------------------------------- plans inside a sampler


def test_calibration_round_trips_its_sampler_fits(cal, tmp_path):
    cal.samplers = {"dpmpp_2m": power_fit("dpmpp_2m", 7.0, 1.0, gain=3.0)}
    cal.save(tmp_path / "c.json")
    back = Calibration.load(tmp_path / "c.json")
    assert back == cal and back.samplers["dpmpp_2m"].gain == 3.0
    d = cal.to_dict()
    d["samplers"] = {"dpmpp_2m": {"sampler": "dpmpp_2m"}}
    with pytest.raises(ValueError, match="samplers.*dpmpp_2m"):
        Calibration.from_dict(d)


def test_an_unmeasured_sampler_is_a_clear_error(cal):
    cal.samplers = {"em": power_fit("em", 100.0, 1.0, family="sde")}
    with pytest.raises(ValueError, match=r"sampler 'ddim'.*not measured.*measured: em.*--samplers ddim"):
        cal.plan(budget=20, sampler="ddim")


def test_a_sampler_plan_adds_its_parts_and_compares_with_single_models(cal):
    slow = power_fit("euler_ode", 20.0, 1.0, gain=2.0)
    cal.samplers = {"euler_ode": slow}
    p = cal.plan(budget=20, sampler="euler_ode")
    assert p.sampler == "euler_ode"
    gain = slow.gain_at(p.steps)
    assert p.step_error == pytest.approx(slow.error(p.steps))
    assert p.error == pytest.approx(math.sqrt(p.bias**2 + p.step_error**2 + gain * p.prediction.added_variance))
    assert p.randomization == pytest.approx(math.sqrt(gain * p.prediction.added_variance))
    assert p.top_equivalents <= 20 * (1 + 1e-9)
    same = p.same_sampler
    assert same["sampler"] == "euler_ode" and same["steps"] == math.floor(p.top_equivalents + 1e-9)
    assert same["error"] == pytest.approx(slow.error(same["steps"]))
    best = p.best_single
    assert best["steps"] == slow.steps_for(p.error * (1 + 1e-12)) or slow.error(best["steps"]) <= p.error
    assert p.speedup == pytest.approx(best["top_equivalents"] / p.top_equivalents)
    assert p.helps == (p.speedup > 1)


def test_a_faster_single_model_sampler_makes_the_plan_say_so(cal):
    """ML-EM inside a slow sampler may beat that sampler, but a fast one at the same cost is better: helps is
    False and the message says what to run."""
    cal.samplers = {"euler_ode": power_fit("euler_ode", 20.0, 1.0, gain=1e-6)}
    inside = cal.plan(budget=20, sampler="euler_ode")
    assert inside.error < inside.same_sampler["error"]  # nearly free randomization: beats its own sampler
    assert inside.helps, inside.message
    cal.samplers["dpmpp_2m"] = power_fit("dpmpp_2m", 0.5, 2.0)  # reaches any of these errors in a few steps
    p = cal.plan(budget=20, sampler="euler_ode")
    assert not p.helps and p.best_single["sampler"] == "dpmpp_2m" and p.speedup < 1
    assert "not predicted to help" in p.message and "dpmpp_2m" in p.message
    assert f"{p.best_single['steps']} steps" in p.message
    assert p.best_at_budget["sampler"] == "dpmpp_2m" and p.best_at_budget["error"] < p.error


def test_sampler_plans_for_a_target_reach_it(cal):
    cal.samplers = {"dpmpp_2m": power_fit("dpmpp_2m", 7.0, 1.0, gain=3.0)}
    p = cal.plan(target=0.5, sampler="dpmpp_2m")
    assert p.error <= 0.5 * (1 + 1e-6)
    with pytest.raises(ValueError, match="does not reach"):
        cal.plan(target=1e-9 + cal.top_bias, sampler="dpmpp_2m", max_steps=64)


def test_a_budget_below_one_base_step_is_refused_with_a_sampler(cal):
    cal.samplers = {"dpmpp_2m": power_fit("dpmpp_2m", 7.0, 1.0)}
    with pytest.raises(ValueError, match="too small"):
        cal.plan(budget=1e-3, sampler="dpmpp_2m")


def test_the_shipped_calibration_has_measured_samplers():
    c = Calibration.load(SHIPPED)
    assert {"em", "ddim", "euler_ode", "dpmpp_2m"} <= set(c.samplers)
    for f in c.samplers.values():
        assert f.order > 0 and f.gain > 0 and len(f.gain_points) >= 2


# ----------------------------------------------------------------------------- the pipeline and the CLI


@pytest.fixture(scope="module")
def tiny(tiny_ladder, tmp_path_factory):
    """A copy of the shared calibrated 2-level ladder (widths 4, 8; conftest), with two measured samplers."""
    out = str(tmp_path_factory.mktemp("tiny") / "ladder")
    shutil.copytree(tiny_ladder, out)
    pipe = MultilevelPipeline.from_pretrained(out)
    fits = pipe.calibrate_samplers(["em", "dpmpp_2m"], n=4, steps=(2, 4, 8), ref_steps=20, gain_steps=(4, 8))
    pipe.save_calibration(out)
    return out, pipe, fits


def test_calibrate_samplers_measures_curves_and_gains(tiny):
    _, pipe, fits = tiny
    assert set(fits) == {"em", "dpmpp_2m"} and fits["em"].family == "sde" and fits["dpmpp_2m"].family == "ode"
    for f in fits.values():
        assert f.steps == (2, 4, 8) and f.ref_steps == 20 and f.n == 4
        assert all(e > 0 and math.isfinite(e) for e in f.errors)
        assert [p["steps"] for p in f.gain_points] == [4, 8]
    # A run with more steps is closer to the converged one (a real measurement: fails if the runs are unrelated).
    assert fits["dpmpp_2m"].errors[-1] < fits["dpmpp_2m"].errors[0]
    assert set(pipe.calibration.samplers) == {"em", "dpmpp_2m"}


def test_measured_error_is_the_distance_to_the_reference(tiny):
    """The curve's point at 4 steps is the RMS distance between the 4-step and 20-step runs of the top model."""
    _, pipe, fits = tiny
    g = lambda: torch.Generator().manual_seed(0)
    ref = pipe(4, method="dpmpp_2m", steps=20, generator=g()).x
    x = pipe(4, method="dpmpp_2m", steps=4, generator=g()).x
    rms = float((x - ref).double().flatten(1).pow(2).sum(1).mean().sqrt())
    assert fits["dpmpp_2m"].errors[1] == pytest.approx(rms, rel=1e-6)


def test_the_pipeline_plans_inside_a_measured_sampler_and_warns_otherwise(tiny):
    _, pipe, _ = tiny
    plan = pipe.plan(6, sampler="dpmpp_2m")
    assert plan.sampler == "dpmpp_2m" and plan.best_single is not None
    out = pipe(2, method="mlem", sampler="dpmpp_2m", budget=6, generator=torch.Generator().manual_seed(1))
    assert out.report["plan"]["sampler"] == "dpmpp_2m" and out.report["plan"]["message"] == plan.message
    assert out.report["plan"]["helps"] == plan.helps
    with pytest.warns(UserWarning, match="sampler='ddim'.*not measured"):
        pipe(2, method="mlem", sampler="ddim", budget=6, generator=torch.Generator().manual_seed(1))


def test_levels_go_with_explicit_rates_only(tiny):
    _, pipe, _ = tiny
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="levels: only for method='mlem' with explicit rates"):
        pipe(2, method="mlem", budget=6, levels=[0, 1], generator=g)
    with pytest.raises(ValueError, match="levels: expected 2 or more levels including the top"):
        pipe(2, method="mlem", rates=[1.0], steps=4, levels=[0], generator=g)
    with pytest.raises(ValueError, match="rates: expected 1 rates"):
        pipe(2, method="mlem", rates=[1.0, 2.0], steps=4, levels=[0, 1], generator=g)


def test_new_one_model_methods_run(tiny):
    _, pipe, _ = tiny
    for method in ("ddpm", "euler_ode"):
        out = pipe(2, method=method, steps=3, generator=torch.Generator().manual_seed(0))
        assert out.report["top_equivalents_per_sample"] == pytest.approx(3.0)
        assert np.isfinite(out.images).all()


def _cli(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def test_cli_refuses_bad_sampler_options(tiny, tmp_path):
    folder, _, _ = tiny
    r = _cli(["calibrate", "--ladder", folder, "--samplers", "ddpm", "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and "--samplers" in r.output and "pathwise" in r.output
    assert not (tmp_path / "c.json").exists()
    r = _cli(["calibrate", "--ladder", folder, "--samplers", "heun", "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and "--samplers" in r.output and "'heun'" in r.output
    r = _cli(["calibrate", "--samplers", "em"])
    assert r.exit_code == 2 and "only with --ladder" in r.output
    r = _cli(
        ["sample", "--ladder", folder, "--method", "em", "--sampler", "ddim", "--n", "2", "--out", tmp_path / "g.png"]
    )
    assert r.exit_code == 2 and "--sampler" in r.output and not (tmp_path / "g.png").exists()


def test_cli_sample_prints_the_sampler_plan(tiny, tmp_path):
    folder, pipe, _ = tiny
    r = _cli(
        [
            "sample",
            "--ladder",
            folder,
            "--method",
            "mlem",
            "--sampler",
            "dpmpp_2m",
            "--budget",
            "6",
            "--n",
            "2",
            "--out",
            tmp_path / "g.png",
        ]
    )
    assert r.exit_code == 0, r.output
    assert f"plan: {pipe.plan(6, sampler='dpmpp_2m').message}" in r.output


def test_bench_samplers_quick_writes_its_table(tiny, tmp_path):
    folder, _, _ = tiny
    out, plot = tmp_path / "s.json", tmp_path / "s.png"
    r = _cli(["bench", "samplers", "--ladder", folder, "--quick", "--out", out, "--plot", plot])
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(out.read_text())
    assert plot.stat().st_size > 0
    assert {(row["sampler"], row["budget"]) for row in d["rows"]} == {
        (s, b) for s in ("em", "dpmpp_2m") for b in (4, 8)
    }
    for row in d["rows"]:
        assert row["mlem"]["error"] > 0 and math.isfinite(row["prediction_ratio"])
        assert row["mlem"]["top_equivalents"] <= row["budget"] * 1.5  # counted cost near the plan's budget
        assert row["within_target"] == (1 / 1.5 <= row["prediction_ratio"] <= 1.5)
        assert row["alone"]["steps"] == math.floor(row["plan"]["predicted_top_equivalents"] + 1e-9)
    assert d["summary"]["runs"] == 4


def test_bench_samplers_needs_measured_samplers(tmp_path):
    import shutil

    folder = tmp_path / "ladder"
    shutil.copytree(os.path.dirname(SHIPPED), folder)
    c = Calibration.load(folder / "calibration.json")
    c.samplers = {}
    c.save(folder / "calibration.json")
    r = _cli(
        ["bench", "samplers", "--ladder", folder, "--quick", "--out", tmp_path / "s.json", "--plot", tmp_path / "s.png"]
    )
    assert r.exit_code == 1 and "--samplers" in r.output and not (tmp_path / "s.json").exists()


def test_auto_runs_the_predicted_winner(tiny, tmp_path):
    folder, pipe, _ = tiny
    choice = pipe.choose(6)
    assert len(choice["candidates"]) == 4  # ML-EM inside and the top model alone with each of 2 samplers
    assert choice["predicted_error"] == min(c["predicted_error"] for c in choice["candidates"])
    out = pipe(2, method="auto", budget=6, generator=torch.Generator().manual_seed(0))
    assert out.report["auto"]["method"] == choice["method"]
    assert out.report["method"] == choice["method"]
    ran = out.report["sampler"] if choice["method"] == "mlem" else out.report["method"]
    assert ran == (choice["sampler"] or choice["method"])
    with pytest.raises(ValueError, match="budget= only"):
        pipe(2, method="auto", budget=6, steps=4)
    r = _cli(
        ["sample", "--ladder", folder, "--method", "auto", "--budget", "6", "--n", "2", "--out", tmp_path / "g.png"]
    )
    assert r.exit_code == 0 and "auto: ran" in r.output, r.output


def test_auto_needs_measured_samplers(cal):
    from multilevel_em.images.ladder import load_ladder

    pipe = MultilevelPipeline(load_ladder(os.path.dirname(SHIPPED)), cal)  # cal: its samplers emptied
    with pytest.raises(ValueError, match="method='auto' needs a calibration that measured samplers"):
        pipe(2, method="auto", budget=6)
