"""What the commands write, and when they may replace a file (issue 20, items 1, 2 and 13; through the entry point).

One rule for every command that writes: an existing output is replaced only with ``--overwrite``, checked
before any work (a refused run leaves every file as it was); ``--quick`` benchmark runs default to
``results/NAME_quick.*``, never the full run's results; a ladder shipped inside the package is never rewritten
unless a path there is named; measured sampler fits are never dropped by a new level calibration.
"""

import hashlib
import json
import os
import shutil

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from click.testing import CliRunner

from multilevel_em import Calibration
from multilevel_em.bench.registry import BENCHMARKS
from multilevel_em.calibration import SamplerFit
from multilevel_em.cli.main import main
from multilevel_em.images import MultilevelPipeline


class WorkStarted(Exception):
    """Raised by a stubbed benchmark or calibration: the command got past its checks and began the work."""


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _stop(*args, **kwargs):
    raise WorkStarted()


@pytest.fixture
def fast_calibration(monkeypatch):
    """MultilevelPipeline.calibrate with the tiny ladder fixture's 18 steps instead of 144 (seconds, not minutes)."""
    original = MultilevelPipeline.calibrate
    monkeypatch.setattr(MultilevelPipeline, "calibrate", lambda self, **kw: original(self, **{**kw, "steps": 18}))


@pytest.fixture
def measured(tiny_ladder, tmp_path):
    """A copy of the tiny ladder whose calibration.json also holds a measured sampler (as `--samplers ddim` writes)."""
    folder = str(tmp_path / "ladder")
    shutil.copytree(tiny_ladder, folder)
    path = os.path.join(folder, "calibration.json")
    cal = Calibration.load(path)
    steps = (4, 8, 16)
    cal.samplers["ddim"] = SamplerFit(
        sampler="ddim",
        family="ode",
        steps=steps,
        errors=[0.5 * n**-1.5 for n in steps],
        errors_se=[0.0] * 3,
        ref_steps=500,
        n=16,
        gain=0.7,
    )
    cal.save(path)
    return folder


# ----------------------------------------------------------------------------- item 1: calibrate --ladder


