"""Per-sample randomness and sampling jobs: shards, resume, Ray workers, failures."""

import errno
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from click.testing import CliRunner
from conftest import three_level_ladder, train_tiny_ladder

from multilevel_em.cli.main import main
from multilevel_em.diffusion import MultilevelDenoiser, VPSchedule, sample
from multilevel_em.engine import (
    LevelEvaluator,
    rand,
    randn,
    sample_generators,
    telescoping_estimate,
)
from multilevel_em.images import MultilevelPipeline
from multilevel_em.jobs import (
    JobError,
    SamplingJob,
    completed_shards,
    load_samples,
    run_job,
)
from multilevel_em.jobs import runner as job_runner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-level ladder trained for 3 iterations, calibrated (a folder)."""
    return train_tiny_ladder(str(tmp_path_factory.mktemp("tiny") / "ladder"), widths=(4, 8, 12), iters=3, save_every=3)


def _job(ladder, out, **kw):
    args = dict(ladder=ladder, n=10, out=str(out), method="mlem", batch_size=3, seed=7, steps=12, rates=(6.0, 3.0))
    args.update(kw)
    return SamplingJob(**args)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The job run in this process, uninterrupted: its samples."""
    out = tmp_path_factory.mktemp("ref") / "job"
    run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    return load_samples(str(out))


def _same_samples(out, ref):
    got = load_samples(str(out))
    assert got["indices"].tolist() == list(range(len(ref["indices"])))  # every sample once, in order
    assert np.array_equal(got["x"], ref["x"]) and np.array_equal(got["images"], ref["images"])  # bit-identical


# ----------------------------------------------------------------------------- per-sample generators


def test_per_sample_draws_use_only_their_own_generator():
    gens = sample_generators(3, [5, 9])
    z = randn((2, 4), gens, dtype=torch.float64)
    for row, i in zip(z, (5, 9)):
        assert torch.equal(row, torch.randn(4, generator=sample_generators(3, [i])[0], dtype=torch.float64))
    assert not torch.equal(z[0], z[1])
    u = rand((2, 3), sample_generators(3, [5, 9]))
    assert u.shape == (2, 3) and bool(((u >= 0) & (u < 1)).all())
    assert not torch.equal(randn((1, 4), sample_generators(4, [5])), randn((1, 4), sample_generators(3, [5])))


def test_per_sample_generator_errors():
    with pytest.raises(ValueError, match="one generator per sample"):
        randn((3, 2), sample_generators(0, range(2)))
    with pytest.raises(TypeError, match="list of torch.Generator"):
        randn((1, 2), [object()])
    with pytest.raises(ValueError, match="indices"):
        sample_generators(0, [-1])
    with pytest.raises(ValueError, match="per_sample"):
        MultilevelDenoiser(
            [lambda x, t: x, lambda x, t: x],
            costs=[1, 2],
            rates=[1.0],
            draws="shared",
            generator=sample_generators(0, range(2)),
        )


def test_telescoping_estimate_rows_do_not_depend_on_the_batch():
    """Closed-form levels act row by row, so the estimate of a row is bit-identical in any batch."""
    ladder = three_level_ladder()
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(6, 2)
    probs = [0.4, 0.3]
    whole = telescoping_estimate(LevelEvaluator(ladder, x), x, 0.2, probs, generator=sample_generators(1, range(6)))
    parts = [
        telescoping_estimate(
            LevelEvaluator(ladder, x[a:b]), x[a:b], 0.2, probs, generator=sample_generators(1, range(a, b))
        )
        for a, b in ((0, 1), (1, 4), (4, 6))
    ]
    assert torch.equal(whole, torch.cat(parts))


