"""``mlem bench real-ladders`` (multilevel_em/bench/real_ladders.py), through the command line, with --quick's
tiny stand-ins: the JSON's structure, shares that sum to 1 per ladder, FLOPs that increase up each ladder, the
plans, --overwrite, the time budget, and the published configs (on the meta device: no weights, no timing).
Timings are not judged: the machine is shared."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from click.testing import CliRunner

from multilevel_em.bench import real_ladders
from multilevel_em.cli.main import main


def _run(*args):
    return CliRunner().invoke(main, ["bench", "real-ladders", *map(str, args)])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "real_ladders.json"
    r = _run("--quick", "--no-compile", "--batches", "1,4", "--repeats", "2", "--out", out)
    assert r.exit_code == 0, r.output
    return out, json.loads(out.read_text()), r.output


def test_quick_run_structure_shares_and_flops(quick):
    out, data, output = quick
    assert data["quick"] and data["device"] == "cpu" and data["dtype"] == "float32"
    assert data["batches"] == [1, 4] and data["modes"] == ["eager"]
    assert set(data["models"]) == set(real_ladders.MODELS)
    for m in data["models"].values():
        assert m["flops_per_image"] > 0 and m["config_source"]
        for b in ("1", "4"):
            cell = m["seconds"]["eager"][b]
            assert len(cell["seconds"]) == 2 and cell["seconds_per_image"] > 0
    assert set(data["ladders"]) == {"sd", "dit"}
    for key, lad in data["ladders"].items():
        assert lad["levels"] == list(real_ladders.LADDERS[key])
        flops = [data["models"][m]["flops_per_image"] for m in lad["levels"]]
        assert all(a < b for a, b in zip(flops, flops[1:])), (key, flops)  # cheapest first
        assert sum(lad["flop_share"]) == pytest.approx(1.0)
        assert set(lad["seconds_share"]) == {"eager/1", "eager/4"}
        for share in lad["seconds_share"].values():
            assert sum(share) == pytest.approx(1.0) and len(share) == len(lad["levels"])
    assert "sd: FLOP share" in output and "wrote" in output


def test_quick_run_plans(quick):
    """The seconds plan spends the budget in seconds; the FLOP plan's seconds are what its probabilities cost."""
    _, data, _ = quick
    for key, plans in data["plans"].items():
        assert set(plans) == {"eager/1", "eager/4"}
        levels = len(real_ladders.LADDERS[key])
        for plan in plans.values():
            assert "ASSUMED" in plan["delta_model"] and plan["calls"] == real_ladders.CALLS
            done = [row for row in plan["budgets"] if "skipped" not in row]
            for row in done:
                sec = row["seconds_plan"]
                assert sec["expected_seconds_per_image"] == pytest.approx(row["budget_seconds_per_image"], rel=1e-3)
                assert sec["added_variance_over_seconds_plan"] == pytest.approx(1.0)
                for k in ("seconds_plan", "flop_plan", "flop_shape_fit_to_seconds"):
                    assert len(row[k]["mean_probabilities"]) == levels - 1
                    assert all(0 < p <= 1 for p in row[k]["mean_probabilities"])
                    assert row[k]["evaluations_per_image"][0] == pytest.approx(real_ladders.CALLS)
                fit = row["flop_shape_fit_to_seconds"]
                assert fit["expected_seconds_per_image"] <= row["budget_seconds_per_image"] * 1.001
                ratio = row["flop_plan"]["expected_seconds_per_image"] / row["budget_seconds_per_image"]
                assert row["flop_plan_seconds_over_budget"] == pytest.approx(ratio)


def test_overwrite_is_enforced(quick, tmp_path):
    out, _, _ = quick
    before = out.read_bytes()
    r = _run("--quick", "--no-compile", "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output and str(out) in r.output
    assert out.read_bytes() == before
    r = _run("--quick", "--no-compile", "--models", "dit-s,dit-b,dit-xl", "--batches", "2", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert set(data["ladders"]) == {"dit"} and set(data["models"]) == {"dit-s", "dit-b", "dit-xl"}


def test_a_spent_time_budget_skips_cells_and_says_so(tmp_path):
    """What `mlem bench gpu` relies on: past the budget nothing more is started, shares then are None."""
    out = tmp_path / "r.json"
    r = _run("--quick", "--models", "dit-s,dit-b,dit-xl", "--batches", "1", "--time-budget", "1e-6", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    cells = [c for m in data["models"].values() for mode in m["seconds"].values() for c in mode.values()]
    assert cells and all("time budget" in c["skipped"] for c in cells)
    assert data["ladders"]["dit"]["seconds_share"] == {"eager/1": None, "compiled/1": None}
    assert data["plans"]["dit"] == {}


@pytest.mark.parametrize("argv", [["--models", "sd-2"], ["--batches", "0"], ["--repeats", "0"]])
def test_bad_arguments_are_refused_before_any_work(tmp_path, argv):
    out = tmp_path / "x.json"
    r = _run("--quick", *argv, "--out", out)
    assert r.exit_code == 2 and not out.exists(), r.output


def test_published_configs():
    """The full-size configs give the published parameter counts (UNets) and twice the DiT paper's Gflops."""
    params = {m: real_ladders.count_params(m) for m in ("sd-1.4", "bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny")}
    assert params == {
        "sd-1.4": 859_520_964,
        "bk-sdm-base": 579_384_964,
        "bk-sdm-small": 482_346_884,
        "bk-sdm-tiny": 323_384_964,
    }
    gflops = {m: real_ladders.count_flops(m) / 1e9 for m in ("dit-s", "dit-b", "dit-xl")}
    for m, paper in (("dit-s", 6.06), ("dit-b", 23.01), ("dit-xl", 118.64)):
        assert gflops[m] == pytest.approx(2 * paper, rel=0.01), (m, gflops[m])


def test_within_is_what_the_gpu_script_embeds():
    """`mlem bench gpu` calls real_ladders.within(seconds, device=...): the defaults inside a time budget."""
    data = real_ladders.within(1e-6, device="cpu", quick=True, echo=lambda line: None)
    assert data["timing"]["time_budget_seconds"] == 1e-6 and data["modes"] == ["eager", "compiled"]
    assert data["batches"] == list(real_ladders.BATCHES) and "--time-budget" in data["command"]
