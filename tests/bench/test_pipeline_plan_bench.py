"""``mlem bench pipeline-plan`` (multilevel_em/bench/pipeline_plan.py) through the command line with --quick: the
shipped digits UNets in a stock DDPMPipeline, calibrate(run(N)) -> plan -> every candidate measured. Checks the
JSON's structure and its internal consistency (deterministic schedules cost exactly what they predict; the pick
is the candidate with the lowest predicted error); the prediction's accuracy is the full run's result, not judged
on 8 images."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("diffusers")

from click.testing import CliRunner

from multilevel_em.cli.main import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("pp") / "pipeline_plan.json"
    r = CliRunner().invoke(main, ["bench", "pipeline-plan", "--quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


@pytest.mark.parametrize("which", [0, 1])
def test_quick_run_structure(quick, which):
    """DPM-Solver++ in the stock pipeline, UniPC in a user-written scheduler loop: the same checks on each."""
    assert quick["quick"] and quick["benchmark"] == "pipeline_plan" and quick["command"].startswith("mlem bench")
    sched = quick["schedulers"][which]
    assert [s["scheduler"] for s in quick["schedulers"]] == ["dpmpp_2m", "unipc"]
    assert sched["ladder"] == "digits"
    assert sched["scheduler_class"] == ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"][which]
    m = sched["measurements"]
    assert m["steps"] == [2, 4] and m["reference_steps"] == 8 and m["num_levels"] == 4
    (b,) = sched["budgets"]
    names = [c["name"] for c in b["candidates"]]
    assert names[0] == "top model alone, 3 calls" and b["choice"] in names
    assert b["candidates"][0]["kind"] == "top"
    best = min(b["candidates"], key=lambda c: c["predicted_error"])
    assert b["choice"] == best["name"]
    for c in b["candidates"]:
        assert c["measured_error"] > 0 and math.isfinite(c["ratio_predicted_over_measured"])
        assert c["predicted_cost"] <= 3 * (1 + 1e-9)
        if c["kind"] in ("top", "switch"):  # deterministic: the counted cost is the predicted one
            assert c["measured_cost"] == pytest.approx(c["predicted_cost"], rel=1e-9)
    top = b["candidates"][0]  # at a measured call count? 3 is interpolated between 2 and 4
    assert top["predicted_error"] == pytest.approx(sched["interpolated_top_alone_error"]["3"])
    assert b["tstitch_default"]["measured_cost"] <= 3 * (1 + 1e-9)
    assert b["pick_vs_top_alone"] is not None and b["speedup"] is None or b["speedup"] > 0


def test_quick_distribution_section(quick):
    """The distributional criterion's section: every scored schedule has a distance and an interval, the pick
    has the lowest distance, the top model alone's paired difference to itself is 0, and the cheaper schedules
    listed as not worse are those whose paired interval does not lie above 0."""
    (dist,) = quick["distribution"]
    assert dist["settings"]["ladder"] == "digits" and dist["settings"]["n"] == 16
    (b,) = dist["budgets"]
    rows = b["candidates"]
    assert all(r["fd"] is not None and r["fd_ci"][0] <= r["fd_ci"][1] for r in rows)
    assert b["choice"] == min(rows, key=lambda r: r["fd"])["name"]
    top = next(r for r in rows if r["kind"] == "top")
    assert top["fd_minus_top"] == 0
    listed = {c["name"] for c in b["cheaper_than_top_alone_and_not_resolved_worse"]}
    assert listed == {
        r["name"] for r in rows if r["predicted_cost"] < top["predicted_cost"] and r["fd_minus_top_ci"][0] <= 0
    }


@pytest.mark.parametrize(
    "args, what",
    [
        (["--schedulers", "euler"], "--schedulers"),
        (["--ladders", "cifar"], "--ladders"),
        (["--steps", "4,64"], "--steps"),
        (["--steps", "4,x"], "--steps"),
        (["--steps", "8"], "--steps"),
    ],
)
def test_bad_selection_options_are_refused_before_any_work(args, what, tmp_path):
    out = tmp_path / "pp.json"
    r = CliRunner().invoke(main, ["bench", "pipeline-plan", *args, "--out", str(out)])
    assert r.exit_code == 2 and what in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()