def test_calibrate_ladder_keeps_the_measured_samplers(measured, fast_calibration):
    """Item 1: `mlem calibrate --ladder DIR` refuses to replace DIR/calibration.json without --overwrite (before
    any work), and with it keeps the sampler fits it did not measure again."""
    path = os.path.join(measured, "calibration.json")
    before = _digest(path)
    r = _cli(["calibrate", "--ladder", measured, "--images", "8"])
    assert r.exit_code == 2 and "--overwrite" in r.output and "calibration.json exists" in r.output, r.output
    assert _digest(path) == before
    r = _cli(["calibrate", "--ladder", measured, "--images", "8", "--seed", "1", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert _digest(path) != before  # measured again, from other noise
    cal = Calibration.load(path)
    assert list(cal.samplers) == ["ddim"] and cal.samplers["ddim"].gain == pytest.approx(0.7)
    assert "kept the measurements of 1 sampler (ddim)" in r.output


def test_calibrate_ladder_with_out_elsewhere_keeps_samplers_and_leaves_the_ladder(measured, fast_calibration, tmp_path):
    """Item 1: --out writes the new calibration there (with the earlier samplers) and leaves DIR's file as it was."""
    path = os.path.join(measured, "calibration.json")
    before = _digest(path)
    out = tmp_path / "new.json"
    r = _cli(["calibrate", "--ladder", measured, "--images", "8", "--out", out])
    assert r.exit_code == 0, r.output
    assert _digest(path) == before
    assert list(Calibration.load(str(out)).samplers) == ["ddim"]


def test_calibrate_never_rewrites_the_shipped_ladder(monkeypatch):
    """Item 1: the shipped ladder's calibration.json (inside the package) is not the default output: --out is
    required, before any work."""
    from multilevel_em.bench.common import DIGITS_LADDER

    path = os.path.join(DIGITS_LADDER, "calibration.json")
    before = _digest(path)
    monkeypatch.setattr(MultilevelPipeline, "calibrate", _stop)
    for extra in ([], ["--overwrite"]):
        r = _cli(["calibrate", "--ladder", DIGITS_LADDER, *extra])
        assert r.exit_code == 2 and "--out" in r.output and "shipped" in r.output, r.output
        assert not isinstance(r.exception, WorkStarted)
    assert _digest(path) == before


# ----------------------------------------------------------------------------- item 2: --overwrite everywhere


def test_calibrate_out_and_plot_replace_only_with_overwrite(tmp_path):
    """Item 2: `mlem calibrate --out` (and --plot) no longer overwrite silently."""
    out, plot = tmp_path / "cal.json", tmp_path / "cal.png"
    args = ["calibrate", "--levels", "3", "--paths", "8", "--seed", "3"]
    for existing, option in ((out, "--out"), (plot, "--plot")):
        existing.write_text("mine")
        r = _cli([*args, "--out", out, "--plot", plot])
        assert r.exit_code == 2 and option in r.output and "--overwrite" in r.output, r.output
        assert existing.read_text() == "mine"
        existing.unlink()
    out.write_text("mine")
    r = _cli([*args, "--out", out, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert Calibration.load(str(out)).n_levels == 3


def test_demo_htmc_out_replaces_only_with_overwrite(monkeypatch, tmp_path):
    """Item 2: `mlem demo --problem htmc --out FILE` asks for --overwrite like the image demo."""
    import multilevel_em.demo.htmc as htmc

    monkeypatch.setattr(htmc, "run_demo", lambda **kw: {"rows": [1]})
    out = tmp_path / "d.json"
    out.write_text("mine")
    r = _cli(["demo", "--problem", "htmc", "--quick", "--out", out])
    assert r.exit_code == 2 and "--overwrite" in r.output and out.read_text() == "mine", r.output
    r = _cli(["demo", "--problem", "htmc", "--quick", "--out", out, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["rows"] == [1]


def test_train_mlp_replaces_a_ladder_only_with_overwrite(monkeypatch, tmp_path):
    """Item 2: `mlem train-mlp --out DIR` over an existing MLP ladder stops before training without --overwrite."""
    import multilevel_em.diffusion.mlp as mlp

    folder = tmp_path / "mlp"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(mlp, "train_mlp_ladder", _stop)
    r = _cli(["train-mlp", "--problem", "gaussian", "--dim", "2", "--steps", "1", "--out", folder])
    assert r.exit_code == 2 and "--overwrite" in r.output and "--out" in r.output, r.output
    assert (folder / "config.json").read_text() == "{}"
    r = _cli(["train-mlp", "--problem", "gaussian", "--dim", "2", "--steps", "1", "--out", folder, "--overwrite"])
    assert isinstance(r.exception, WorkStarted)


#: Where each benchmark's work starts: stubbed, so that a run that gets past its output checks stops at once.
WORK = {
    "htmc": ("multilevel_em.bench.htmc", "run_bench"),
    "diffusion": ("multilevel_em.bench.diffusion", "run_bench"),
    "images": ("multilevel_em.bench.images", "run_images_bench"),
    "samplers": ("multilevel_em.bench.samplers", "run_sampler_bench"),
    "rates": ("multilevel_em.bench.rates", "run_rates_bench"),
    "overhead": ("multilevel_em.bench.overhead", "run"),
    "wallclock": ("multilevel_em.bench.wallclock", "run"),
    "jobs": ("multilevel_em.bench.jobs_throughput", "run_job"),
    "gpu": ("multilevel_em.bench.gpu_images", "run"),
    "distill": ("multilevel_em.bench.distill", "run"),
    "cfg-pairing": ("multilevel_em.bench.cfg_pairing", "unet"),
    "real-ladders": ("multilevel_em.bench.real_ladders", "count_flops"),
    "pipeline-plan": ("multilevel_em.bench.pipeline_plan", "run_scheduler"),
    "fashion-reference": ("multilevel_em.bench.fashion_reference", "fashion_reference"),
}


def test_every_benchmark_is_covered():
    assert set(WORK) == set(BENCHMARKS)


def _started(r) -> bool:
    """The run got past its output checks: the stub raised, or (jobs, without Ray installed) it asked for Ray."""
    return isinstance(r.exception, WorkStarted) or "needs Ray" in r.output


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_outputs_quick_runs_apart_and_overwrite_only_when_asked(name, monkeypatch, tmp_path):
    """Item 2: for every `mlem bench NAME` (click and argv ones): a --quick run never writes the full run's
    results (its defaults are results/NAME_quick.*), and an existing output, quick or full, is replaced only with
    --overwrite, refused before any work with the files left as they were."""
    import importlib

    module, attr = WORK[name]
    monkeypatch.setattr(importlib.import_module(module), attr, _stop)
    monkeypatch.chdir(tmp_path)
    os.makedirs("results")
    full, quick = BENCHMARKS[name].outputs(), BENCHMARKS[name].outputs(quick=True)
    assert quick and all(q.endswith(("_quick.json", "_quick.png")) for q in quick) and not set(quick) & set(full)
    for path in full:
        with open(path, "w") as f:
            f.write("full run")
    # The full run's results exist: a quick run does not touch them, so it is not refused because of them.
    r = _cli(["bench", name, "--quick"])
    assert _started(r), r.output
    # A full run is refused (naming the file), and with --overwrite gets to work.
    r = _cli(["bench", name])
    assert r.exit_code == 2 and full[0] in r.output and "--overwrite" in r.output, r.output
    r = _cli(["bench", name, "--overwrite"])
    assert _started(r), r.output
    # A quick run's own results are protected the same way.
    for path in quick:
        with open(path, "w") as f:
            f.write("quick run")
    r = _cli(["bench", name, "--quick"])
    assert r.exit_code == 2 and quick[0] in r.output and "--overwrite" in r.output, r.output
    for path in full:
        assert open(path).read() == "full run"
    for path in quick:
        assert open(path).read() == "quick run"


def test_click_benchmark_quick_run_is_given_the_quick_paths(monkeypatch, tmp_path):
    """Item 2: what `mlem bench htmc --quick` hands the benchmark: results/htmc_quick.json and .png."""
    import multilevel_em.bench.htmc as htmc

    seen = {}
    monkeypatch.setattr(htmc, "run_bench", lambda **kw: seen.update(kw))
    monkeypatch.chdir(tmp_path)
    r = _cli(["bench", "htmc", "--quick"])
    assert r.exit_code == 0, r.output
    assert (seen["out"], seen["plot_path"]) == ("results/htmc_quick.json", "results/htmc_quick.png")


def test_diffusion_save_ladders_replaces_only_with_overwrite(monkeypatch, tmp_path):
    """Item 2: `mlem bench diffusion --save-ladders DIR` over saved ladders stops before training."""
    import multilevel_em.bench.diffusion as diffusion

    monkeypatch.setattr(diffusion, "run_bench", _stop)
    (tmp_path / "lad" / "gaussian").mkdir(parents=True)
    (tmp_path / "lad" / "gaussian" / "config.json").write_text("{}")
    args = ["bench", "diffusion", "--quick", "--out", tmp_path / "d.json", "--plot", tmp_path / "d.png"]
    r = _cli([*args, "--save-ladders", tmp_path / "lad"])
    assert r.exit_code == 2 and "--save-ladders" in r.output and "--overwrite" in r.output, r.output
    r = _cli([*args, "--save-ladders", tmp_path / "lad", "--overwrite"])
    assert isinstance(r.exception, WorkStarted)


# ----------------------------------------------------------------------------- item 13: --scale


def test_sample_grid_too_large_is_refused_before_sampling(tiny_ladder, monkeypatch, tmp_path):
    """Item 13: `mlem sample --scale 20000` ended in MemoryError after all the sampling; now the grid's size is
    checked first, naming --scale."""
    monkeypatch.setattr(MultilevelPipeline, "__call__", _stop)
    out = tmp_path / "g.png"
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny_ladder,
            "--method",
            "em",
            "--steps",
            "2",
            "--n",
            "4",
            "--scale",
            20000,
            "--out",
            out,
        ]
    )
    assert r.exit_code == 2 and "--scale" in r.output and "pixels" in r.output, r.output
    assert not isinstance(r.exception, WorkStarted) and not out.exists()
    r = _cli(
        ["sample", "--ladder", tiny_ladder, "--method", "em", "--steps", "2", "--n", "4", "--scale", 4, "--out", out]
    )
    assert isinstance(r.exception, WorkStarted)  # a sensible scale gets to the sampling


# ----------------------------------------------------------------------------- train / distill: the calibration


def _train(folder, *extra):
    return _cli(
        [
            "train",
            "--dataset",
            "digits",
            "--out",
            folder,
            "--widths",
            "4,8",
            "--batch",
            "4",
            "--save-every",
            "2",
            *extra,
        ]
    )


def test_train_keeps_an_unchanged_ladders_calibration(measured, monkeypatch):
    """Same cause as item 1: rerunning a finished `mlem train` (nothing left to train) kept re-measuring and
    rewriting calibration.json, dropping its samplers; now the calibration of unchanged weights is kept. When
    training does change the weights, the removal of the calibration that described them is said."""
    path = os.path.join(measured, "calibration.json")
    before = _digest(path)
    monkeypatch.setattr(MultilevelPipeline, "calibrate", _stop)
    r = _train(measured, "--iters", "4")
    assert r.exit_code == 0, r.output
    assert "kept" in r.output and _digest(path) == before
    r = _train(measured, "--iters", "5", "--no-calibrate")
    assert r.exit_code == 0, r.output
    assert not os.path.exists(path)
    assert "removed" in r.output and "samplers ddim" in r.output and "--samplers ddim" in r.output


def test_a_corrupt_training_state_says_how_to_restart_that_level(tiny_ladder, tmp_path):
    """Also noticed: a corrupt training_state file stopped `mlem train` with no hint; now it says that deleting
    that level's training state trains the level again from scratch."""
    folder = str(tmp_path / "ladder")
    shutil.copytree(tiny_ladder, folder)
    state = os.path.join(folder, "level_2", "training_state.safetensors")
    with open(state, "r+b") as f:
        f.truncate(100)
    r = _train(folder, "--iters", "4", "--no-calibrate")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    text = " ".join(r.output.split())
    assert "from scratch" in text and f"delete {state}" in text and "training_state.json" in text


def test_distill_reports_a_corrupt_training_state_with_the_hint(tiny_ladder, tmp_path):
    """The same hint from `mlem distill` (it trains its students through the same checkpoints)."""
    folder = str(tmp_path / "students")
    args = ["distill", "--teacher", tiny_ladder, "--widths", "4", "--iters", "2", "--data", "digits", "--batch", "4"]
    r = _cli([*args, "--out", folder, "--save-every", "1", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    state = os.path.join(folder, "level_1", "training_state.safetensors")
    with open(state, "r+b") as f:
        f.truncate(100)
    r = _cli([*args, "--out", folder, "--save-every", "1", "--no-calibrate"])
    assert r.exit_code == 1 and "from scratch" in " ".join(r.output.split()), r.output
