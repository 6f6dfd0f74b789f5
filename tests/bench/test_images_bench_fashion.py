"""``mlem bench images`` on a Fashion-MNIST ladder: the test-split reference, the floor and blurred references
beside the runs, the new samplers, the half-cost summary, and the resumable --cache-dir / --shard path, on a
tiny 32x32 ladder trained on IDX files the test writes (the Debian package is not needed)."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_fashion_files

pytest.importorskip("diffusers")

from multilevel_em.bench.images import markdown_tables, run_images_bench
from multilevel_em.cli.main import main
from multilevel_em.images.data import load_fashion_mnist
from multilevel_em.images.ladder import ladder_dataset, load_ladder, resolve_ladder

RUNS = [
    ("dpmpp_2m", {"steps": 2}),
    ("unipc", {"steps": 2}),
    ("dpmpp_sde", {"steps": 2}),
    ("em", {"steps": 3}),
    ("stitch", {"steps": 2, "sampler": "dpmpp_2m", "fractions": [0.5]}),
]
SMALL = dict(n=64, boot=30, pathwise_n=8, em_ref_steps=6, ode_ref_steps=4, batch=64)


@pytest.fixture(scope="module")
def fashion_ladder(tmp_path_factory):
    """A 2-level 32x32 ladder (widths 4, 8) trained for 2 iterations on 80 random "Fashion-MNIST" images,
    calibrated (8 paths of 18 steps)."""
    from multilevel_em.images import MultilevelPipeline, train_ladder

    root = tmp_path_factory.mktemp("fashion")
    data_dir = write_fashion_files(root / "idx", 80, 30)
    out = str(root / "ladder")
    ladder = train_ladder(
        load_fashion_mnist("train", data_dir=data_dir), out, widths=[4, 8], iters=2, batch=4, loss_plot=False
    )
    pipe = MultilevelPipeline(ladder)
    pipe.calibrate(n=8, steps=18, generator=torch.Generator().manual_seed(0))
    pipe.calibrate_samplers(["em", "dpmpp_2m"], n=4, steps=(2, 3, 4), ref_steps=8, gain_steps=(3,))
    pipe.save_calibration(out)
    return out, data_dir


def test_the_ladder_says_its_data_set_and_shipped_names_resolve(fashion_ladder):
    out, _ = fashion_ladder
    assert ladder_dataset(load_ladder(out)) == "fashion-mnist"
    assert resolve_ladder("digits").endswith("pretrained/digits") and resolve_ladder(out) == out
    with pytest.raises(ValueError, match="ladder: expected a ladder folder or one of the shipped ladders"):
        resolve_ladder("no-such-ladder")


def test_fashion_runs_are_scored_against_the_test_split_with_the_floor_beside_them(fashion_ladder, tmp_path):
    out, data_dir = fashion_ladder
    res = run_images_bench(
        out, runs=RUNS, data_dir=data_dir, out=str(tmp_path / "r.json"), plot_path=str(tmp_path / "r.png"), **SMALL
    )
    assert res["dataset"] == "fashion-mnist" and "30 Fashion-MNIST test images" in res["reference_set"]
    assert "FashionClassifier" in res["extractor"] and "n = 64" in res["protocol"]
    names = [r["images"] for r in res["references"]]
    assert names == [
        "training images (the floor)",
        "training images blurred, sigma 1 px",
        "training images blurred, sigma 2 px",
    ]
    for r in res["references"]:
        assert r["n"] == 64 and r["fd_ci"][0] <= r["fd_ci"][1]
    rows = {r["label"]: r for r in res["runs"]}
    assert set(rows) == {"DPM++ 2", "UniPC 2", "DPM++ SDE 2", "EM-top 3", "T-Stitch DPM++ 2 (level 1 50%)"}
    assert rows["UniPC 2"]["pathwise_error"] is not None  # an ODE sampler: scored against the ODE reference
    assert rows["DPM++ SDE 2"]["pathwise_error"] is None  # fresh noise per step count
    assert rows["T-Stitch DPM++ 2 (level 1 50%)"]["top_equivalents"] < 2  # half its steps on the cheap level
    best = res["summary"]["best_fd"]
    assert best["run"] in rows and best["cheapest_within_noise"] in best["within_noise"]
    assert json.load(open(tmp_path / "r.json"))["references"][0]["images"] == "training images (the floor)"
    assert [lv["level"] for lv in res["levels"]] == [1, 2] and res["levels"][1]["seconds_share"] == 1.0
    assert all(lv["seconds_per_sample"] > 0 and lv["flop_share"] <= 1 for lv in res["levels"])
    table = markdown_tables(res).splitlines()
    assert len(table) == 2 + len(RUNS) + 3 and table[0].startswith("| run | top-eq | CPU ms/sample")
    assert any(line.startswith("| UniPC 2 | 2.0 |") for line in table)
    assert table[-3].startswith("| training images (the floor) (real images) | — |")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_sharded_cached_runs_give_the_same_numbers_and_resume(fashion_ladder, tmp_path):
    out, data_dir = fashion_ladder
    runs = RUNS[:3]
    direct = run_images_bench(out, runs=runs, data_dir=data_dir, out=None, plot_path=None, **SMALL)
    cache = str(tmp_path / "cache")
    parts = [
        run_images_bench(out, runs=runs, data_dir=data_dir, cache_dir=cache, shard=s, out=None, plot_path=None, **SMALL)
        for s in ("1/2", "2/2")
    ]
    assert sorted(parts[0]["units"] + parts[1]["units"]) == sorted(
        ["DPM++ 2", "UniPC 2", "DPM++ SDE 2", "reference - DPM++ ODE"]
    )
    said = []
    merged = run_images_bench(
        out, runs=runs, data_dir=data_dir, cache_dir=cache, out=None, plot_path=None, echo=said.append, **SMALL
    )
    assert any("4 of 4 units done" in line for line in said)  # nothing recomputed
    for a, b in zip(direct["runs"], merged["runs"]):
        assert a["label"] == b["label"] and a["fd"] == pytest.approx(b["fd"], rel=1e-9)
        assert a["kid_ci"] == pytest.approx(b["kid_ci"], rel=1e-9)
    with pytest.raises(ValueError, match="cache_dir: .* other settings"):
        run_images_bench(
            out, runs=runs, data_dir=data_dir, cache_dir=cache, out=None, plot_path=None, **dict(SMALL, n=65)
        )


def test_cli_bad_inputs_name_their_options(fashion_ladder, tmp_path):
    out, data_dir = fashion_ladder
    base = ["bench", "images", "--ladder", out, "--data-dir", data_dir, "--out", str(tmp_path / "a.json")]
    base += ["--plot", str(tmp_path / "a.png")]
    r = CliRunner().invoke(main, base + ["--shard", "3/2", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--shard" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, base + ["--shard", "1/2"])
    assert r.exit_code == 2 and "--cache-dir" in r.output
    r = CliRunner().invoke(main, ["bench", "images", "--ladder", "no-such", "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and "--ladder" in r.output and "shipped ladders (digits, fashion)" in r.output
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "x.txt").write_text("not a cache")
    r = CliRunner().invoke(main, base + ["--quick", "--n", "64", "--cache-dir", str(tmp_path / "c2")])
    assert r.exit_code == 2 and "--cache-dir" in r.output and "Traceback" not in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(
        main,
        ["bench", "images", "--ladder", out, "--data-dir", str(tmp_path / "empty")]
        + ["--out", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png")],
    )
    assert r.exit_code == 2 and "--data-dir" in r.output and "apt-get install dataset-fashion-mnist" in r.output
    assert not (tmp_path / "a.json").exists()


def test_a_cached_top_model_run_survives_a_change_of_the_cheaper_levels(fashion_ladder, tmp_path):
    """Units record the levels they ran: retraining level 1 recomputes T-Stitch's run, not the top model's."""
    import shutil

    from safetensors.torch import load_file, save_file

    out, data_dir = fashion_ladder
    runs = [RUNS[0], RUNS[4]]  # DPM++ (top only) and T-Stitch on level 1
    cache = str(tmp_path / "cache")
    kw = dict(runs=runs, data_dir=data_dir, cache_dir=cache, out=None, plot_path=None, **SMALL)
    run_images_bench(out, **kw)
    copy = str(tmp_path / "ladder")
    shutil.copytree(out, copy)
    w = f"{copy}/level_1/diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(w).items()}, w, {"format": "pt"})
    said = []
    run_images_bench(copy, echo=said.append, **kw)
    assert any(line.startswith("DPM++ 2: from the cache") for line in said)
    assert not any(line.startswith("T-Stitch") and "from the cache" in line for line in said)


def test_the_planners_choice_and_mlem_are_compared_with_the_best_single_model(fashion_ladder, tmp_path):
    out, data_dir = fashion_ladder
    from multilevel_em.images import MultilevelPipeline

    choice = MultilevelPipeline.from_pretrained(out).choose(3)
    runs = [("dpmpp_2m", {"steps": 2}), ("em", {"steps": 6}), ("mlem", {"budget": 3})]
    twin = None
    if choice["method"] != "mlem":  # the planner picks one model: its run is listed, and reused for the choice
        twin = (choice["method"], {"steps": int(choice["steps"])})
        runs.append(twin)
    runs.append(("auto", {"budget": 3}))
    res = run_images_bench(out, runs=runs, data_dir=data_dir, out=None, plot_path=None, **SMALL)
    rows = {r["label"]: r for r in res["runs"]}
    auto = rows["planner's choice, budget 3"]
    if twin is not None:
        same = rows[auto["same_as"]]
        assert (same["method"], same["steps"]) == (twin[0], twin[1]["steps"]) and same["fd"] == auto["fd"]
    assert auto["auto"]["method"] in ("mlem", "em", "ddim", "euler_ode", "dpmpp_2m", "unipc")
    assert auto["sampler"] is not None and auto["top_equivalents"] <= 3 * 1.5
    target = res["summary"]["half_cost_target"]
    assert {c["run"] for c in target["runs"]} == {"planner's choice, budget 3", "ML-EM in em, budget 3"}
    assert target["best_single"] in rows and rows[target["best_single"]]["method"] in (
        "dpmpp_2m",
        "em",
        "unipc",
        "ddim",
    )
    for c in target["runs"]:
        lo, hi = c["fd_diff_ci"]
        assert lo <= c["fd_diff"] <= hi or not c["not_resolved_worse"] or lo <= 0
        assert c["not_resolved_worse"] == (lo <= 0)
    assert any(e["mlem"] == "planner's choice, budget 3" for e in res["equal_cost"])
