"""`mlem bench diffusion` over seeds: mean/se/t-interval aggregation, cost-to-reach and speedup intervals,
the --seeds option's errors (synthetic inputs; the quick end-to-end run is in test_mlp_ladder.py)."""

import math

import numpy as np
import pytest
from click.testing import CliRunner

from multilevel_em.bench.diffusion import (
    aggregate_settings,
    cost_to_reach,
    mean_band,
    mean_fronts,
    reach_summary,
    seed_list,
    speedup_summary,
    t_quantile_975,
    target_check,
)
from multilevel_em.cli.main import main


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30, 31, 60, 500):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


def test_mean_band_is_the_t_interval_and_ordered():
    v = [1.0, 2.0, 4.0, 7.0]
    b = mean_band(v)
    se = np.std(v, ddof=1) / 2.0
    assert b["n"] == 4 and b["mean"] == pytest.approx(3.5) and b["se"] == pytest.approx(se, rel=1e-12)
    assert b["lo"] == pytest.approx(3.5 - 3.182 * se) and b["hi"] == pytest.approx(3.5 + 3.182 * se)
    assert b["lo"] <= b["mean"] <= b["hi"]
    one = mean_band([2.0])
    assert one["mean"] == 2.0 and one["se"] is None and one["lo"] is None
    with pytest.raises(ValueError, match="values"):
        mean_band([])


def _run(method, steps, cost, error, **kw):
    return dict(method=method, steps=steps, cost=cost, seconds=0.01 * cost, error=error, **kw)


def test_aggregate_settings_recomputes_mean_and_se_over_seeds():
    rng = np.random.default_rng(0)
    seeds = []
    for s in range(3):
        runs = [
            _run("em_top", n, float(n), float(rng.uniform(0.1, 1.0)), mmd2=float(rng.uniform(0, 1e-2)))
            for n in (10, 20)
        ]
        runs.append(_run("mlem_em", 100, float(rng.uniform(5, 6)), float(rng.uniform(0.1, 0.2)), top_fires=4))
        if s != 1:  # missing from seed 1 (saturation stopped the sweep earlier there): left out
            runs.append(_run("mlem_em", 100, 9.0, 0.05, top_fires=8))
        seeds.append(runs)
    agg = aggregate_settings(seeds)
    assert [(e["method"], e["steps"], e.get("top_fires")) for e in agg] == [
        ("em_top", 10, None),
        ("em_top", 20, None),
        ("mlem_em", 100, 4),
    ]
    for e in agg:
        match = [
            [
                r
                for r in runs
                if r["method"] == e["method"] and r["steps"] == e["steps"] and r.get("top_fires") == e.get("top_fires")
            ][0]
            for runs in seeds
        ]
        for f in ("error", "cost", "seconds"):
            vals = np.array([r[f] for r in match])
            assert e[f]["mean"] == pytest.approx(vals.mean(), rel=1e-12)
            assert e[f]["se"] == pytest.approx(vals.std(ddof=1) / math.sqrt(3), rel=1e-12)
            assert e[f]["lo"] <= e[f]["mean"] <= e[f]["hi"]
        assert ("mmd2" in e) == (e["method"] == "em_top")
        assert e["seeds"] == 3
    fronts = mean_fronts(agg)
    assert [p["steps"] for p in fronts["mlem_em"]] == [100]
    assert all(
        a["cost"]["mean"] < b["cost"]["mean"] and a["error"]["mean"] > b["error"]["mean"]
        for f in fronts.values()
        for a, b in zip(f, f[1:])
    )
    with pytest.raises(ValueError, match="per_seed_runs"):
        aggregate_settings([])


def test_cost_to_reach_interpolates_in_log_log():
    front = [(10.0, 0.4), (20.0, 0.1), (40.0, 0.05)]
    assert cost_to_reach(front, 0.2) == pytest.approx(math.sqrt(200.0))  # halfway in log error
    assert cost_to_reach(front, 0.1) == pytest.approx(20.0)
    assert cost_to_reach(front, 0.5) == 10.0  # the cheapest run already reaches it: no extrapolation
    assert cost_to_reach(front, 0.01) is None
    assert cost_to_reach([], 1.0) is None


def test_reach_and_speedup_summaries():
    ref = reach_summary([20.0, 22.0, 19.0, 21.0, 20.0])
    ml = reach_summary([8.0, 9.0, 7.5, 8.5, 8.0])
    assert ref["reached"] == 5 and ref["lo"] <= ref["mean"] <= ref["hi"]
    sp = speedup_summary(ref, ml)
    ratios = [a / b for a, b in zip(ref["per_seed"], ml["per_seed"])]
    assert sp["per_seed"] == pytest.approx(ratios)
    assert sp["mean"] == pytest.approx(math.exp(np.mean(np.log(ratios))))
    assert sp["lo"] <= sp["mean"] <= sp["hi"] and sp["resolved"]
    close = speedup_summary(ref, reach_summary([18.0, 23.0, 20.0, 19.0, 22.0]))  # overlapping intervals
    assert not close["resolved"]
    partial = reach_summary([20.0, None, 19.0])
    assert partial["reached"] == 2 and partial["mean"] is None and partial["lo"] is None
    sp2 = speedup_summary(partial, reach_summary([8.0, 9.0, 7.0]))
    assert sp2["pairs"] == 2 and sp2["lo"] is None and not sp2["resolved"] and sp2["per_seed"][1] is None
    row = {
        "target": "t",
        "error": 0.1,
        "cost": {"dpmpp_top": ref, "mlem_dpmpp": ml, "mlem_em": partial},
        "mlem_dpmpp_speedup_vs_dpmpp_top": sp,
        "mlem_em_speedup_vs_dpmpp_top": sp2,
    }
    check = {c["method"]: c for c in target_check([row])}
    assert check["mlem_dpmpp"]["met"] and check["mlem_dpmpp"]["met_strict"] == (sp["lo"] >= 2)
    assert not check["mlem_em"]["met"]
    assert not target_check([row], factor=3.0)[1]["met"]  # 2.5x is not 3x


