"""The wall-clock benchmark (``mlem bench wallclock``, multilevel_em/bench/wallclock.py) runs in quick mode and writes the JSON it promises.

Timings are not asserted (the machine is shared): only the structure, and that every ratio and
rate is a finite positive number.
"""

from __future__ import annotations

import json
import math

import pytest

from multilevel_em.bench import wallclock


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_wallclock_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "results" / "wallclock.json"
    res = wallclock.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res)) and data["quick"] and data["threads"] == 1
    d, m = data["digits"], data["mlp"]
    budgets = [f"{b:g}" for b in d["budgets"]]
    assert set(d["ratio"]) == set(m["ratio"]) == {"wall", "cpu"}  # both clocks
    for clock in ("wall", "cpu"):
        # quick mode leaves out the compiled execution (minutes of compiling): --compiled-only measures it
        assert set(d["ratio"][clock]) == {
            "eager",
            "traced",
            "traced+exact",
            "traced+wallplan",
            "traced+static",
            "traced+static+wallplan",
            "eager+static+wallplan",
        }
        assert set(d["ratio_in_wall_units"][clock]) == set(d["ratio"][clock])
        for ex, r in d["ratio"][clock].items():
            assert list(r) == budgets and all(_positive(v) for v in r.values()), (clock, ex, r)
            assert all(_positive(v) for v in d["ratio_in_wall_units"][clock][ex].values()), (clock, ex)
        for name, run in d["runs"].items():
            assert _positive(run[f"{clock}_seconds_per_top_equivalent"]), name
            assert _positive(run[f"{clock}_seconds_per_wall_top_equivalent"]), name
    # EM-top counts the same in both units: one top-level evaluation per step
    for b in budgets:
        em = d["runs"][f"traced/em/{b}"]
        assert em["wall_top_equivalents_per_sample"] == pytest.approx(em["top_equivalents_per_sample"])
    assert all(_positive(run["top_equivalents_per_sample"]) for run in d["runs"].values())
    # EM-top with floor(budget) steps spends exactly that many top-level equivalents per sample.
    assert [d["runs"][f"traced/em/{b}"]["top_equivalents_per_sample"] for b in budgets] == [float(b) for b in budgets]
    for name, row in d["equal_quality"]["mlem"].items():
        assert _positive(row["path_error"]) and _positive(row["cpu"]["samples_per_second"]), name
    assert all(_positive(v) for v in d["equal_quality"]["path_error"].values())
    for prof in d["profile"]:
        assert len(prof["levels"]) == 4 and prof["seconds_in_levels"] <= prof["seconds"]
    assert {"eager", "traced", "traced_buckets"} <= set(d["microbench"]["levels"][0]["ms_per_call"])
    assert len(d["wall_costs_seconds_per_sample"]) == 4 and set(d["wall_plans"]) == set(budgets)
    for clock in ("wall", "cpu"):
        assert set(m["ratio"][clock]) == {"eager", "traced", "eager+exact", "traced+exact"}
        for r in m["ratio"][clock].values():
            assert set(r) == {"typical", "sparse"} and all(_positive(v) for v in r.values())
        assert set(m["runs"]["eager/mlem_typical"]["breakdown_seconds"][clock]) == {"levels", "noise", "loop"}
    assert m["traced_max_abs_diff"] < 1e-4  # the traced MLPs compute the same function
    assert "ML-EM / EM-top" in capsys.readouterr().out


@pytest.mark.compile
def test_wallclock_compiled_only_compares_one_plan_in_three_executions(tmp_path, capsys):
    out = tmp_path / "wallclock_compiled.json"
    res = wallclock.main(["--quick", "--compiled-only", "--out", str(out)])
    d = res["digits"]
    assert res["mlp"] is None and d["budgets"] == [8, 32] and d["compile_warm_up_seconds"] > 0
    assert set(d["ratio"]["cpu"]) == {"eager+static+wallplan", "traced+static+wallplan", "compiled+static+wallplan"}
    for b in ("8", "32"):  # one plan: the same counted cost in every execution
        costs = {d["runs"][f"{ex}/mlem/{b}"]["wall_top_equivalents_per_sample"] for ex in d["ratio"]["cpu"]}
        assert len({round(c, 9) for c in costs}) == 1
    assert "eager / traced / compiled" in capsys.readouterr().out
