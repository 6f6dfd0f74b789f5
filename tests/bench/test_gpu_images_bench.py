"""``mlem bench gpu`` (multilevel_em/bench/gpu_images.py: train + benchmark a UNet ladder on one GPU) works end to end, here on the CPU.

Its --quick mode runs every stage (training on a time budget, calibration, EM / DPM-Solver++ / ML-EM
sampling, scoring, plot, JSON) at a size of seconds; the numbers are not judged, only their shape and
consistency. The GPU-only parts (the noise on the device, padded sub-batches) are checked against
MultilevelPipeline on the CPU, where they must give the same samples.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "multilevel_em" / "images" / "pretrained" / "digits"


@pytest.fixture(scope="module")
def bench():
    from multilevel_em.bench import gpu_images

    return gpu_images


def _check_result(data: dict, settings: list, budget_s: float) -> None:
    for key in (
        "device_name",
        "torch",
        "command",
        "argv",
        "settings",
        "data",
        "ladder",
        "training",
        "calibration",
        "metric",
        "runs",
        "summary",
        "summary_lines",
        "n",
        "phases_seconds",
        "total_seconds",
    ):
        assert key in data, key
    assert data["device"] == "cpu" and data["settings"]["quick"]
    tr = data["training"]
    K = len(data["ladder"]["widths"])
    assert len(tr["train_seconds_per_level"]) == len(tr["seconds_per_iteration"]) == len(tr["final_loss"]) == K
    assert all(t > 0 for t in tr["train_seconds_per_level"]) and tr["iters_per_level"] >= tr["probe_iters"]
    assert "equal iterations per level" in tr["split"]
    # The budget is kept: it may overrun by the iteration in flight at each level (their measured times, doubled
    # for a loaded machine) plus set-up; not a timing test of the machine, a test of the deadline guard.
    slack = 2 * sum(tr["seconds_per_iteration"]) + 5
    assert tr["train_wall_seconds"] < budget_s + slack, (tr["train_wall_seconds"], budget_s, slack)
    cal = data["calibration"]
    assert cal["gamma"] is None or np.isfinite(cal["gamma"])
    assert "gamma_se" in cal
    flops = data["ladder"]["flops"]
    assert all(0 < a < b for a, b in itertools.pairwise(flops))
    # One run per requested setting, none skipped, each with positive costs and a quality number.
    runs = data["runs"]
    assert [(r["method"], r.get("steps", r.get("budget"))) for r in runs] == settings
    key = data["metric"]["key"]
    for r in runs:
        assert "skipped" not in r
        assert r["top_equivalents"] > 0 and r["wall_seconds_per_sample"] > 0 and r["flops_per_sample"] > 0
        assert np.isfinite(r[key]) and r[key + "_se"] >= 0 and len(r[key + "_chunks"]) == 8
        if r["method"] in ("em", "dpmpp_2m"):  # the top level once per step
            assert r["top_equivalents"] == pytest.approx(r["steps"])
        else:  # ML-EM spends what its plan predicted, within the randomness of the draws, and about its budget
            planned = r["plan"]["predicted_top_equivalents"]
            assert planned <= r["budget"] * 1.001
            assert r["top_equivalents"] == pytest.approx(planned, rel=0.3)
            assert r["top_equivalents"] == pytest.approx(r["flops_per_sample"] / flops[-1])


@pytest.mark.slow
def test_quick_run_writes_json_and_plot(bench, tmp_path, capsys):
    out = tmp_path / "results" / "gpu_images.json"
    res = bench.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    assert data["metric"]["name"] == "KID" and data["data"]["name"] == "digits"
    assert data["ladder"]["block_out_channels"][-1] == [16, 32, 32]
    q = bench.QUICK
    settings = (
        [("em", s) for s in q["em_steps"]]
        + [("dpmpp_2m", s) for s in q["dpm_steps"]]
        + [("mlem", b) for b in q["mlem_budgets"]]
    )
    _check_result(data, settings, q["train_seconds"])
    assert all("sliced_wasserstein" in r for r in data["runs"])  # digits: KID and pixel SW
    assert [e["budget"] for e in data["summary"]["equal_cost"]] == [10]  # ML-EM budget 10 vs EM with 10 steps
    png = tmp_path / "results" / "gpu_images.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["total_seconds"] > 0  # how long it took is the benchmark's to report, not a test's to judge
    assert "equal cost 10" in capsys.readouterr().out
    # The real ladders ran first, inside their time budget, and are in the same results file.
    real = data["real_ladders"]
    assert (
        real["quick"] and real["device"] == "cpu" and real["timing"]["time_budget_seconds"] == q["real_ladders_seconds"]
    )
    assert set(real["models"]) == set(bench.real_ladders.MODELS) and "real_ladders" in data["phases_seconds"]


@pytest.mark.slow
def test_folder_data_is_scored_by_sliced_wasserstein(bench, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "f.json"
    bench.main(
        [
            "--quick",
            "--data",
            str(folder),
            "--train-seconds",
            "1",
            "--probe-iters",
            "2",
            "--cal-steps",
            "24",
            "--em-steps",
            "6",
            "--dpm-steps",
            "4",
            "--mlem-budgets",
            "3",
            "--out",
            str(out),
            "--plot",
            "",
        ]
    )
    data = json.loads(out.read_text())
    assert data["metric"]["name"] == "SW" and "kid" not in data["runs"][0]
    assert data["data"] == {"name": str(folder), "n_images": 24, "size": 16, "channels": 3, "skipped_files": 1}
    _check_result(data, [("em", 6), ("dpmpp_2m", 4), ("mlem", 3.0)], 1.0)
    assert not (tmp_path / "f.png").exists()


def test_device_runner_samples_as_the_pipeline_does(bench):
    """DevicePipeline.run (noise on the device, optional padded sub-batches) = MultilevelPipeline.__call__ on CPU."""
    from multilevel_em.images.pipeline import MultilevelPipeline

    pipe = MultilevelPipeline.from_pretrained(str(SHIPPED))
    dev = bench.DevicePipeline(pipe.ladder, "cpu", pad=1, calibration=pipe.calibration)
    padded = bench.DevicePipeline(pipe.ladder, "cpu", pad=8, calibration=pipe.calibration)
    for method, knob in (("em", {"steps": 6}), ("dpmpp_2m", {"steps": 4}), ("mlem", {"budget": 10})):
        ref = pipe(6, method=method, generator=torch.Generator().manual_seed(3), **knob)
        x, rep = dev.run(6, method, seed=3, **knob)
        assert torch.equal(x, ref.x), method
        assert rep["top_equivalents_per_sample"] == ref.report["top_equivalents_per_sample"]
        assert rep["steps"] == ref.report["steps"] and rep.get("plan") == ref.report.get("plan")
        xp, rep_p = padded.run(6, method, seed=3, **knob)  # padded rows (copies of the last row) dropped: same samples
        torch.testing.assert_close(xp, x, rtol=1e-4, atol=1e-4)
        assert rep_p["top_equivalents_per_sample"] == rep["top_equivalents_per_sample"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "/no/such/folder"], "is not a folder"),
        (["--widths", "8,8,16"], "strictly increasing"),
        (["--widths", "16,8,32"], "strictly increasing"),
        (["--widths", "6,8,12"], "multiple of --norm-groups"),
        (["--n", "20"], "multiple of 16"),
        (["--mlem-budgets", "10,-1"], "positive numbers"),
        (["--widths", "8"], "at least 2 levels"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_work(bench, tmp_path, capsys, argv, message):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", *argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err
    assert not out.exists()


def test_help_documents_the_run(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out.lower()
    for word in ("--train-seconds", "--data", "--quick", "equal iterations per level", "h100", "--mlem-budgets"):
        assert word in text, word
