"""Distillation of conditional teachers (UNet2DConditionModel): conditioning files, ladders sampled through MultilevelModel.

Tiny models built from configs (no downloads): the teacher is conftest's tiny
UNet2DConditionModel (width 8, 8x8 latents of 4 channels, 16-dim prompt tokens) with random weights.
"""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from click.testing import CliRunner  # noqa: E402
from conftest import tiny_unet2d_condition  # noqa: E402

from multilevel_em.cli.main import main  # noqa: E402
from multilevel_em.images import MultilevelPipeline, load_ladder  # noqa: E402
from multilevel_em.images.conditioning import Conditioning, load_conditioning, sample_ladder  # noqa: E402
from multilevel_em.images.distill import SAMPLES_FILE, Distillation, load_teacher  # noqa: E402
from multilevel_em.images.ladder import UNetLadder, load_tensors  # noqa: E402
from multilevel_em.images.train import _seed  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")
N_ROWS, SEQ, DIM = 5, 3, 16


def _teacher_folder(path):
    tiny_unet2d_condition(8, 0).save_pretrained(path)
    return str(path)


def _conditioning_file(path, **override):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "encoder_hidden_states": torch.randn(N_ROWS, SEQ, DIM, generator=g),
        "uncond_encoder_hidden_states": torch.zeros(SEQ, DIM),
    }
    tensors.update(override)
    save_file({k: v for k, v in tensors.items() if v is not None}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A data-free distillation of the tiny teacher (widths 4), 60 iterations, with the unconditional row."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cond")
    teacher, cond = _teacher_folder(root / "teacher"), _conditioning_file(root / "prompts.safetensors")
    out = root / "ladder"
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "--teacher",
            teacher,
            "--conditioning",
            cond,
            "--uncond-prob",
            "0.2",
            "--widths",
            "4",
            "--iters",
            "60",
            "--out",
            str(out),
            "--samples",
            "16",
            "--sampler",
            "ddim",
            "--sampler-steps",
            "4",
            "--save-every",
            "30",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "not calibrated" in r.output
    return {"teacher": teacher, "cond": cond, "out": str(out)}


def test_conditioning_rows_and_the_unconditional_row():
    e = torch.randn(4, 2, 3)
    c = Conditioning(encoder_hidden_states=e, uncond_encoder_hidden_states=torch.ones(2, 3))
    rows = c.rows(torch.tensor([3, 0]), torch.tensor([False, True]))["encoder_hidden_states"]
    assert torch.equal(rows[0], e[3]) and torch.equal(rows[1], torch.ones(2, 3))
    assert c.spec == {"encoder_hidden_states": [2, 3], "class_labels": False} and c.has_uncond


def test_distillation_draws_rows_per_example_from_the_iteration_generator(tmp_path):
    """With data (no paired rows): a random row per example and the unconditional row with probability uncond_prob,
    drawn from the iteration's generator (the same draws on resume); paired rows follow the data index."""
    cond = load_conditioning(_conditioning_file(tmp_path / "c.safetensors"))
    with pytest.warns(UserWarning):
        teacher = load_teacher(_teacher_folder(tmp_path / "teacher"), cond)
    idx = torch.arange(2000) % 7
    a = Distillation(teacher, "x", 0.25).draw_conditioning(idx, torch.Generator().manual_seed(3))
    b = Distillation(teacher, "x", 0.25).draw_conditioning(idx, torch.Generator().manual_seed(3))
    e = a["encoder_hidden_states"]
    assert torch.equal(e, b["encoder_hidden_states"]) and e.shape == (2000, SEQ, DIM)
    uncond = (e == 0).flatten(1).all(1)  # the file's unconditional row is zeros
    assert abs(float(uncond.float().mean()) - 0.25) < 0.04  # 4 binomial se at n = 2000
    rows = [int(((cond.encoder_hidden_states - r).abs().flatten(1).sum(1) == 0).nonzero()) for r in e[~uncond]]
    assert set(rows) == set(range(N_ROWS))
    paired = Distillation(teacher, "x", 0.0, rows=torch.arange(7) % N_ROWS).draw_conditioning(
        torch.tensor([6, 1]), torch.Generator().manual_seed(0)
    )
    assert torch.equal(paired["encoder_hidden_states"], cond.encoder_hidden_states[[1, 1]])