def test_per_sample_draws_fire_at_their_probability():
    """Bernoulli draws from per-sample generators: fired fraction within 5 standard errors of p."""
    n, p = 4000, 0.3
    x = torch.zeros(n, 1, dtype=torch.float64)
    evaluator = LevelEvaluator(three_level_ladder(), x)
    telescoping_estimate(evaluator, x, 0.0, [1.0, p], generator=sample_generators(2, range(n)))
    frac = evaluator.evaluations[2] / n  # the top level runs exactly where its correction fired
    assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("sampler", ["em", "ddpm", "ddim", "euler_ode", "dpmpp_2m"])
def test_samplers_with_per_sample_generators_split_batches_exactly(sampler):
    sch = VPSchedule.linear()
    x_T = randn((5, 3), sample_generators(0, range(5)), dtype=torch.float64)
    opts = {"eta": 1.0} if sampler == "ddim" else {}

    def run(a, b):
        den = MultilevelDenoiser(
            [lambda x, t: 0.2 * x, lambda x, t: 0.3 * x],
            costs=[1, 4],
            rates=[30.0],
            generator=sample_generators(9, range(a, b)),
        )
        return sample(
            den, x_T[a:b], schedule=sch, steps=8, sampler=sampler, generator=sample_generators(5, range(a, b)), **opts
        ).x

    assert torch.equal(run(0, 5), torch.cat([run(0, 2), run(2, 5)]))


def test_pipeline_per_sample_generators(tiny):
    """Same batch: bit-identical; other batch sizes: the same random numbers, so equal up to the
    networks' float32 rounding on a differently sized batch (tolerance 1e-5 of the samples' largest magnitude; measured ~1e-6)."""
    pipe = MultilevelPipeline.from_pretrained(tiny)
    kw = dict(method="mlem", steps=12, rates=[6.0, 3.0])
    a = pipe(5, generator=sample_generators(0, range(5)), **kw).x
    assert torch.equal(a, pipe(5, generator=sample_generators(0, range(5)), **kw).x)
    b = torch.cat(
        [
            pipe(2, generator=sample_generators(0, range(2)), **kw).x,
            pipe(3, generator=sample_generators(0, range(2, 5)), **kw).x,
        ]
    )
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    with pytest.raises(ValueError, match="one generator per sample"):
        pipe(3, generator=sample_generators(0, range(2)), **kw)
    # batch_invariant: the UNets see one image at a time, so any split is bit-identical.
    kw["batch_invariant"] = True
    c = pipe(5, generator=sample_generators(0, range(5)), **kw).x
    d = torch.cat(
        [
            pipe(2, generator=sample_generators(0, range(2)), **kw).x,
            pipe(3, generator=sample_generators(0, range(2, 5)), **kw).x,
        ]
    )
    assert torch.equal(c, d) and (c - a).abs().max() <= 1e-5 * a.abs().max()


def test_batch_invariant_jobs_agree_across_batch_sizes(tiny, tmp_path):
    runs = [
        run_job(
            _job(tiny, tmp_path / f"b{b}", n=7, batch_size=b, batch_invariant=True),
            progress=False,
            echo=lambda *_: None,
        )
        for b in (2, 7)
    ]
    assert [r["shards"] for r in runs] == [4, 1]
    a, b = load_samples(str(tmp_path / "b2")), load_samples(str(tmp_path / "b7"))
    assert np.array_equal(a["x"], b["x"]) and a["indices"].tolist() == list(range(7))


# ----------------------------------------------------------------------------- jobs