def test_seed_list():
    assert seed_list(7, 3) == [7, 1007, 2007]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="seeds"):
            seed_list(0, bad)


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_cli_rejects_bad_seeds_without_a_traceback(bad, tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "diffusion",
            "--quick",
            "--seeds",
            bad,
            "--out",
            str(tmp_path / "d.json"),
            "--plot",
            str(tmp_path / "d.png"),
        ],
    )
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--seeds" in errors[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "d.json").exists()


@pytest.mark.slow
def test_retrain_trains_one_ladder_per_seed(tmp_path):
    import json

    out = tmp_path / "d.json"
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "diffusion",
            "--quick",
            "--retrain",
            "--train-steps",
            "20",
            "--paths",
            "32",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "d.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["retrain"] and "retrains" in data["seed_varies"]
    assert "training seed 1000" in r.output
    for p in data["problems"]:
        g = p["gamma_per_seed"]
        assert len(g) == 2 and g[0] != g[1]  # two trainings, two ladders
        assert [q["ladder"]["training"]["seed"] for q in p["per_seed"]] == [0, 1000]
    lad = tmp_path / "lad"
    lad.mkdir()
    r = CliRunner().invoke(main, ["bench", "diffusion", "--quick", "--retrain", "--ladders", str(lad)])
    assert r.exit_code == 2 and "--retrain" in r.output and "Traceback" not in r.output


def test_front_reach_band_is_ordered_and_uses_the_means():
    from multilevel_em.bench.diffusion import front_reach, front_speedup

    def setting(method, steps, cost, errors):
        return {"method": method, "steps": steps, "cost": mean_band([cost] * 3), "error": mean_band(errors)}

    settings = [
        setting("dpmpp_top", 10, 10.0, [0.30, 0.32, 0.28]),
        setting("dpmpp_top", 20, 20.0, [0.10, 0.12, 0.08]),
        setting("mlem_dpmpp", 10, 4.0, [0.25, 0.35, 0.30]),
        setting("mlem_dpmpp", 20, 8.0, [0.09, 0.11, 0.10]),
    ]
    ref = front_reach(settings, "dpmpp_top", 0.2)
    ml = front_reach(settings, "mlem_dpmpp", 0.2)
    # mean front: (10, 0.30) -> (20, 0.10), log-log interpolation at 0.2
    w = (math.log(0.3) - math.log(0.2)) / (math.log(0.3) - math.log(0.1))
    assert ref["mean"] == pytest.approx(10 * 2**w)
    for r in (ref, ml):
        assert r["lo"] <= r["mean"] <= r["hi"]
    sp = front_speedup(ref, ml)
    assert sp["mean"] == pytest.approx(ref["mean"] / ml["mean"]) and sp["lo"] <= sp["mean"] <= sp["hi"]
    assert sp["resolved"] == (ml["hi"] < ref["lo"])
    assert front_reach(settings, "dpmpp_top", 0.01) == {"mean": None, "lo": None, "hi": None}


def test_reaggregate_reproduces_the_aggregate(tmp_path):
    import json

    from multilevel_em.bench.diffusion import reaggregate, run_bench
    from multilevel_em.diffusion.mlp import train_mlp_ladder
    from multilevel_em.problems.gaussian import gaussian, gaussian_mixture

    for kind, P in (("gaussian", gaussian(2, seed=0)), ("mixture", gaussian_mixture(2, components=2, seed=0))):
        train_mlp_ladder(P, (4, 8, 16), steps=5, batch=16, seed=0).save(str(tmp_path / "lad" / kind))
    small = dict(
        n_gauss=16,
        n_mix=16,
        ref_steps=64,
        em_steps=(5, 10),
        ode_steps=(5, 10),
        mlem_steps=(10,),
        mlem_ode_steps=(5,),
        top_fires=(1, 4),
        stitch_fractions=(0.4,),
    )
    res = run_bench(
        quick=True,
        out=str(tmp_path / "d.json"),
        plot_path=None,
        ladders=str(tmp_path / "lad"),
        seeds=3,
        overrides=small,
        echo=lambda *_: None,
    )
    stored = json.loads((tmp_path / "d.json").read_text())
    again = reaggregate(stored)
    for a, b in zip(res["problems"], again["problems"]):
        assert a["settings"] == b["settings"] and a["fronts"] == b["fronts"]
        assert json.dumps(a["table"], sort_keys=True) == json.dumps(b["table"], sort_keys=True)
        assert a["target_check"] == b["target_check"] and len(a["seeds"]) == 3
        # the schedule planner's pick inside DPM-Solver++, one per budget, in every seed (grouped by budget)
        planned = [e for e in a["settings"] if e["method"] == "planned_dpmpp"]
        assert [e["budget"] for e in planned] == [5, 10, 20] and all(e["seeds"] == 3 for e in planned)
        assert {r["target"] for r in a["target_check"] if r["method"] == "planned_dpmpp"} == {
            r["target"] for r in a["table"]
        }
