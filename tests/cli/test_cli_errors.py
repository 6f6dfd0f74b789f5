"""The command line refuses bad input with a clear error that names its cause (an option, a folder, a level) and
writes nothing (issue 12; through the entry point)."""

import glob
import json
import os
import re
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from click.testing import CliRunner
from safetensors.torch import load_file

from multilevel_em.cli.main import main
from multilevel_em.images import CheckpointError, MultilevelPipeline, load_ladder
from multilevel_em.images.ladder import INDEX


@pytest.fixture(scope="module")
def tiny(tiny_ladder):
    """The shared calibrated 2-level ladder (widths 4, 8) trained for 4 iterations (conftest): its folder."""
    return tiny_ladder


@pytest.fixture(scope="module")
def nan_top(nan_ladder):
    """A copy of ``tiny`` whose top UNet (level 2, width 8) has NaN weights (conftest)."""
    return nan_ladder


def _cli(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    # A user mistake ends with a message (SystemExit from click), never a Python traceback.
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


@pytest.mark.parametrize("method", ["em", "ddim", "dpmpp_2m", "stitch", "mlem"])
def test_a_nan_top_level_fails_named_and_writes_no_grid(nan_top, tmp_path, method):
    extra = ["--budget", "3"] if method == "mlem" else ["--steps", "3"]
    r = _cli(["sample", "--ladder", nan_top, "--method", method, "--n", "2", "--out", tmp_path / "g.png"] + extra)
    assert r.exit_code != 0
    assert "level 2 (width 8) produced NaN or Inf" in r.output, r.output  # the ladder's own numbering
    assert "check_finite" not in r.output  # not a CLI option
    assert os.listdir(tmp_path) == []


def test_a_nan_top_level_writes_no_shard(nan_top, tmp_path):
    out = tmp_path / "job"
    r = _cli(
        ["sample", "--ladder", nan_top, "--method", "em", "--steps", "3", "--n", "4", "--batch-size", "2", "--out", out]
    )
    assert r.exit_code != 0 and "level 2 (width 8)" in r.output, r.output
    assert not glob.glob(str(out / "shard-*.npz"))


def test_diverging_training_stops_and_writes_no_nan(tmp_path):
    out = tmp_path / "t"
    r = _cli(
        [
            "train",
            "--dataset",
            "digits",
            "--out",
            out,
            "--widths",
            "4",
            "--lr",
            "1e6",
            "--iters",
            "60",
            "--save-every",
            "1",
            "--no-calibrate",
        ]
    )
    assert r.exit_code != 0 and "training diverged" in r.output and "level 1 (width 4)" in r.output, r.output
    for path in glob.glob(str(out / "**" / "*.json"), recursive=True):
        json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))
    state = out / "level_1" / "training_state.safetensors"
    if state.exists():  # the checkpoints that were kept are finite
        assert all(torch.isfinite(v).all() for v in load_file(str(state)).values())


def test_misordered_ladder_is_refused_naming_the_folders(tiny, tmp_path):
    out = tmp_path / "swapped"
    shutil.copytree(tiny, out)
    os.rename(out / "level_1", out / "tmp")
    os.rename(out / "level_2", out / "level_1")
    os.rename(out / "tmp", out / "level_2")
    with pytest.raises(CheckpointError, match="widths"):  # the index no longer matches the configs
        load_ladder(str(out))
    index = json.loads((out / INDEX).read_text())
    index["widths"], index["costs"] = index["widths"][::-1], index["costs"][::-1]
    (out / INDEX).write_text(json.dumps(index))
    r = _cli(["sample", "--ladder", out, "--method", "em", "--steps", "2", "--n", "2", "--out", tmp_path / "g.png"])
    assert r.exit_code != 0 and "do not rise" in r.output and "level_2" in r.output and "level_1" in r.output, r.output
    assert not (tmp_path / "g.png").exists()


def test_mlem_budget_and_steps_that_disagree_are_refused_like_em(tiny, tmp_path):
    for method in ("mlem", "em"):
        r = _cli(
            [
                "sample",
                "--ladder",
                tiny,
                "--method",
                method,
                "--steps",
                "4",
                "--budget",
                "50",
                "--n",
                "2",
                "--out",
                tmp_path / "g.png",
            ]
        )
        assert r.exit_code != 0 and "disagree" in r.output, r.output
    assert os.listdir(tmp_path) == []
    pipe = MultilevelPipeline.from_pretrained(tiny)  # a budget the steps can pay is still planned at those steps
    plan = pipe.plan(3.0, steps=4)
    assert plan.steps == 4 and abs(plan.top_equivalents - 3.0) < 0.06