def test_conditional_distillation_moves_the_student_to_the_teacher(distilled):
    """Student vs teacher eps RMS on teacher samples noised at t = 0.3, 0.6, 0.9 with their rows: at most 0.7x the
    distance of the student's initial weights (the same seeded init the training loop starts from)."""
    cond = load_conditioning(distilled["cond"])
    teacher = load_teacher(distilled["teacher"], cond)
    ladder = load_ladder(distilled["out"])
    assert ladder.conditional and ladder.widths == [4, 8] and ladder.conditioning == cond.spec
    assert type(ladder.unets[0]).__name__ == "UNet2DConditionModel"
    assert ladder.unets[0].config.cross_attention_dim == DIM
    torch.manual_seed(_seed(0, 0, 0xC0FFEE))
    init = Distillation(teacher, "").build(4)
    x0 = load_tensors(os.path.join(distilled["out"], SAMPLES_FILE))["x"]
    kw = cond.rows(torch.arange(len(x0)) % cond.n)
    g = torch.Generator().manual_seed(1)

    def distance(student):
        d2 = []
        with torch.no_grad():
            for t in (0.3, 0.6, 0.9):
                xt = ladder.schedule.add_noise(x0, torch.randn(x0.shape, generator=g), t)
                k = ladder.schedule.timestep(t).expand(len(x0))
                d2.append((student(xt, k, **kw).sample - teacher.unet(xt, k, **kw).sample).pow(2).mean())
        return float(torch.stack(d2).mean().sqrt())

    before = distance(init.eval())
    g.manual_seed(1)
    after = distance(ladder.unets[0])
    assert after < 0.7 * before, (before, after)
    index = json.loads((open(os.path.join(distilled["out"], "model_index.json"))).read())
    assert index["training"]["uncond_prob"] == 0.2 and index["training"]["paired_rows"] is True
    assert index["teacher"]["conditioning"]["sha256"] == cond.fingerprint


