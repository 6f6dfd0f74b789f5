"""The image subpackage: data, UNet ladder training/resume, checkpoints, the pipeline, the CLI, KID."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from click.testing import CliRunner

from multilevel_em.cli.main import main
from multilevel_em.images import (
    CheckpointError,
    MultilevelPipeline,
    load_digits,
    load_image_folder,
    load_ladder,
    train_ladder,
)
from multilevel_em.images.metrics import image_metrics, kid_unbiased, load_digit_classifier

PRETRAINED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small UNets: several threads only add overhead
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


@pytest.fixture(scope="module")
def tiny(tiny_ladder):
    """The shared 2-level ladder trained for 4 iterations (batch 4), calibrated (conftest): (folder, pipeline)."""
    return tiny_ladder, MultilevelPipeline.from_pretrained(tiny_ladder)


def _weights(ladder):
    return [{k: v.clone() for k, v in u.state_dict().items()} for u in ladder.unets]


def test_digits_data_shape_and_range(digits):
    assert digits.x.shape == (1797, 1, 16, 16)
    assert digits.x.min() >= -1 and digits.x.max() <= 1 and digits.x.dtype == torch.float32


def test_folder_dataset_skips_and_reports_bad_files(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "gray.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("hello")
    data = load_image_folder(str(tmp_path), size=16, channels=3)
    assert data.x.shape == (4, 3, 16, 16) and data.x.min() >= -1 and data.x.max() <= 1
    reasons = {os.path.basename(f): why for f, why in data.skipped}
    assert set(reasons) == {"broken.png", "notes.txt"}
    assert "unreadable" in reasons["broken.png"] and "not a PNG/JPEG" in reasons["notes.txt"]
    assert "2 file(s) skipped" in data.report() and "broken.png" in data.report()
    assert load_image_folder(str(tmp_path), size=8, channels=1).x.shape == (4, 1, 8, 8)


@pytest.mark.slow
def test_training_resumes_to_the_same_weights(tmp_path, digits):
    kw = dict(widths=[4, 8], iters=4, batch=4, save_every=2, loss_plot=False)
    straight = train_ladder(digits, str(tmp_path / "a"), **kw)

    class Interrupt(Exception):
        pass

    done = [0]

    def stop_after_five(n):
        done[0] += n
        if done[0] == 5:  # level 2, iteration 1: its last checkpoint is none, level 1 is complete
            raise Interrupt

    with pytest.raises(Interrupt):
        train_ladder(digits, str(tmp_path / "b"), progress=stop_after_five, **kw)
    state = json.loads((tmp_path / "b" / "level_1" / "training_state.json").read_text())
    assert state["iteration"] == 4
    # Interrupt level 1 mid-way too: resume from its checkpoint at iteration 2.
    with pytest.raises(Interrupt):
        done[0] = 2
        train_ladder(digits, str(tmp_path / "c"), progress=stop_after_five, **kw)
    assert json.loads((tmp_path / "c" / "level_1" / "training_state.json").read_text())["iteration"] == 2
    for folder in ("b", "c"):
        resumed = train_ladder(digits, str(tmp_path / folder), **kw)
        for wa, wb in zip(_weights(straight), _weights(resumed)):
            for k in wa:
                assert torch.equal(wa[k], wb[k]), (folder, k)
    # A different setting is refused instead of silently mixing runs.
    with pytest.raises(ValueError, match="other settings"):
        train_ladder(digits, str(tmp_path / "a"), **dict(kw, batch=8))


def test_corrupt_checkpoint_is_named_and_nothing_is_overwritten(tmp_path, tiny, digits):
    src, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    weights = bad / "level_2" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="level_2.*diffusion_pytorch_model.safetensors"):
        load_ladder(str(bad))
    state = bad / "level_1" / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in bad.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="level_1.*training_state.safetensors"):
        train_ladder(digits, str(bad), widths=[4, 8], iters=6, batch=4, save_every=2, loss_plot=False)
    after = {p: p.read_bytes() for p in bad.rglob("*") if p.is_file()}
    assert before == after


def test_levels_disagreeing_on_schedule_or_shape_are_refused(tmp_path, tiny):
    src, _ = tiny
    for what, edit in (
        ("schedule", lambda c: c["_mlem"]["schedule"].update(beta_max=10.0)),
        ("channels", lambda c: c.update(in_channels=3, out_channels=3)),
    ):
        bad = tmp_path / what
        shutil.copytree(src, bad)
        cfg = bad / "level_2" / "config.json"
        c = json.loads(cfg.read_text())
        edit(c)
        cfg.write_text(json.dumps(c))
        with pytest.raises(CheckpointError, match="level_2"):
            load_ladder(str(bad))


def test_pipeline_round_trip_and_methods(tmp_path, tiny):
    _, pipe = tiny
    pipe.save_pretrained(str(tmp_path / "copy"))
    again = MultilevelPipeline.from_pretrained(str(tmp_path / "copy"))
    assert again.calibration is not None
    for method, kw in (
        ("mlem", dict(budget=3)),
        ("em", dict(steps=3)),
        ("ddim", dict(steps=3)),
        ("dpmpp_2m", dict(steps=3)),
        ("stitch", dict(steps=5)),
    ):
        a = pipe(3, method=method, generator=torch.Generator().manual_seed(1), **kw)
        b = again(3, method=method, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(a.x, b.x), method
        assert a.images.shape == (3, 16, 16, 1) and len(a.pil) == 3 and a.pil[0].size == (16, 16)
        assert a.report["top_equivalents_per_sample"] > 0 and len(a.report["levels"]) >= 1
    em = pipe(2, method="em", steps=4)
    assert em.report["top_equivalents_per_sample"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="too small"):
        pipe(2, method="mlem", budget=1e-3)
    with pytest.raises(ValueError, match="method"):
        pipe(2, method="euler")


def test_one_model_methods_refuse_a_budget_that_disagrees_with_steps(tiny):
    _, pipe = tiny
    for method in ("em", "ddim", "dpmpp_2m", "stitch"):
        with pytest.raises(ValueError, match=r"budget=5\.0 and steps=3 disagree.*pass budget= or steps=, not both"):
            pipe(2, method=method, budget=5.0, steps=3)
    with pytest.raises(ValueError, match="budget: expected a positive number"):
        pipe(2, method="em", budget=-1.0, steps=3)
    # steps = floor(budget): the same run as either alone.
    g = lambda: torch.Generator().manual_seed(2)
    both = pipe(2, method="em", budget=3.5, steps=3, generator=g())
    assert torch.equal(both.x, pipe(2, method="em", steps=3, generator=g()).x)
    assert torch.equal(both.x, pipe(2, method="em", budget=3.5, generator=g()).x)
    assert both.report["steps"] == 3 and both.report["budget"] == 3.5
    # None means "not given" (as SamplingJob passes them); "mlem" takes both (the plan keeps the steps).
    assert pipe(2, method="ddim", budget=None, steps=4).report["steps"] == 4
    assert pipe(2, method="ddim", budget=4, steps=None).report["steps"] == 4
    assert pipe(2, method="mlem", budget=3, steps=5).report["steps"] == 5


def test_malformed_ladder_schedule_is_named(tmp_path, tiny):
    src, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    index = bad / "model_index.json"
    d = json.loads(index.read_text())
    d["schedule"]["beta_min"] = 30.0  # above beta_max
    index.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"model_index\.json: \"schedule\": malformed linear schedule"):
        load_ladder(str(bad))
    del d["schedule"]
    index.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"model_index\.json: no \"schedule\""):
        load_ladder(str(bad))


def test_shipped_ladder_samples_with_em_and_mlem():
    pipe = MultilevelPipeline.from_pretrained(PRETRAINED)
    assert len(pipe.ladder) >= 4 and pipe.calibration is not None
    costs = pipe.ladder.costs
    assert all(b >= 3 * a for a, b in zip(costs, costs[1:]))  # each level costs several times the one below
    em = pipe(4, method="em", steps=20, generator=torch.Generator().manual_seed(0))
    ml = pipe(4, method="mlem", budget=10, generator=torch.Generator().manual_seed(0))
    for out in (em, ml):
        assert out.images.shape == (4, 16, 16, 1) and np.isfinite(out.images).all()
    assert ml.report["top_equivalents_per_sample"] < 20
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(PRETRAINED) for f in fs)
    assert size < 20e6


def test_cli_sample_refuses_existing_output(tmp_path, tiny):
    src, _ = tiny
    out = tmp_path / "grid.png"
    args = ["sample", "--ladder", src, "--method", "em", "--steps", "2", "--n", "4", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "grid.json").read_text())
    assert report["method"] == "em" and report["steps"] == 2 and out.stat().st_size > 0
    before = out.read_bytes()
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "--overwrite" in r.output and out.read_bytes() == before
    r = CliRunner().invoke(main, args + ["--overwrite"])
    assert r.exit_code == 0, r.output


def test_kid_is_unbiased_near_zero_for_data_and_large_for_noise(digits):
    clf = load_digit_classifier()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(digits.x), generator=g)
    a, b = digits.x[perm[:400]], digits.x[perm[400:800]]
    same = image_metrics(a, b, clf)
    noise = image_metrics(torch.randn(400, 1, 16, 16, generator=g), b, clf)
    assert noise["kid"] > 50 * abs(same["kid"]) and noise["sliced_wasserstein"] > 5 * same["sliced_wasserstein"]
    f = torch.randn(50, 8, generator=g)
    assert kid_unbiased(f, f + 0.0) < kid_unbiased(f, f + 1.0)


def test_bench_summary_uses_paired_standard_errors():
    from multilevel_em.bench.chunks import chunk_summary

    def run(method, cost, chunks, **knob):
        return {
            "method": method,
            **knob,
            "steps_run": knob.get("steps", 10),
            "top_equivalents": cost,
            "wall_seconds_per_sample": cost / 1000,
            "kid": sum(chunks) / len(chunks),
            "kid_se": 1.0,
            "kid_chunks": chunks,
        }

    ref = run("em", 1000, [10.0, 30.0, 20.0, 40.0], steps=1000)
    close = run("mlem", 100, [11.0, 31.0, 21.0, 41.0], budget=100)  # +1 everywhere: se 0, diff 1 > 0: refused
    noisy = run("mlem", 200, [12.0, 28.0, 23.0, 41.0], budget=200)  # diff +1 with a paired se of ~1.2: accepted
    s = chunk_summary([ref, close, noisy])
    assert s["mlem"]["budget"] == 200 and s["mlem"]["cost_ratio"] == pytest.approx(5.0)
    assert s["em"] is None


def test_finished_level_restores_missing_weights_and_drops_stale_calibration(tmp_path, digits):
    """A crash after a level's training state but before its sampling weights: the rerun
    rewrites the weights instead of failing; training new weights removes an old calibration."""
    kw = dict(widths=[4], iters=2, batch=4, save_every=2, loss_plot=False)
    out = tmp_path / "l"
    first = train_ladder(digits, str(out), **kw)
    for f in (out / "level_1").iterdir():
        if f.name.startswith("diffusion_pytorch_model") or f.name == "config.json":
            f.unlink()
    again = train_ladder(digits, str(out), **kw)
    for wa, wb in zip(_weights(first), _weights(again)):
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    (out / "calibration.json").write_text("{}")
    train_ladder(digits, str(out), **dict(kw, iters=3))  # resumes and trains one more iteration
    assert not (out / "calibration.json").exists()


def test_chunked_kid_needs_two_samples_per_chunk(digits):
    from multilevel_em.bench.chunks import CHUNKS, chunk_kids

    clf = load_digit_classifier()
    ref = clf.features(digits.x[:200])
    assert len(chunk_kids(clf, digits.x[: 2 * CHUNKS + 3], ref)) == CHUNKS  # uneven sizes, none below 2
    with pytest.raises(ValueError, match="at least"):
        chunk_kids(clf, digits.x[: 2 * CHUNKS - 1], ref)
