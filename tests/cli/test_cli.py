"""The ``mlem`` command line."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import multilevel_em
from multilevel_em.cli.main import main


def test_help_lists_the_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout
    for cmd in ("demo", "version"):
        assert cmd in r.stdout
    r = CliRunner().invoke(main, ["demo", "-h"])
    assert r.exit_code == 0 and "--quick" in r.stdout and "--json" in r.stdout


def test_version():
    r = CliRunner().invoke(main, ["version"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == multilevel_em.__version__


def test_unknown_command_fails():
    r = CliRunner().invoke(main, ["frobnicate"])
    assert r.exit_code != 0


def test_demo_quick_json():
    # --paths 16 keeps this to a few seconds.
    r = CliRunner().invoke(main, ["demo", "--problem", "htmc", "--quick", "--json", "--paths", "16", "--seed", "1"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert data["n_paths"] == 16
    assert 1.0 < data["calibration"]["gamma"] < 8.0
    rows = data["rows"]
    assert {row["method"] for row in rows} == {"em", "mlem"}
    for row in rows:
        assert set(row) >= {"method", "steps", "levels", "top_equivalents", "error", "seconds"}
        assert math.isfinite(row["error"]) and row["error"] > 0
        assert row["top_equivalents"] > 0
    for row in rows:
        if row["method"] == "em":
            # EM with N steps of the top level costs N top-level evaluations.
            assert row["top_equivalents"] == row["steps"]
        else:
            assert set(row) >= {"target", "predicted_top_equivalents", "speedup", "speedup_vs_best_em"}
    em = [row["error"] for row in rows if row["method"] == "em" and row["steps"] <= 128]
    assert em == sorted(em, reverse=True), f"EM error should fall with more steps: {em}"


@pytest.mark.slow
def test_bench_htmc_quick(tmp_path):
    out, png = tmp_path / "htmc.json", tmp_path / "htmc.png"
    r = CliRunner().invoke(
        main, ["bench", "htmc", "--quick", "--gammas", "4", "--paths", "64", "--out", str(out), "--plot", str(png)]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert png.stat().st_size > 0
    (res,) = data["per_gamma"]
    assert res["gamma"] == 4.0 and {"em", "mlem"} <= set(res["fronts"])
    em, ml = res["fits"]["em"]["slope"], res["fits"]["mlem"]["slope"]
    # The qualitative claim even at this size: EM's cost grows faster than ML-EM's as the error shrinks.
    assert em > ml, (em, ml)


def test_bench_htmc_rejects_bad_gammas(tmp_path):
    r = CliRunner().invoke(main, ["bench", "htmc", "--gammas", "4,-1", "--out", str(tmp_path / "x.json")])
    assert r.exit_code != 0 and "--gammas" in r.output
    assert not (tmp_path / "x.json").exists()


def test_calibrate_command_plans(tmp_path):
    out, png = tmp_path / "cal.json", tmp_path / "cal.png"
    r = CliRunner().invoke(
        main,
        [
            "calibrate",
            "--gamma",
            "4",
            "--levels",
            "4",
            "--paths",
            "16",
            "--target",
            "0.1",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["plan"]["target"] == 0.1 and data["plan"]["steps"] >= 1
    assert out.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_command_unreachable_target():
    # A 4-level ladder's top level has a pathwise bias of about 0.05: 0.01 cannot be reached.
    r = CliRunner().invoke(main, ["calibrate", "--gamma", "4", "--levels", "4", "--paths", "16", "--target", "0.01"])
    assert r.exit_code != 0 and "unreachable" in r.output


def test_calibrate_command_rejects_target_and_budget():
    r = CliRunner().invoke(main, ["calibrate", "--target", "0.1", "--budget", "3"])
    assert r.exit_code != 0 and "--target" in r.output


def test_demo_rejects_too_few_paths():
    r = CliRunner().invoke(main, ["demo", "--problem", "htmc", "--quick", "--paths", "1"])
    assert r.exit_code != 0
    assert "--paths" in r.output
