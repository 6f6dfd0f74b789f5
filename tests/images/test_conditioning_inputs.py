"""Conditional ladders' inputs (issue 20): sample_ladder's step count, and one rule for the conditioning rows and
the unconditional row.  Tiny models built from configs; fixed seeds."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from conftest import tiny_unet2d_condition
from safetensors.torch import save_file

from multilevel_em.diffusion.schedule import VPSchedule
from multilevel_em.images.conditioning import load_conditioning, sample_ladder
from multilevel_em.images.ladder import UNetLadder


@pytest.fixture(scope="module")
def ladder():
    return UNetLadder(
        [tiny_unet2d_condition(4, 1), tiny_unet2d_condition(8, 2)], [4, 8], [1.0, 2.0], VPSchedule.linear()
    )


def _rows(n: int) -> dict:
    return {"encoder_hidden_states": torch.randn(n, 4, 16, generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.0, True, None])
def test_sample_ladder_names_a_bad_step_count(ladder, steps):
    """Item 23: steps=0 failed with a ZeroDivisionError inside diffusers."""
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, 1000\]"):
        sample_ladder(ladder, _rows(2), steps=steps, probabilities=[0.5])


def test_sample_ladder_with_valid_steps_runs(ladder):
    for steps in (1, 3):
        out = sample_ladder(
            ladder, _rows(2), steps=steps, probabilities=[0.5], generator=torch.Generator().manual_seed(0)
        )
        assert out.x.shape == (2, 4, 8, 8) and torch.isfinite(out.x).all()


def _file(path, **tensors) -> str:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def test_the_unconditional_row_follows_the_rule_of_the_main_rows(tmp_path):
    """Item 26: an integer unconditional row was converted while integer main rows were refused; one rule now
    (finite floats for prompt embeddings, integers for class labels), in the file and in memory alike."""
    e = torch.randn(3, 2, 4)
    for key, bad, match in (
        (
            "uncond_encoder_hidden_states",
            torch.zeros(2, 4, dtype=torch.int64),
            "must be finite floats, got torch.int64",
        ),
        (
            "uncond_encoder_hidden_states",
            torch.full((2, 4), float("nan")),
            "must be finite floats, got torch.float32 with",
        ),
        ("encoder_hidden_states", torch.zeros(3, 2, 4, dtype=torch.int32), "must be finite floats, got torch.int32"),
    ):
        tensors = {"encoder_hidden_states": e, key: bad}
        with pytest.raises(ValueError, match=rf"conditioning: .*'{key}' {match}"):
            load_conditioning(_file(tmp_path / f"{key}.safetensors", **tensors))
    labels = torch.tensor([0, 1, 2])
    for bad in (torch.tensor([1.0]), torch.tensor([True])):
        with pytest.raises(
            ValueError, match=r"'uncond_class_labels' has shape \(1,\), expected \(\) or \(1,\), an integer"
        ):
            load_conditioning(_file(tmp_path / "y.safetensors", class_labels=labels, uncond_class_labels=bad))
    ok = load_conditioning(
        _file(
            tmp_path / "ok.safetensors",
            encoder_hidden_states=e,
            uncond_encoder_hidden_states=torch.zeros(2, 4, dtype=torch.float16),
            class_labels=labels,
            uncond_class_labels=torch.tensor(1, dtype=torch.int32),
        )
    )
    assert ok.uncond_encoder_hidden_states.dtype == torch.float32 and ok.uncond_class_labels.dtype == torch.int64