def test_conditional_ladder_samples_through_multilevel_model(distilled):
    ladder = load_ladder(distilled["out"])
    cond = load_conditioning(distilled["cond"])
    kw = cond.rows(torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="MultilevelModel"):
        MultilevelPipeline.from_pretrained(distilled["out"])
    top = UNetLadder(ladder.unets[-1:], ladder.widths[-1:], ladder.costs[-1:], ladder.schedule, ladder.info)
    ref = sample_ladder(top, kw, steps=5, generator=torch.Generator().manual_seed(0)).x
    at_one = sample_ladder(ladder, kw, steps=5, probabilities=[1.0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(at_one.x, ref, atol=1e-4, rtol=0)  # p = 1: f1 + (f2 - f1) = f2, up to rounding
    half = sample_ladder(
        ladder,
        kw,
        steps=5,
        probabilities=[0.5],
        generator=torch.Generator().manual_seed(0),
        level_generator=torch.Generator().manual_seed(2),
    )
    assert torch.isfinite(half.x).all() and half.x.shape == (3, 4, 8, 8)
    assert half.report["top_equivalents_per_image"] < at_one.report["top_equivalents_per_image"]


def test_resume_keeps_the_weights_and_refuses_another_conditioning_file(distilled, tmp_path):
    before = load_tensors(os.path.join(distilled["out"], "level_1", "diffusion_pytorch_model.safetensors"))
    args = [
        "distill",
        "--teacher",
        distilled["teacher"],
        "--conditioning",
        distilled["cond"],
        "--uncond-prob",
        "0.2",
        "--widths",
        "4",
        "--iters",
        "60",
        "--out",
        distilled["out"],
        "--samples",
        "16",
        "--sampler",
        "ddim",
        "--sampler-steps",
        "4",
        "--save-every",
        "30",
        "--no-calibrate",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    after = load_tensors(os.path.join(distilled["out"], "level_1", "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    other = _conditioning_file(tmp_path / "other.safetensors", encoder_hidden_states=torch.ones(N_ROWS, SEQ, DIM))
    r = CliRunner().invoke(main, [other if a == distilled["cond"] else a for a in args])
    assert r.exit_code == 2 and "--out" in r.output and "conditioning_sha256" in r.output, r.output


def _refused(tmp_path, teacher, extra, option, words):
    out = tmp_path / "never"
    r = CliRunner().invoke(
        main,
        ["distill", "--teacher", teacher, "--widths", "4", "--iters", "2", "--out", str(out), "--samples", "4", *extra],
    )
    assert r.exit_code == 2, r.output
    assert option in r.output and all(w in r.output for w in words), r.output
    assert "Traceback" not in r.output and not out.exists()


def test_bad_conditioning_is_refused_by_name(tmp_path):
    teacher = _teacher_folder(tmp_path / "teacher")
    _refused(tmp_path, teacher, [], "--conditioning", ["UNet2DConditionModel", "(N, seq, 16)"])
    _refused(
        tmp_path,
        teacher,
        ["--conditioning", str(tmp_path / "nope.safetensors")],
        "--conditioning",
        ["nope.safetensors", "does not exist"],
    )
    bad_key = _conditioning_file(tmp_path / "k.safetensors", prompt_embeds=torch.zeros(2, 3, 16))
    _refused(tmp_path, teacher, ["--conditioning", bad_key], "--conditioning", ["k.safetensors", "prompt_embeds"])
    bad_dim = _conditioning_file(
        tmp_path / "d.safetensors", encoder_hidden_states=torch.zeros(2, 3, 8), uncond_encoder_hidden_states=None
    )
    _refused(
        tmp_path,
        teacher,
        ["--conditioning", bad_dim],
        "--conditioning",
        ["d.safetensors", "'encoder_hidden_states'", "(2, 3, 8)", "expected (N, seq, 16)"],
    )
    bad_rank = _conditioning_file(
        tmp_path / "r.safetensors", encoder_hidden_states=torch.zeros(2, 16), uncond_encoder_hidden_states=None
    )
    _refused(tmp_path, teacher, ["--conditioning", bad_rank], "--conditioning", ["r.safetensors", "(N, seq, dim)"])
    labels = _conditioning_file(tmp_path / "y.safetensors", class_labels=torch.arange(N_ROWS))
    _refused(tmp_path, teacher, ["--conditioning", labels], "--conditioning", ["'class_labels'", "no class embedding"])
    no_uncond = _conditioning_file(tmp_path / "u.safetensors", uncond_encoder_hidden_states=None)
    _refused(
        tmp_path,
        teacher,
        ["--conditioning", no_uncond, "--uncond-prob", "0.1"],
        "--uncond-prob",
        ["no unconditional row"],
    )


def test_conditioning_for_an_unconditional_teacher_is_refused(tmp_path):
    cond = _conditioning_file(tmp_path / "c.safetensors")
    _refused(
        tmp_path,
        SHIPPED,
        ["--conditioning", cond, "--data", "digits"],
        "--conditioning",
        ["unconditional", "c.safetensors"],
    )


def test_plain_teacher_reads_its_scheduler_config_or_warns(tmp_path):
    teacher = _teacher_folder(tmp_path / "teacher")
    cond = load_conditioning(_conditioning_file(tmp_path / "c.safetensors"))
    with pytest.warns(UserWarning, match="no noise schedule"):
        assert load_teacher(teacher, cond).schedule.kind == "linear"
    (tmp_path / "teacher" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000})
    )
    assert load_teacher(teacher, cond).schedule.kind == "cosine"
    (tmp_path / "teacher" / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "scaled_linear"}))
    with pytest.raises(ValueError, match="teacher: .*scheduler_config.json.*scaled_linear"):
        load_teacher(teacher, cond)


def test_mlem_sample_refuses_a_conditional_ladder_by_name(distilled, tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "sample",
            "--ladder",
            distilled["out"],
            "--method",
            "em",
            "--steps",
            "2",
            "--n",
            "2",
            "--out",
            str(tmp_path / "grid.png"),
        ],
    )
    assert r.exit_code != 0 and "MultilevelModel" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "grid.png").exists()