def test_job_writes_shards_manifest_and_report(tiny, tmp_path, reference):
    out = tmp_path / "job"
    report = run_job(_job(tiny, out, png=True), progress=False, echo=lambda *_: None)
    assert sorted(os.listdir(out)) == ["job.json", "png", "report.json"] + [f"shard-{k:06d}.npz" for k in range(4)]
    assert len(os.listdir(out / "png")) == 10
    _same_samples(out, reference)  # png=True changes the files written, not the samples
    manifest = json.loads((out / "job.json").read_text())
    assert manifest["n_shards"] == 4 and manifest["job"]["seed"] == 7 and len(manifest["fingerprint"]) == 64
    assert report["samples"] == 10 and report["computed_this_run"] == 10 and report["steps"] == 12
    assert [lv["level"] for lv in report["levels"]] == [1, 2, 3]
    assert report["levels"][0]["evaluations_per_sample"] == 12  # level 1 runs at every step
    costs = MultilevelPipeline.from_pretrained(tiny).ladder.costs
    spent = sum(lv["evaluations_per_sample"] * c for lv, c in zip(report["levels"], costs)) / costs[-1]
    assert report["top_equivalents_per_sample"] == pytest.approx(spent, rel=1e-12)
    assert report["levels"][2]["evaluations_per_sample"] < 12  # the top level fires at some steps only
    # A rerun of the finished job computes nothing.
    again = run_job(_job(tiny, out, png=True), progress=False, echo=lambda *_: None)
    assert again["computed_this_run"] == 0


@pytest.mark.slow
def test_two_ray_workers_match_one_process(tiny, tmp_path, reference):
    pytest.importorskip("ray")
    out = tmp_path / "job"
    report = run_job(_job(tiny, out), ray="local", workers=2, progress=False, echo=lambda *_: None)
    assert report["workers"] == 2 and report["computed_this_run"] == 10
    _same_samples(out, reference)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried(tiny, tmp_path, reference, monkeypatch):
    """Two shards' worker processes exit abruptly on their first attempt; Ray restarts them and
    the job's samples are unchanged."""
    pytest.importorskip("ray")
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv(job_runner.CRASH_DIR_ENV, str(marks))
    monkeypatch.setenv(job_runner.CRASH_SHARDS_ENV, "1,2")
    out = tmp_path / "job"
    run_job(_job(tiny, out), ray="local", workers=2, progress=False, echo=lambda *_: None)
    assert sorted(os.listdir(marks)) == ["crashed-1", "crashed-2"]  # the crashes did happen
    _same_samples(out, reference)


@pytest.mark.slow
def test_a_killed_job_resumes_to_exactly_the_requested_samples(tiny, tmp_path, reference):
    """The process dies abruptly (os._exit, as under SIGKILL) when it reaches shard 2; the rerun
    of the same command finishes shards 2 and 3 only, and the samples equal an uninterrupted run's."""
    out = tmp_path / "job"
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "multilevel_em.cli.main",
        "sample",
        "--ladder",
        tiny,
        "--n",
        "10",
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--seed",
        "7",
        "--steps",
        "12",
        "--rates",
        "6,3",
    ]
    env = dict(os.environ, **{job_runner.CRASH_DIR_ENV: str(marks), job_runner.CRASH_SHARDS_ENV: "2"})
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 137, first.stderr
    assert completed_shards(_job(tiny, out)) == [0, 1] and not os.path.exists(out / "report.json")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "2 of 4 shards (6 samples) already complete" in second.stdout
    assert json.loads((out / "report.json").read_text())["computed_this_run"] == 4
    assert not glob.glob(str(out / ".*"))  # no temporary files left
    _same_samples(out, reference)


def test_a_changed_job_refuses_to_resume(tiny, tmp_path):
    out = tmp_path / "job"
    run_job(_job(tiny, out, n=3), progress=False, echo=lambda *_: None)
    before = sorted(os.listdir(out))
    with pytest.raises(JobError, match=r"different job \(seed: 7 -> 8\)"):
        run_job(_job(tiny, out, n=3, seed=8), progress=False, echo=lambda *_: None)
    assert sorted(os.listdir(out)) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="holds no job.json"):
        run_job(_job(tiny, other, n=3), progress=False, echo=lambda *_: None)


def test_disk_full_leaves_no_half_written_shard(tiny, tmp_path, monkeypatch, reference):
    out = tmp_path / "job"
    real_savez = np.savez

    def full_disk(f, **arrays):
        if arrays["indices"][0] == 3:  # shard 1: write part of it, then the disk is full
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(job_runner.np, "savez", full_disk)
    with pytest.raises(JobError, match=r"shard-000001.npz failed: No space left on device.*1 of 4 shards complete"):
        run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    assert sorted(os.listdir(out)) == ["job.json", "shard-000000.npz"]  # no partial shard, no temporary file
    monkeypatch.setattr(job_runner.np, "savez", real_savez)
    run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    _same_samples(out, reference)


