"""``mlem demo`` (the image main job, ``multilevel_em.demo.images``): end to end with --quick."""

from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner

from multilevel_em.cli.main import main
from multilevel_em.demo import images as image_demo

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_demo_writes_grids_plot_and_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["demo", "--quick", "--seed", "1"])  # --problem images is the default
    assert r.exit_code == 0, r.output
    out = tmp_path / "mlem-demo"  # the default --out-dir, in the current folder
    for name in ("grids.png", "cost_quality.png"):
        assert (out / name).read_bytes()[:8] == PNG
    data = json.loads((out / "demo.json").read_text())
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # atomic writes leave no temporaries
    assert "top-eq/sample" in r.stdout and "ML-EM budget" in r.stdout  # the cost table is printed
    assert set(data) >= {
        "runs",
        "comparisons",
        "grid",
        "reference",
        "table_lines",
        "summary_lines",
        "n",
        "seed",
        "total_seconds",
        "metrics",
        "command",
    }
    assert data["n"] == 8 and data["seed"] == 1 and data["quick"] is True
    methods = {r["method"] for r in data["runs"]}
    assert methods == {"em", "mlem", "dpmpp_2m", "auto"}
    for row in data["runs"]:
        assert set(row) >= {
            "label",
            "steps",
            "top_equivalents_per_sample",
            "evaluations_per_sample",
            "wall_seconds",
            "wall_seconds_per_sample",
            "kid",
            "kid_se",
            "confidence",
            "path_error",
        }
        assert row["top_equivalents_per_sample"] > 0 and row["wall_seconds"] > 0
        if row["method"] != "auto":  # a schedule may leave levels out
            assert all(v > 0 for v in row["evaluations_per_sample"].values())
        assert 0 < row["confidence"] <= 1 and math.isfinite(row["kid"]) and row["kid_se"] >= 0
        if row["method"] in ("em", "dpmpp_2m"):
            assert row["top_equivalents_per_sample"] == row["steps"]  # N steps of the top level
        if row["method"] in ("dpmpp_2m", "auto"):
            assert row["path_error"] is None  # an ODE sampler has no path error against the SDE reference
        elif row.get("role") != "reference":
            assert row["path_error"] > 0 and row["path_error_se"] >= 0
    for row in (r for r in data["runs"] if r["method"] == "mlem"):
        # The correction levels fire at random: the measured cost matches the plan within 5 (Poisson) standard
        # errors of the count, plus 5% for the plan's rounding.
        planned, se = row["plan"]["predicted_top_equivalents"], row["top_equivalents_se"]
        assert abs(row["top_equivalents_per_sample"] - planned) <= 5 * se + 0.05 * planned, row
        assert row["plan"]["steps"] == row["steps"]
    em = sorted(
        (r for r in data["runs"] if r["method"] == "em" and r.get("role") != "reference"), key=lambda r: r["steps"]
    )
    errors = [r["path_error"] for r in em]
    assert errors == sorted(errors, reverse=True), errors  # EM's path error falls with more steps
    g = data["grid"]
    assert g["em"]["method"] == "em" and g["mlem"]["method"] == "mlem"
    assert len(data["comparisons"]) == len(image_demo.SETTINGS["quick"]["budgets"])
    # the honest comparison (issue 22, item 5), printed first: at each budget the planner's pick next to the top
    # model alone with DPM-Solver++ and with EM at floor(budget) steps
    assert r.stdout.index("The honest comparison") < r.stdout.index("evals/sample by level")  # the cost table
    h = data["planner"]
    assert [b["budget"] for b in h["budgets"]] == list(image_demo.SETTINGS["quick"]["budgets"])
    assert h["calibration"]["sampler"] == "dpmpp_2m" and h["calibration"]["pipeline_runs"] > 0
    for b in h["budgets"]:
        steps = math.floor(b["budget"])
        assert b["dpm_top"]["steps"] == steps and b["em_top"]["steps"] == steps
        assert b["dpm_top"]["top_equivalents_per_sample"] == steps
        p = b["pick"]
        assert p["sampler"] == "dpmpp_2m" and p["predicted_top_equivalents"] <= b["budget"] * (1 + 1e-9)
        assert p["ode_path_error"] >= 0 and p["predicted_ode_path_error"] > 0
        if p["kind"] in ("top", "switch"):  # deterministic: the counted cost is the predicted one
            assert p["top_equivalents_per_sample"] == pytest.approx(p["predicted_top_equivalents"])
        if p["kind"] == "top":  # the same run as DPM-Solver++ alone: no difference
            assert b["pick_minus_dpm_ode_path_error"] == 0 and b["pick_minus_dpm_kid"] == 0


def test_existing_outputs_are_refused_before_sampling(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text("old")

    def no_sampling(*a, **k):
        raise AssertionError("sampled before checking the outputs")

    monkeypatch.setattr(image_demo, "_run", no_sampling)
    r = CliRunner().invoke(main, ["demo", "--quick", "--out-dir", str(out)])
    assert r.exit_code != 0 and "--overwrite" in r.output, r.output
    assert (out / "demo.json").read_text() == "old"
    assert not (out / "grids.png").exists()
    with pytest.raises(image_demo.OutputsExist):
        image_demo.run_image_demo(str(out), quick=True)


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--n", "0"], "--n"),
        (["--n", "-3"], "--n"),
        (["--problem", "mnist"], "--problem"),
        (["--paths", "16"], "--paths"),  # an HTMC option with the image demo
        (["--problem", "htmc", "--out-dir", "x"], "--out-dir"),  # an image option with the HTMC demo
    ],
)
def test_bad_inputs_get_a_clear_error(tmp_path, args, expect):
    r = CliRunner().invoke(main, ["demo", "--quick", *args])
    assert r.exit_code == 2 and expect in r.output, r.output


def test_run_image_demo_rejects_bad_n(tmp_path):
    with pytest.raises(ValueError, match="n: expected"):
        image_demo.run_image_demo(str(tmp_path / "d"), n=0, quick=True)
    assert not (tmp_path / "d").exists()
