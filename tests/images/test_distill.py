"""Distillation (multilevel_em.images.distill, mlem distill): students of a teacher UNet through train_ladder's hook."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from click.testing import CliRunner  # noqa: E402
from conftest import tiny_unet  # noqa: E402

from multilevel_em.cli.main import main  # noqa: E402
from multilevel_em.images import MultilevelPipeline, load_digits  # noqa: E402
from multilevel_em.images.distill import (  # noqa: E402
    SAMPLES_FILE,
    Distillation,
    distill_ladder,
    load_teacher,
    student_config,
)
from multilevel_em.images.ladder import load_tensors  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return load_teacher(SHIPPED)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


def _tiny_teacher_folder(path):
    """A plain diffusers UNet2DModel folder (no multilevel_em metadata), width 8, 8x8 RGB."""
    tiny_unet(8, 0, channels=3).save_pretrained(path)
    return str(path)


def test_student_config_scales_the_teachers_channels(teacher):
    cfg = student_config(teacher.unet.config, 8)
    assert cfg["block_out_channels"] == [8, 16, 16]
    for key in ("sample_size", "in_channels", "layers_per_block", "norm_num_groups", "down_block_types"):
        assert cfg[key] == teacher.unet.config[key]


def test_distillation_target_is_the_teachers_output_without_grad(teacher):
    x = torch.randn(2, 1, 16, 16)
    k = torch.tensor([10, 900])
    target = Distillation(teacher, "digits").target(x, k, torch.zeros_like(x))
    with torch.no_grad():
        assert torch.equal(target, teacher.unet(x, k).sample)
    assert not target.requires_grad


def test_mlem_distill_end_to_end_on_the_shipped_top(tmp_path):
    out = tmp_path / "ladder"
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "--teacher",
            SHIPPED,
            "--widths",
            "4,8",
            "--iters",
            "4",
            "--out",
            str(out),
            "--data",
            "digits",
            "--save-every",
            "2",
            "--no-calibrate",
        ],
    )
    assert r.exit_code == 0, r.output
    pipe = MultilevelPipeline.from_pretrained(str(out))
    assert pipe.ladder.widths == [4, 8, 32]
    shipped = MultilevelPipeline.from_pretrained(SHIPPED).ladder
    assert pipe.ladder.costs == [shipped.costs[0], shipped.costs[1], shipped.costs[3]]  # measured FLOPs, same shapes
    top = load_tensors(str(out / "level_3" / "diffusion_pytorch_model.safetensors"))
    ref = load_tensors(os.path.join(SHIPPED, "level_4", "diffusion_pytorch_model.safetensors"))
    assert top.keys() == ref.keys() and all(torch.equal(top[k], ref[k]) for k in ref)  # the teacher, unchanged
    index = json.loads((out / "model_index.json").read_text())
    assert index["training"]["objective"] == "distill" and index["teacher"]["level"] == "level_3"
    assert (out / "loss.png").exists()
    res = pipe(2, method="em", steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.x).all()


def test_distillation_resumes_to_the_same_weights(tmp_path, teacher, digits):
    data = type(digits)(x=digits.x[:64], name="digits[:64]")
    a = distill_ladder(teacher, str(tmp_path / "a"), data, widths=[4], iters=4, save_every=2, loss_plot=False)
    distill_ladder(teacher, str(tmp_path / "b"), data, widths=[4], iters=2, save_every=2, loss_plot=False)
    b = distill_ladder(teacher, str(tmp_path / "b"), data, widths=[4], iters=4, save_every=2, loss_plot=False)
    for p, q in zip(a.unets[0].state_dict().values(), b.unets[0].state_dict().values()):
        assert torch.equal(p, q)


def test_data_free_distillation_caches_the_teachers_samples(tmp_path):
    teacher_dir = _tiny_teacher_folder(tmp_path / "teacher")
    out = tmp_path / "out"
    args = [
        "distill",
        "--teacher",
        teacher_dir,
        "--widths",
        "4",
        "--iters",
        "2",
        "--out",
        str(out),
        "--samples",
        "6",
        "--sampler",
        "ddim",
        "--sampler-steps",
        "3",
        "--no-calibrate",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    x = load_tensors(str(out / SAMPLES_FILE))["x"]
    assert x.shape == (6, 3, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert MultilevelPipeline.from_pretrained(str(out)).ladder.widths == [4, 8]
    r = CliRunner().invoke(main, args)  # resumed: same cache, nothing left to train
    assert r.exit_code == 0, r.output
    assert torch.equal(load_tensors(str(out / SAMPLES_FILE))["x"], x)
    r = CliRunner().invoke(
        main, args[:-5] + ["--samples", "7", "--sampler", "ddim", "--sampler-steps", "3", "--no-calibrate"]
    )
    assert r.exit_code != 0 and "--out" in r.output and "holds something else" in r.output


def _refused(tmp_path, extra, option, words):
    out = tmp_path / "never"
    args = ["distill", "--teacher", SHIPPED, "--widths", "4,8", "--iters", "2", "--out", str(out), "--data", "digits"]
    for k, v in extra.items():
        args[args.index(k) + 1] = v
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output  # a usage error naming the option, not a crash
    assert option in r.output and all(w in r.output for w in words), r.output
    assert "Traceback" not in r.output
    return out


def test_bad_teacher_is_refused_by_name(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    out = _refused(tmp_path, {"--teacher": str(tmp_path / "junk")}, "--teacher", ["neither a ladder folder"])
    assert not out.exists()


@pytest.mark.parametrize(
    "widths,words",
    [
        ("4,32", ["smaller than the teacher's width 32"]),
        ("4,64", ["smaller"]),
        ("6,8", ["norm_num_groups = 4"]),
        ("8,4", ["nondecreasing"]),
    ],
)
def test_bad_widths_are_refused_before_training(tmp_path, widths, words):
    out = _refused(tmp_path, {"--widths": widths}, "--widths", words)
    assert not out.exists()


def test_data_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.png").write_text("not a png")
    out = _refused(tmp_path, {"--data": str(tmp_path / "empty")}, "--data", ["no readable PNG/JPEG image"])
    assert not out.exists()


def test_output_folder_holding_something_else_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    _refused(tmp_path, {"--out": str(other)}, "--out", ["holds no model_index.json"])
    assert os.listdir(other) == ["thesis.tex"]


@pytest.mark.slow
def test_distill_benchmark_quick(tmp_path):
    from multilevel_em.bench import distill as bench

    res = bench.run(
        quick=True,
        out=str(tmp_path / "d.json"),
        plot=str(tmp_path / "d.png"),
        work=str(tmp_path / "w"),
        echo=lambda *_: None,
    )
    assert (tmp_path / "d.json").exists() and (tmp_path / "d.png").exists()
    assert [s["iters"] for s in res["stages"]] == [3, 6] and len(res["shipped"]["eps_distance"]) == 1
    assert [s["iters"] for s in res["data_free"]["stages"]] == [3, 6]
    for s in res["stages"] + res["data_free"]["stages"]:
        assert all(r > 0 for r in s["ratio_to_shipped"])
    assert set(res["runs"]) == {"shipped", "distilled", "data_free"}
    assert all(len(v) == 2 for v in res["runs"].values())
    assert all(r["path_error"] > 0 for k in res["runs"] for r in res["runs"][k])
    kid = res["kid"]["ladders"]
    assert set(kid) == {"shipped", "distilled", "data_free"} and all(v["kid_se"] > 0 for v in kid.values())
    assert isinstance(kid["distilled"]["resolved"], bool) and kid["distilled"]["kid_diff_se"] > 0
    assert (tmp_path / "w" / "data_free" / SAMPLES_FILE).exists()
    with pytest.raises(ValueError, match="out/plot"):
        bench.run(
            quick=True,
            out=str(tmp_path / "missing" / "d.json"),
            plot=str(tmp_path / "d.png"),
            work=str(tmp_path / "w2"),
        )
    with pytest.raises(
        ValueError, match="already trained to 6 iterations"
    ):  # stage 3 would measure 6-iteration weights
        bench.run(quick=True, out=str(tmp_path / "d.json"), plot=str(tmp_path / "d.png"), work=str(tmp_path / "w"))
    ext = bench.extend(
        8, out=str(tmp_path / "d.json"), plot=str(tmp_path / "d.png"), work=str(tmp_path / "w"), echo=lambda *_: None
    )
    assert [s["iters"] for s in ext["data_free"]["stages"]] == [3, 6, 8] and ext["stages"][-1]["extended"]


def _nan_teacher_folder(path, value=float("nan")):
    """The tiny teacher with one output bias set to NaN (or Inf): every output it makes is non-finite."""
    from diffusers import UNet2DModel

    folder = _tiny_teacher_folder(path)
    unet = UNet2DModel.from_pretrained(folder)
    with torch.no_grad():
        unet.conv_out.bias.fill_(value)
    unet.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_teacher_is_named_data_free(tmp_path, value):
    teacher_dir = _nan_teacher_folder(tmp_path / "teacher", value)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "--teacher",
            teacher_dir,
            "--widths",
            "4",
            "--iters",
            "2",
            "--out",
            str(out),
            "--samples",
            "4",
            "--sampler",
            "ddim",
            "--sampler-steps",
            "3",
            "--no-calibrate",
        ],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "outputs NaN or Inf" in r.output and "check_finite" not in r.output and "learning rate" not in r.output
    assert not (out / SAMPLES_FILE).exists()


def test_a_non_finite_teacher_is_named_with_data_not_the_learning_rate(tmp_path):
    teacher_dir = _nan_teacher_folder(tmp_path / "teacher")
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    r = CliRunner().invoke(
        main,
        [
            "distill",
            "--teacher",
            teacher_dir,
            "--widths",
            "4",
            "--iters",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--data",
            str(folder),
            "--no-calibrate",
        ],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "outputs NaN or Inf" in r.output and "learning rate" not in r.output