def test_unreachable_ray_address_writes_nothing(tiny, tmp_path):
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "job"
    with pytest.raises(JobError, match="cannot reach a Ray cluster"):
        run_job(_job(tiny, out), ray=f"127.0.0.1:{port}", progress=False, echo=lambda *_: None)
    assert not out.exists()
    r = CliRunner().invoke(
        main, ["sample", "--ladder", tiny, "--n", "4", "--out", str(out), "--ray", f"127.0.0.1:{port}"]
    )
    assert r.exit_code != 0 and "cannot reach a Ray cluster" in r.output and not out.exists()
    with pytest.raises(JobError, match="HOST:PORT"):
        run_job(_job(tiny, out), ray="no-port-here", progress=False, echo=lambda *_: None)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n": 0}, "n: expected"),
        ({"n": -5}, "n: expected"),
        ({"batch_size": 0}, "batch_size"),
        ({"method": "magic"}, "method"),
        ({"budget": -1.0}, "budget"),
        ({"rates": ("a",)}, "rates"),
        ({"out": "grid.png"}, "image file"),
        ({"batch_invariant": 1}, "batch_invariant"),
    ],
)
def test_bad_job_descriptions(tiny, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        kw = dict(kw)
        _job(tiny, kw.pop("out", tmp_path / "job"), **kw)


def test_cli_job_folder_and_bad_inputs(tiny, tmp_path, reference):
    out = tmp_path / "job"
    base = [
        "sample",
        "--ladder",
        tiny,
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--seed",
        "7",
        "--steps",
        "12",
        "--rates",
        "6,3",
    ]
    r = CliRunner().invoke(main, base + ["--n", "10"])
    assert r.exit_code == 0, r.output
    assert "10 samples in 4 shards" in r.output
    _same_samples(out, reference)
    for extra, hint in (
        (["--n", "0"], "--n"),
        (["--n", "-3"], "--n"),
        (["--n", "4", "--overwrite"], "--overwrite"),
        (["--n", "4", "--workers", "2"], "--workers"),
    ):
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code != 0 and hint in r.output, r.output
    grid = ["sample", "--ladder", tiny, "--n", "2", "--steps", "2", "--method", "em", "--out", str(tmp_path / "g.png")]
    r = CliRunner().invoke(main, grid + ["--ray", "local"])
    assert r.exit_code != 0 and "--ray" in r.output and not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("executor", [{}, pytest.param({"ray": "local", "workers": 1}, marks=pytest.mark.slow)])
def test_a_job_failing_before_its_first_shard_leaves_nothing(tiny, tmp_path, executor):
    """Rates without steps is refused by the pipeline inside the worker; the folder this run
    created is removed again, so the corrected command can start afresh."""
    if executor:
        pytest.importorskip("ray")
    out = tmp_path / "job"
    with pytest.raises((JobError, ValueError), match="steps: required"):
        run_job(_job(tiny, out, steps=None), progress=False, echo=lambda *_: None, **executor)
    assert not out.exists()


def test_an_unusable_device_is_named_and_leaves_nothing(tiny, tmp_path):
    out = tmp_path / "job"
    with pytest.raises((JobError, ValueError), match="device"):
        run_job(_job(tiny, out, device="no-such-device"), progress=False, echo=lambda *_: None)
    assert not out.exists()
    r = CliRunner().invoke(
        main,
        [
            "sample",
            "--ladder",
            tiny,
            "--n",
            "2",
            "--steps",
            "2",
            "--method",
            "em",
            "--device",
            "no-such-device",
            "--out",
            str(tmp_path / "g.png"),
        ],
    )
    assert r.exit_code != 0 and "--device" in r.output and not (tmp_path / "g.png").exists()


def test_a_corrupt_shard_is_computed_again(tiny, tmp_path, reference):
    """A shard file that is not a complete shard (here: truncated by hand) does not count as done."""
    out = tmp_path / "job"
    run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    path = out / "shard-000002.npz"
    path.write_bytes(path.read_bytes()[:100])
    assert completed_shards(_job(tiny, out)) == [0, 1, 3]
    with pytest.raises(JobError, match="shard-000002.npz: not a complete shard"):
        load_samples(str(out))
    report = run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    assert report["computed_this_run"] == 3
    _same_samples(out, reference)


def test_a_traced_job_is_fingerprinted_apart_and_equals_the_eager_samples(tiny, tmp_path, reference):
    """Issue 13: trace=True enters the job's description (an eager job's description is unchanged, so jobs
    made before the option keep their fingerprints); its samples equal the eager ones up to float rounding."""
    eager, traced = _job(tiny, tmp_path / "a"), _job(tiny, tmp_path / "b", trace=True)
    assert "trace" not in eager.description("d") and traced.description("d")["trace"] is True
    assert SamplingJob.fingerprint(eager.description("d")) != SamplingJob.fingerprint(traced.description("d"))
    run_job(traced, progress=False, echo=lambda *_: None)
    got = load_samples(str(tmp_path / "b"))
    assert got["indices"].tolist() == list(range(10))
    # Tolerance: float32 rounding of a traced graph (measured bit-identical on CPU; allowed 1e-5).
    np.testing.assert_allclose(got["x"], reference["x"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="trace"):
        _job(tiny, tmp_path / "c", trace="yes")


# ----------------------------------------------------------------------------- files that are not the job's


def test_load_samples_refuses_shards_of_another_job(tiny, tmp_path, reference):
    """A shard copied in from another job (other indices) or a stray extra shard is named, never mixed in."""
    out, other = tmp_path / "job", tmp_path / "other"
    run_job(_job(tiny, out), progress=False, echo=lambda *_: None)
    run_job(_job(tiny, other, n=20, batch_size=2), progress=False, echo=lambda *_: None)
    # shard 2 of the other job (samples 4, 5) put in place of shard 2 (samples 6, 7, 8)
    os.replace(other / "shard-000002.npz", out / "shard-000002.npz")
    with pytest.raises(JobError, match=r"shard-000002.npz: holds samples other than this job's shard 2"):
        load_samples(str(out))
    run_job(_job(tiny, out), progress=False, echo=lambda *_: None)  # resuming recomputes the foreign shard
    _same_samples(out, reference)
    # a stray shard beyond the job's 4
    os.replace(other / "shard-000009.npz", out / "shard-000004.npz")
    with pytest.raises(JobError, match=r"shard-000004.npz: not a shard of this job \(it has shards 0 to 3"):
        load_samples(str(out))


def test_a_hand_edited_job_file_is_refused_on_resume_and_load(tiny, tmp_path):
    out = tmp_path / "job"
    run_job(_job(tiny, out, n=3), progress=False, echo=lambda *_: None)
    path = out / "job.json"
    manifest = json.loads(path.read_text())
    manifest["job"]["n"] = 6
    manifest["n_shards"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(JobError, match="does not match its fingerprint: the file was edited by hand"):
        run_job(_job(tiny, out, n=6), progress=False, echo=lambda *_: None)
    with pytest.raises(JobError, match="edited by hand"):
        load_samples(str(out))
    assert sorted(os.listdir(out)) == ["job.json", "report.json", "shard-000000.npz"]  # nothing new written
    result = CliRunner().invoke(
        main,
        [
            "sample",
            "--ladder",
            tiny,
            "--n",
            "6",
            "--batch-size",
            "3",
            "--seed",
            "7",
            "--steps",
            "12",
            "--rates",
            "6,3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output and "edited by hand" in result.output