# ----------------------------------------------------------------------------- items 6-15


@pytest.mark.parametrize(
    "args, hint",
    [
        (["calibrate", "--paths", "8", "--out", "/proc/x/cal.json"], "--out"),
        (["calibrate", "--paths", "8", "--plot", "cal.xyz"], "--plot"),
        (["train", "--dataset", "digits", "--out", "/proc/ladder", "--iters", "1"], "--out"),
        (["train-mlp", "--problem", "gaussian", "--out", "/proc/mlp", "--steps", "1"], "--out"),
        (["bench", "htmc", "--quick", "--out", "/proc/h.json"], "--out"),
        (["demo", "--out-dir", "/proc/demo"], "--out-dir"),
    ],
)
def test_unwritable_outputs_fail_before_the_work(args, hint):
    r = _cli(args)
    assert r.exit_code != 0 and hint in r.output and "Traceback" not in r.output, r.output


def test_sample_output_paths_are_checked_before_sampling(tiny, tmp_path):
    base = ["sample", "--ladder", tiny, "--method", "em", "--steps", "2", "--n", "2", "--out"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.png").mkdir()
    for out, why in (
        (tmp_path / "file" / "g.png", "is a file"),
        ("/proc/g.png", "not writable"),
        (tmp_path / "dir.png", "is a folder"),
        (tmp_path / "grid.jpg", "PNG only"),
        (tmp_path / "file", "not a folder"),
    ):
        r = _cli(base + [out, "--overwrite"] if str(out).endswith(".png") else base + [out])
        assert r.exit_code != 0 and "--out" in r.output and why in r.output, (out, r.output)
    assert sorted(os.listdir(tmp_path)) == ["dir.png", "file"]  # nothing else was written


def test_negative_seeds_are_refused(tiny, tmp_path):
    for seed in ("-1", "18446744073709551615"):
        r = _cli(
            [
                "sample",
                "--ladder",
                tiny,
                "--method",
                "em",
                "--steps",
                "2",
                "--n",
                "2",
                "--seed",
                seed,
                "--out",
                tmp_path / "g.png",
            ]
        )
        assert r.exit_code != 0 and "--seed" in r.output, r.output


def test_version_flag_and_help_without_torch():
    import subprocess
    import sys

    r = _cli(["--version"])
    assert r.exit_code == 0 and r.output.strip() == __import__("multilevel_em").__version__
    code = "import sys, multilevel_em.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # `mlem --help` and `mlem version` do not pay for importing torch


def test_messages_agree_in_number(tiny, tmp_path):
    r = _cli(["sample", "--ladder", tiny, "--method", "em", "--steps", "1", "--n", "1", "--out", tmp_path / "job"])
    assert r.exit_code == 0 and "1 sample in 1 shard, 1 step," in r.output, r.output
    base = ["sample", "--ladder", tiny, "--method", "em", "--steps", "1", "--n", "1", "--out", tmp_path / "s1.png"]
    assert _cli(base).exit_code == 0
    r = _cli(base)
    assert r.exit_code != 0 and "s1.json exist;" in r.output, r.output


@pytest.mark.parametrize(
    "args, hint",
    [
        (["train", "--dataset", "digits", "--out", "OUT", "--size", "5"], "--size"),
        (["calibrate", "--gamma", "nan"], "--gamma"),
        (["calibrate", "--gamma", "inf"], "--gamma"),
        (["calibrate", "--gamma", "2000"], "--gamma"),
        (["train-mlp", "--problem", "gaussian", "--out", "OUT", "--lr", "nan"], "--lr"),
        (["sample", "--ladder", "LADDER", "--out", "OUT/g.png", "--device", "meta"], "--device"),
        (["sample", "--ladder", "LADDER", "--out", "OUT/g.png", "--device", "cpu:5"], "--device"),
        (["sample", "--ladder", "LADDER", "--out", "OUT/g.png", "--threads", "100000"], "--threads"),
        (["sample", "--ladder", "LADDER", "--out", "OUT/g.png", "--budget", "nan"], "--budget"),
    ],
)
def test_bad_numbers_and_devices_are_refused_at_the_cli(tiny, tmp_path, args, hint):
    args = [a.replace("OUT", str(tmp_path / "o")).replace("LADDER", tiny) for a in args]
    r = _cli(args)
    assert r.exit_code != 0 and hint in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_train_mlp_refuses_what_mlem_train_refuses(tmp_path):
    r = _cli(
        [
            "train-mlp",
            "--problem",
            "gaussian",
            "--dim",
            "2",
            "--steps",
            "1",
            "--widths",
            "32,8",
            "--out",
            tmp_path / "m",
        ]
    )
    assert r.exit_code != 0 and "--widths" in r.output and "nondecreasing" in r.output, r.output
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    r = _cli(
        [
            "train-mlp",
            "--problem",
            "gaussian",
            "--dim",
            "2",
            "--steps",
            "1",
            "--widths",
            "8",
            "--out",
            tmp_path / "foreign",
        ]
    )
    assert r.exit_code != 0 and "--out" in r.output and "not empty" in r.output, r.output
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"] and not (tmp_path / "m").exists()
    from multilevel_em.diffusion.mlp import train_mlp_ladder
    from multilevel_em.problems.gaussian import gaussian

    with pytest.raises(ValueError, match="nondecreasing"):
        train_mlp_ladder(gaussian(2), [32, 8], steps=1)


def test_sample_prints_the_plan_on_the_terminal(tiny, tmp_path):
    """Item 17: the plan's message (whether ML-EM is predicted to help) reaches the terminal; --help shows
    the default budget; item 20: --help names the report file as it is written."""
    r = _cli(["sample", "--ladder", tiny, "--method", "mlem", "--budget", "4", "--n", "2", "--out", tmp_path / "g.png"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "g.json").read_text())
    assert f"plan: {report['plan']['message']}" in r.output
    h = " ".join(_cli(["sample", "--help"]).output.split())  # help text is wrapped
    assert "default for mlem without --rates: 100" in h and "grid.png -> grid.json" in h


def test_train_classifier_needs_an_explicit_out():
    """Item 22: without --out the command refuses instead of overwriting the installed classifier."""
    r = _cli(["train-classifier"])
    assert r.exit_code != 0 and "--out" in r.output


@pytest.mark.slow
def test_calibrate_a_trained_image_ladder_from_the_cli(tiny, tmp_path):
    """Item 18: mlem calibrate --ladder DIR measures an image ladder and writes its calibration."""
    out = tmp_path / "cal.json"
    r = _cli(["calibrate", "--ladder", tiny, "--images", "8", "--budget", "4", "--out", out])
    assert r.exit_code == 0, r.output
    from multilevel_em import Calibration

    cal = Calibration.load(str(out))
    assert cal.n_levels == 2 and "top-level equivalents" in r.output
    r = _cli(["calibrate", "--ladder", tmp_path / "nope", "--out", tmp_path / "c2.json"])
    assert r.exit_code != 0 and "--ladder" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c2.json").exists()


@pytest.mark.slow
def test_calibrate_an_image_ladder_with_traced_wall_costs_and_sample_traced(tiny, tmp_path):
    """Issue 13: `mlem calibrate --ladder DIR --timing wall --trace` times the traced UNets (seconds per sample),
    and `mlem sample --trace` runs them; --trace is refused without --ladder."""
    from multilevel_em import Calibration

    out = tmp_path / "cal.json"
    r = _cli(
        ["calibrate", "--ladder", tiny, "--images", "8", "--timing", "wall", "--trace", "--budget", "4", "--out", out]
    )
    assert r.exit_code == 0, r.output
    cal = Calibration.load(str(out))
    assert cal.timing == "wall" and all(0 < c < 1 for c in cal.costs)  # seconds per sample, not FLOPs
    flops = Calibration.load(os.path.join(tiny, "calibration.json"))
    assert flops.timing == "flops" and flops.costs[0] > 1e3
    r = _cli(["calibrate", "--trace"])
    assert r.exit_code != 0 and "--trace" in r.output
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny,
            "--method",
            "em",
            "--steps",
            "2",
            "--n",
            "2",
            "--trace",
            "--out",
            tmp_path / "g.png",
        ]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").exists()


