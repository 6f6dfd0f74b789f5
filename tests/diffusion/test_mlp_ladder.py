"""MLP noise-prediction ladders (training, safetensors round trip, errors), `mlem train-mlp`, `mlem bench diffusion`."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

from multilevel_em import BrownianPath
from multilevel_em.cli.main import main
from multilevel_em.diffusion import VPSchedule, sample
from multilevel_em.diffusion.mlp import EpsMLP, load_mlp_ladder, measure_gamma, train_mlp_ladder
from multilevel_em.problems.gaussian import gaussian, gaussian_mixture, problem_from_spec


@pytest.fixture(scope="module")
def tiny():
    P = gaussian_mixture(3, components=2, seed=1)
    return P, train_mlp_ladder(P, (4, 8, 16), steps=30, batch=64, seed=5)


def test_eps_mlp_shapes_and_flops():
    m = EpsMLP(5, 16, depth=2, time_features=8)
    x = torch.randn(7, 5, dtype=torch.float64)
    assert m(x, 0.3).shape == (7, 5) and m(x, 0.3).dtype == torch.float64
    assert m(x, torch.full((7,), 0.3)).shape == (7, 5)
    # (5 + 8) -> 16 -> 16 -> 5: 2 in out + out per layer, 4 per hidden unit, 3 per time feature.
    assert m.flops() == (2 * 13 * 16 + 16) + (2 * 16 * 16 + 16) + (2 * 16 * 5 + 5) + 4 * 32 + 3 * 8
    with pytest.raises(ValueError, match="x: expected shape"):
        m(torch.randn(7, 4), 0.3)


def test_training_is_deterministic_and_costs_grow(tiny):
    P, mlp = tiny
    again = train_mlp_ladder(P, (4, 8, 16), steps=30, batch=64, seed=5)
    for a, b in zip(mlp.models, again.models):
        for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert na == nb and torch.equal(ta, tb)
    assert mlp.costs == sorted(mlp.costs) and mlp.widths == [4, 8, 16]
    g = measure_gamma(mlp, P, n=64, times=4)
    assert len(g["errors"]) == 3 and all(math.isfinite(e) and e > 0 for e in g["errors"])


def test_save_load_round_trip(tiny, tmp_path):
    P, mlp = tiny
    mlp.save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["widths"] == [4, 8, 16] and cfg["costs"] == mlp.costs
    assert set(cfg) >= {"schedule", "problem", "depth", "time_features", "training", "files"}
    assert sorted(os.listdir(tmp_path)) == ["config.json"] + [f"level_{k}.safetensors" for k in (1, 2, 3)]
    back = load_mlp_ladder(str(tmp_path))
    x = torch.randn(9, 3, dtype=torch.float64)
    for a, b in zip(mlp.models, back.models):
        for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert na == nb and torch.equal(ta, tb)
        assert torch.equal(a(x, 0.4), b(x, 0.4))
    Q = problem_from_spec(back.config["problem"], back.schedule)
    assert torch.equal(Q.means, P.means) and torch.equal(Q.covs, P.covs) and back.schedule == P.schedule


def test_corrupted_or_mismatched_checkpoint_names_the_file(tiny, tmp_path):
    _, mlp = tiny
    mlp.save(str(tmp_path))
    # Swapping two levels' weights: shapes no longer match the config's widths.
    a, b = tmp_path / "level_1.safetensors", tmp_path / "level_2.safetensors"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(ValueError, match=r"level_1\.safetensors: does not match config\.json"):
        load_mlp_ladder(str(tmp_path))
    a.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=r"level_1\.safetensors: not a readable safetensors file"):
        load_mlp_ladder(str(tmp_path))
    a.unlink()
    with pytest.raises(FileNotFoundError, match=r"level_1\.safetensors: missing"):
        load_mlp_ladder(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_mlp_ladder(str(tmp_path))


def test_schedule_in_config_is_read_with_the_one_format_and_checked_at_load(tiny, tmp_path):
    _, mlp = tiny
    mlp.save(str(tmp_path))
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    # What `mlem train-mlp` has always written: every VPSchedule field.
    assert cfg["schedule"] == {
        "kind": "linear",
        "beta_min": 0.1,
        "beta_max": 20.0,
        "s": 0.008,
        "num_train_timesteps": 1000,
        "t_max": 1.0,
    }
    assert load_mlp_ladder(str(tmp_path)).schedule == VPSchedule.linear()
    del cfg["schedule"]["beta_max"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: \"schedule\": linear schedule without \['beta_max'\]"):
        load_mlp_ladder(str(tmp_path))
    cfg["schedule"] = dict(VPSchedule.cosine().to_dict(), s=-1.0)
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: \"schedule\": .*s: expected a positive offset"):
        load_mlp_ladder(str(tmp_path))


@pytest.mark.slow
def test_ddim_eta_one_is_ddpm_and_shared_noise_converges():
    P = gaussian(3, seed=2)
    S = VPSchedule.linear()
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = sample(P.eps, x, schedule=S, steps=20, sampler="ddpm", generator=torch.Generator().manual_seed(1))
    b = sample(P.eps, x, schedule=S, steps=20, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a.x, b.x, atol=1e-4)
    # With its noise from a Brownian path shared with "em", DDPM approaches the same reverse-SDE path.
    W = BrownianPath(x.shape, 1e-4, 1.0, seed=3, dtype=x.dtype, depth=13)
    ref = sample(P.eps, x, schedule=S, steps=2000, sampler="em", noise=W, t_min=1e-4).x
    errs = [
        float(
            (sample(P.eps, x, schedule=S, steps=n, sampler="ddim", eta=1.0, noise=W).x - ref)
            .pow(2)
            .sum(1)
            .mean()
            .sqrt()
        )
        for n in (10, 1000)
    ]
    assert errs[1] < 0.25 * errs[0], errs


def test_cli_train_mlp(tmp_path):
    out = tmp_path / "lad"
    r = CliRunner().invoke(
        main,
        [
            "train-mlp",
            "--problem",
            "gaussian",
            "--dim",
            "2",
            "--out",
            str(out),
            "--steps",
            "20",
            "--widths",
            "4,8,16",
            "--batch",
            "32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "gamma" in r.output and (out / "level_3.safetensors").exists()
    assert load_mlp_ladder(str(out)).widths == [4, 8, 16]


@pytest.mark.slow
def test_bench_diffusion_quick(tmp_path):
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "diffusion",
            "--quick",
            "--train-steps",
            "60",
            "--paths",
            "48",
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert (
        png.exists()
        and data["benchmark"] == "diffusion"
        and data["command"].startswith("mlem bench diffusion --quick --train-steps 60 --paths 48 ")
    )
    assert [p["problem"] for p in data["problems"]] == ["gaussian", "mixture"]
    for p in data["problems"]:
        assert set(p) >= {"gamma", "runs", "fronts", "fronts_seconds", "table", "deltas", "ladder", "metric"}
        assert set(p["fronts"]) == {
            "em_top",
            "ddpm_top",
            "ddim_top",
            "dpmpp_top",
            "tstitch_em",
            "tstitch_dpmpp",
            "mlem_em",
            "mlem_dpmpp",
            "planned_dpmpp",
        }
        for run in p["runs"]:
            assert math.isfinite(run["error"]) and run["error"] >= 0 and run["cost"] > 0
            if run["method"].endswith("_top"):
                assert run["cost"] == pytest.approx(run["steps"])  # one top-model evaluation per step
            elif run["method"].startswith("mlem"):
                c = p["ladder"]["costs_flops"]
                assert run["cost"] >= run["steps"] * c[0] / c[-1] * (1 - 1e-9)  # level 1 runs at every step
            elif run["method"] == "planned_dpmpp":  # the planner's pick for a budget: its expected cost fits it
                assert run["predicted_cost"] <= run["budget"] * (1 + 1e-9) and run["pick"] and run["kind"]
                if run["kind"] in ("top", "switch"):  # deterministic: counted = expected
                    assert run["cost"] == pytest.approx(run["predicted_cost"])
        for row in p["table"]:
            assert set(row["cost"]) == set(p["fronts"])
    assert data["seeds"] == [0, 1000] and "x_T" in data["seed_varies"] and "95%" in data["band"]  # quick: 2 seeds
    for p in data["problems"]:
        assert p["seeds"] == [0, 1000] and [s["seed"] for s in p["per_seed"]] == [0, 1000]
        assert {run["seed"] for run in p["runs"]} == {0, 1000}
        for e in p["settings"]:  # the means recomputed from the recorded runs; ordered bands
            vals = [
                run["error"]
                for run in p["runs"]
                if run["method"] == e["method"]
                and all(run.get(k) == e.get(k) for k in ("steps", "fraction", "top_fires", "budget"))
            ]
            assert len(vals) == 2 and e["error"]["mean"] == pytest.approx(sum(vals) / 2, rel=1e-12)
            for f in ("error", "cost"):
                assert e[f]["lo"] <= e[f]["mean"] <= e[f]["hi"]
        for m, front in p["front_bands"].items():
            assert [[q["cost"]["mean"], q["error"]["mean"]] for q in front] == p["fronts"][m]
        for row in p["table"]:
            for c in row["cost"].values():
                assert c["n"] == 2 and (c["mean"] is None) == (c["reached"] < 2)
                if c["lo"] is not None:
                    assert c["lo"] <= c["mean"] <= c["hi"]
        assert {c["method"] for c in p["target_check"]} == {"mlem_em", "mlem_dpmpp", "planned_dpmpp"}
    mix = data["problems"][1]
    assert len(mix["statistical_floor"]["per_seed"]) == 2 and mix["statistical_floor"]["sw_mean"] > 0
    gauss = data["problems"][0]
    for seed in (0, 1000):
        em = sorted((r["steps"], r["error"]) for r in gauss["runs"] if r["method"] == "em_top" and r["seed"] == seed)
        assert em[0][1] > em[-1][1], f"EM error should fall with more steps: {em}"
    assert "ML-EM" in r.output and "DPM-Solver++" in r.output and "2 seeds" in r.output


def test_saturation_uses_the_real_step_size():
    from multilevel_em.bench.diffusion import T_MIN, _saturated

    # "em" with 100 steps from t = 1 to T_MIN: h = (1 - T_MIN) / 100, so a rate of 100 fires with
    # probability 0.9999 < 1, not at every step; on the diffusers samplers' grid (1 down to 0) it does.
    times = [1e-3, 0.1, 0.5, 1.0]
    assert not _saturated([lambda t: 100.0], 100, times, t_start=1.0, t_end=T_MIN)
    assert _saturated([lambda t: 100.0 / (1 - T_MIN)], 100, times, t_start=1.0, t_end=T_MIN)
    assert _saturated([lambda t: 100.0], 100, times, t_start=1.0, t_end=0.0)
    # Times inside the last step (never a step's start) do not count; a low rate elsewhere does.
    assert _saturated([lambda t: 100.0 if t > 0.05 else 1.0], 20, times, t_start=1.0, t_end=0.0)
    assert not _saturated([lambda t: 100.0, lambda t: 1.0], 20, times, t_start=1.0, t_end=0.0)


@pytest.mark.slow
def test_bench_diffusion_with_a_loaded_two_level_ladder_has_no_gamma(tmp_path):
    from multilevel_em.bench.diffusion import run_bench

    for kind, P in (("gaussian", gaussian(2, seed=0)), ("mixture", gaussian_mixture(2, components=2, seed=0))):
        train_mlp_ladder(P, (4, 8), steps=5, batch=16, seed=0).save(str(tmp_path / "lad" / kind))
    small = dict(
        n_gauss=16,
        n_mix=16,
        ref_steps=64,
        em_steps=(5, 10),
        ode_steps=(5,),
        mlem_steps=(10,),
        mlem_ode_steps=(5,),
        top_fires=(1,),
        stitch_fractions=(0.4,),
    )
    lines = []
    res = run_bench(
        quick=True,
        out=str(tmp_path / "d.json"),
        plot_path=str(tmp_path / "d.png"),
        ladders=str(tmp_path / "lad"),
        overrides=small,
        echo=lines.append,
    )
    assert [p["gamma"]["gamma"] for p in res["problems"]] == [None, None]
    assert (tmp_path / "d.png").stat().st_size > 0
    assert sum("gamma n/a" in line for line in lines) == 2, lines
    floor = res["problems"][1]["statistical_floor"]
    assert math.isfinite(floor["mmd2_mean"]) and floor["mmd2_std"] > 0


def test_bench_diffusion_records_the_command(monkeypatch, tmp_path):
    import multilevel_em.bench.diffusion as bench

    monkeypatch.chdir(tmp_path)  # the default results/diffusion.json is not there: no --overwrite needed
    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda **kw: seen.append(kw["command"]))
    for args, expected in (
        ([], "mlem bench diffusion"),
        (["--seed", "3", "--paths", "64"], "mlem bench diffusion --paths 64 --seed 3"),
    ):
        r = CliRunner().invoke(main, ["bench", "diffusion", *args])
        assert r.exit_code == 0, r.output
        assert seen[-1] == expected
