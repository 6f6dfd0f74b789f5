"""One planner (issue 22, item 4): MultilevelPipeline measures and plans schedules of models with the same machinery
as MultilevelModel.plan (calibrate_schedules -> choose / method="auto"), stores the measurements in the calibration
file (validated when it loads), and `mlem calibrate --schedules` / `mlem sample --method auto` use them. The tiny
2-level ladder of conftest (widths 4 and 8, 16x16)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from multilevel_em.calibration import Calibration, ScheduleCalibration
from multilevel_em.calibration.fields import FieldError
from multilevel_em.cli.main import main
from multilevel_em.engine import CallSchedule
from multilevel_em.images import MultilevelPipeline

SETTINGS = dict(n=4, steps=(2, 3, 4), reference_steps=8, blocks=2)


@pytest.fixture(scope="module")
def measured(tiny_ladder):
    pipe = MultilevelPipeline.from_pretrained(tiny_ladder)
    out = pipe.calibrate_schedules(["dpmpp_2m", "unipc"], **SETTINGS)
    return pipe, out


def test_calibrate_schedules_measures_each_sampler_and_saves_it(measured, tmp_path):
    pipe, out = measured
    assert sorted(out) == ["dpmpp_2m", "unipc"] and pipe.calibration.schedules == out
    for name, m in out.items():
        assert isinstance(m, ScheduleCalibration) and m.pipeline.steps == (2, 3, 4) and m.pipeline.runs > 0
        assert (
            m.pipeline.scheduler
            == {"dpmpp_2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}[name]
        )
        assert m.calls.n_levels == 2
    # saved with the calibration and loaded back equal (validated on the way)
    pipe.save_calibration(str(tmp_path))
    back = Calibration.load(str(tmp_path / "calibration.json"))
    assert sorted(back.schedules) == ["dpmpp_2m", "unipc"]
    for name in out:
        assert back.schedules[name].pipeline == out[name].pipeline
        assert back.schedules[name].to_dict() == json.loads(json.dumps(out[name].to_dict()))


def test_choose_leaves_the_global_random_state_alone(measured):
    pipe, _ = measured
    before = torch.random.get_rng_state()
    pipe.choose(3)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_calibration_file_with_schedules_for_an_unknown_sampler_is_refused_on_load(measured, tiny_ladder, tmp_path):
    pipe, _ = measured
    folder = tmp_path / "ladder"
    shutil.copytree(tiny_ladder, folder)
    d = pipe.calibration.to_dict()
    d["schedules"] = {"bogus": d["schedules"]["dpmpp_2m"]}
    (folder / "calibration.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="schedules.bogus: not a sampler a schedule can run in"):
        MultilevelPipeline.from_pretrained(str(folder))
    d["schedules"] = {"ddim": pipe.calibration.to_dict()["schedules"]["dpmpp_2m"]}
    (folder / "calibration.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="schedules.ddim: measured with DPMSolverMultistepScheduler"):
        MultilevelPipeline.from_pretrained(str(folder))


def test_choose_plans_with_the_schedule_planner_and_auto_runs_the_pick(measured):
    pipe, _ = measured
    choice = pipe.choose(3)
    assert choice["planner"] == "schedules" and choice["method"] == "schedule"
    assert {c["sampler"] for c in choice["candidates"]} == {"dpmpp_2m", "unipc"}
    best = min(choice["candidates"], key=lambda c: (c["predicted_error"], c["predicted_top_equivalents"]))
    assert choice["schedule"] == best["schedule"] and choice["sampler"] == best["sampler"]
    assert all(c["predicted_top_equivalents"] <= 3 * (1 + 1e-9) for c in choice["candidates"])
    # the same candidates as MultilevelModel.plan inside that sampler: one planner
    plan = pipe.plan_schedule(3, choice["sampler"])
    assert {c.name for c in plan.candidates} == {
        c["schedule"] for c in choice["candidates"] if c["sampler"] == choice["sampler"]
    }
    out = pipe(4, method="auto", budget=3, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (4, 16, 16, 1) and np.isfinite(out.images).all()
    r = out.report
    assert r["method"] == "schedule" and r["auto"]["planner"] == "schedules" and r["steps"] == choice["steps"]
    expected = CallSchedule.from_dict(choice["call_schedule"]).expected_cost(pipe.ladder.costs)
    deterministic = choice["kind"] in ("top", "switch")
    assert r["top_equivalents_per_sample"] == pytest.approx(expected, rel=1e-9 if deterministic else 0.5)
    # the same generator gives the same images; static draws run the same schedule
    again = pipe(4, method="auto", budget=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x, out.x)
    static = pipe(4, method="auto", budget=3, draws="static", generator=torch.Generator().manual_seed(0))
    assert static.report["steps"] == r["steps"] and np.isfinite(static.images).all()


def test_a_model_loads_saved_measurements_and_plans_the_same(measured):
    pipe, out = measured
    model, _ = pipe.schedule_runner("dpmpp_2m", 2)
    model.load_schedule_calibration(json.loads(json.dumps(out["dpmpp_2m"].to_dict())))
    a = model.plan(3)
    b = pipe.plan_schedule(3, "dpmpp_2m")
    assert [(c.name, c.predicted_error, c.predicted_cost) for c in a.candidates] == [
        (c.name, c.predicted_error, c.predicted_cost) for c in b.candidates
    ]
    other, _ = pipe.schedule_runner("unipc", 2)
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler.*UniPCMultistepScheduler"):
        other.load_schedule_calibration(out["dpmpp_2m"])
    with pytest.raises(TypeError, match="measured"):
        other.load_schedule_calibration(3)
    # another ladder with as many levels: its levels' relative costs differ
    from multilevel_em.diffusion import MultilevelModel
    from multilevel_em.diffusion.samplers import make_scheduler

    L = pipe.ladder
    alien = MultilevelModel(
        L.unets, costs=[L.costs[0] * 3, L.costs[1]], scheduler=make_scheduler("dpmpp_2m", L.schedule)
    )
    with pytest.raises(ValueError, match="relative costs .* another ladder"):
        alien.load_schedule_calibration(out["dpmpp_2m"])


def test_a_schedule_calibration_file_round_trips_and_is_validated(measured, tmp_path):
    pipe, out = measured
    path = tmp_path / "schedules.json"
    out["dpmpp_2m"].save(path)
    model, _ = pipe.schedule_runner("dpmpp_2m", 2)
    model.load_schedule_calibration(str(path))
    assert model.schedule_calibration.to_dict() == json.loads(json.dumps(out["dpmpp_2m"].to_dict()))
    d = json.loads(path.read_text())
    d["pipeline"]["reference_steps"] = 2
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"schedules\.json: schedule calibration\.pipeline: reference_steps"):
        model.load_schedule_calibration(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a schedule calibration file: invalid JSON"):
        ScheduleCalibration.load(path)


def test_schedule_bad_inputs(measured, tiny_ladder):
    pipe, _ = measured
    with pytest.raises(ValueError, match="sampler: no schedule measurements for 'ddim'.*calibrate_schedules"):
        pipe.plan_schedule(3, "ddim")
    with pytest.raises(ValueError, match="samplers: expected some of ddim, dpmpp_2m, unipc, got 'em'"):
        pipe.calibrate_schedules(["em"], **SETTINGS)
    with pytest.raises(TypeError, match="samplers: expected a list of names, got the string"):
        pipe.calibrate_schedules("ddim", **SETTINGS)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        pipe.calibrate_schedules(["ddim"], **{**SETTINGS, "n": 0})
    with pytest.raises(ValueError, match="samplers: 'ddpm' cannot be measured pathwise"):
        pipe.schedule_runner("ddpm", 2)
    with pytest.raises(ValueError, match="budget: 9 top-level equivalents .* beyond what was measured in dpmpp_2m"):
        pipe.plan_schedule(9, "dpmpp_2m")
    with pytest.raises(ValueError, match="budget: 1 top-level equivalents .* below what was measured"):
        pipe.choose(1)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        pipe("2", method="auto", budget=3)
    with pytest.raises(ValueError, match="t_min: a schedule of models"):
        pipe(2, method="auto", budget=3, t_min=0.01)
    with pytest.raises(ValueError, match="budget"):
        pipe.choose(0.01)
    with pytest.raises(ValueError, match="trace: not supported when method='auto' picks a schedule"):
        pipe(2, method="auto", budget=3, trace=True)
    with pytest.raises(ValueError, match="draws: a schedule of models takes"):
        pipe(2, method="auto", budget=3, draws="exact")
    bare = MultilevelPipeline.from_pretrained(tiny_ladder)
    bare.calibration = None
    with pytest.raises(ValueError, match="calibrate_schedules: run pipe.calibrate"):
        bare.calibrate_schedules(["ddim"], **SETTINGS)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s["pipeline"].update(steps=[4, 3, 2]), r"schedules\.dpmpp_2m\.pipeline: steps: expected increasing"),
        (lambda s: s["pipeline"].update(step_errors=[0.1, float("nan"), 0.1]), r"schedules\.dpmpp_2m\.pipeline"),
        (lambda s: s["pipeline"].pop("sensitivity"), r"schedules\.dpmpp_2m\.pipeline: .*missing field"),
        (lambda s: s["calls"].update(names=["a"]), r"schedules\.dpmpp_2m\.calls.*names"),
        (lambda s: s.update(extra=1), r"schedules\.dpmpp_2m\.extra: unknown field"),
        (lambda s: s.pop("calls"), r"schedules\.dpmpp_2m: missing field calls"),
    ],
)
def test_schedule_measurements_are_validated_when_the_calibration_loads(measured, edit, match):
    pipe, _ = measured
    d = copy.deepcopy(json.loads(json.dumps(pipe.calibration.to_dict())))
    edit(d["schedules"]["dpmpp_2m"])
    with pytest.raises(FieldError, match=match):
        Calibration.from_dict(d)


def test_cli_calibrate_schedules_then_sample_auto(tiny_ladder, tmp_path):
    folder = tmp_path / "ladder"
    shutil.copytree(tiny_ladder, folder)
    r = CliRunner().invoke(main, ["calibrate", "--ladder", str(folder), "--overwrite", "--schedules", "ddim,euler"])
    assert r.exit_code == 2 and "--schedules" in r.output and "'euler'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["calibrate", "--schedules", "ddim"])
    assert r.exit_code == 2 and "--schedules" in r.output and "only with --ladder" in r.output
    args = ["calibrate", "--ladder", str(folder), "--overwrite", "--images", "8", "--schedules", "ddim"]
    r = CliRunner().invoke(main, [*args, "--sampler-images", "4"])
    assert r.exit_code == 0, r.output
    assert sorted(Calibration.load(str(folder / "calibration.json")).schedules) == ["ddim"]
    out = tmp_path / "auto.png"
    r = CliRunner().invoke(
        main, ["sample", "--ladder", str(folder), "--method", "auto", "--budget", "5", "--n", "4", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "auto: ran" in r.output and "in ddim" in r.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["method"] == "schedule" and report["auto"]["planner"] == "schedules" and report["budget"] == 5
    # budgets the measurements do not cover (5 to 40 steps by default) are refused in one line, nothing written
    for budget in ("3", "100"):
        r = CliRunner().invoke(
            main,
            [
                "sample",
                "--ladder",
                str(folder),
                "--method",
                "auto",
                "--budget",
                budget,
                "--n",
                "4",
                "--out",
                str(out),
                "--overwrite",
            ],
        )
        assert r.exit_code != 0 and "budget" in r.output and "measured in ddim" in r.output, r.output
        assert "Traceback" not in r.output
    # a later calibration without --schedules keeps the measured schedules, and says so
    r = CliRunner().invoke(main, ["calibrate", "--ladder", str(folder), "--overwrite", "--images", "8"])
    assert r.exit_code == 0, r.output
    assert "kept the schedule measurements of ddim" in r.output
    assert sorted(Calibration.load(str(folder / "calibration.json")).schedules) == ["ddim"]