def test_a_second_process_on_a_job_folder_refuses_and_a_killed_one_does_not_block(tiny, tmp_path):
    """Item 11: the driver locks the job folder for its whole run; a second process refuses in one line
    naming the folder and the holder's pid, writing nothing; once the holder is killed (SIGKILL, no
    cleanup: its job.lock stays), the same command runs."""
    import subprocess
    import sys

    out = tmp_path / "job"
    hold = (
        "import sys, time; from multilevel_em.jobs.runner import _lock_folder; "
        "_lock_folder(sys.argv[1], print); print('locked', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["sample", "--ladder", tiny, "--method", "em", "--steps", "2", "--n", "2", "--out", out]
        r = _cli(args)
        assert r.exit_code == 1, r.output
        assert r.output.count("\n") == 1 and str(out) in r.output and f"pid {holder.pid}" in r.output, r.output
        assert os.listdir(out) == ["job.lock"]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(out / "job.lock")  # left behind by the killed holder: it must not block
    r = _cli(args)
    assert r.exit_code == 0, r.output
    assert not os.path.exists(out / "job.lock") and os.path.exists(out / "report.json")


def test_a_job_report_holds_the_plan(tiny, tmp_path):
    """Item 17: a job's report.json holds the plan its workers followed (levels, mu, steps, predicted top-level
    equivalents, whether ML-EM is predicted to help, the message), and the message reaches the terminal."""
    r = _cli(["sample", "--ladder", tiny, "--method", "mlem", "--budget", "4", "--n", "2", "--out", tmp_path / "job"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "job" / "report.json").read_text())
    plan = MultilevelPipeline.from_pretrained(tiny).plan(4)
    got = report["plan"]
    assert got["levels"] == [lv + 1 for lv in plan.levels] and got["steps"] == plan.steps == report["steps"]
    assert got["mu"] == pytest.approx(plan.mu) and got["helps"] is plan.helps
    assert got["predicted_top_equivalents"] == pytest.approx(plan.top_equivalents)
    assert f"plan: {plan.message}" in r.output
    r = _cli(["sample", "--ladder", tiny, "--method", "em", "--steps", "2", "--n", "2", "--out", tmp_path / "em"])
    assert r.exit_code == 0 and "plan" not in json.loads((tmp_path / "em" / "report.json").read_text())


#: Python in a message: an argument written name=, a call (), a Python literal, a quoted method name.
_PYTHON_ISMS = re.compile(r"\b[a-z_]+=|\(\)|\bTrue\b|\bFalse\b|\bNone\b|'(em|mlem|stitch)'")


@pytest.mark.parametrize(
    "args, named",
    [
        (
            ["--method", "em", "--budget", "4", "--steps", "8"],
            ["--budget 4.0 and --steps 8", "pass --budget or --steps"],
        ),
        (["--method", "mlem", "--rates", "1", "--budget", "3"], ["--rates and --budget"]),
        (["--method", "em", "--rates", "1"], ["--rates", "--method em"]),
        (["--method", "stitch", "--budget", "4"], ["--budget", "pass --steps"]),
        (["--method", "mlem", "--rates", "1"], ["--steps", "--method mlem"]),
    ],
)
@pytest.mark.parametrize("out", ["g.png", "job"])
def test_cli_errors_name_cli_options(tiny, tmp_path, args, named, out):
    """Item 19: the library's errors reach the terminal in the CLI's words (options, not Python arguments),
    for a grid and for a job folder alike, and nothing is written."""
    r = _cli(["sample", "--ladder", tiny, "--n", "2", "--out", tmp_path / out] + args)
    assert r.exit_code != 0
    for text in named:
        assert text in r.output, r.output
    assert not _PYTHON_ISMS.search(r.output), r.output
    assert os.listdir(tmp_path) == []


def test_cli_errors_give_cli_advice(tiny, tmp_path):
    """Item 19: advice that only a Python caller can follow (pipe.calibrate(), overwrite=True) becomes the
    command line's (mlem calibrate --ladder, --overwrite)."""
    bare = tmp_path / "bare"
    shutil.copytree(tiny, bare)
    os.unlink(bare / "calibration.json")
    r = _cli(["sample", "--ladder", bare, "--n", "2", "--out", tmp_path / "g.png"])
    assert r.exit_code != 0 and "mlem calibrate --ladder" in r.output and "--rates" in r.output, r.output
    assert not _PYTHON_ISMS.search(r.output), r.output
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo.json").write_text("{}")
    r = _cli(["demo", "--quick", "--out-dir", demo])
    assert r.exit_code != 0 and "pass --overwrite" in r.output and "--out-dir" in r.output, r.output
    assert not _PYTHON_ISMS.search(r.output) and "out_dir" not in r.output, r.output


def test_sample_refuses_absurd_step_counts_and_shows_steps_of_one_batch(tiny, tmp_path):
    """Item 15: --budget 1e7 with a one-model method (10 million steps) is refused at once, naming --budget
    and --max-steps, with nothing written; a grid of one batch shows a bar over its steps."""
    r = _cli(["sample", "--ladder", tiny, "--method", "em", "--budget", "1e7", "--n", "2", "--out", tmp_path / "g.png"])
    assert r.exit_code != 0 and "--budget" in r.output and "--max-steps 65536" in r.output, r.output
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny,
            "--method",
            "ddim",
            "--steps",
            "5",
            "--max-steps",
            "4",
            "--n",
            "2",
            "--out",
            tmp_path / "job",
        ]
    )
    assert r.exit_code != 0 and "--steps" in r.output and "--max-steps 4" in r.output, r.output
    assert os.listdir(tmp_path) == []
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny,
            "--method",
            "em",
            "--steps",
            "7",
            "--max-steps",
            "7",
            "--n",
            "2",
            "--out",
            tmp_path / "g.png",
        ]
    )
    assert r.exit_code == 0 and "7/7" in r.output and "step" in r.output, r.output
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny,
            "--method",
            "em",
            "--steps",
            "7",
            "--n",
            "3",
            "--batch-size",
            "2",
            "--out",
            tmp_path / "g.png",
            "--overwrite",
        ]
    )
    assert r.exit_code == 0 and "3/3" in r.output and "img" in r.output, r.output


def test_ctrl_c_of_a_job_says_that_rerunning_resumes(tiny, tmp_path, monkeypatch):
    """Item 20: Ctrl-C during a job prints how many shards are kept and that the same command resumes
    (not only "Aborted!"), exit status 130; the rerun resumes from there. Training says the same."""
    from multilevel_em.jobs.runner import ShardWorker

    run = ShardWorker.run

    def interrupted_at_shard_1(self, k):
        if k == 1:
            raise KeyboardInterrupt
        return run(self, k)

    monkeypatch.setattr(ShardWorker, "run", interrupted_at_shard_1)
    args = [
        "sample",
        "--ladder",
        tiny,
        "--method",
        "em",
        "--steps",
        "2",
        "--n",
        "3",
        "--batch-size",
        "2",
        "--out",
        tmp_path / "job",
    ]
    r = _cli(args)
    assert r.exit_code == 130, r.output
    assert f"1 of 2 shards complete in {tmp_path / 'job'}; run the same command again to resume" in r.output
    monkeypatch.setattr(ShardWorker, "run", run)
    r = _cli(args)
    assert r.exit_code == 0 and "1 of 2 shards (2 samples) already complete" in r.output, r.output

    import multilevel_em.images

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(multilevel_em.images, "train_ladder", interrupted)
    r = _cli(["train", "--dataset", "digits", "--out", tmp_path / "t", "--widths", "4", "--iters", "2"])
    assert r.exit_code == 130 and "run the same command again to resume" in r.output, r.output


def test_library_warnings_reach_the_terminal_in_cli_words(tiny, tmp_path):
    """Item 19: a library warning (here: a sampler the calibration has not measured) is one 'warning:' line
    naming CLI options and commands, not Python's 'file.py:N: UserWarning' with pipe.calibrate_samplers()."""
    r = _cli(
        [
            "sample",
            "--ladder",
            tiny,
            "--method",
            "mlem",
            "--sampler",
            "ddim",
            "--budget",
            "3",
            "--n",
            "2",
            "--out",
            tmp_path / "g.png",
        ]
    )
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "warning:" in ln)
    assert "warning: --sampler ddim:" in line and "`mlem calibrate --ladder DIR --samplers" in line, line
    assert "UserWarning" not in r.output and not _PYTHON_ISMS.search(line), r.output
