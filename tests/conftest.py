"""Shared helpers for the engine tests.

Statistical tests use fixed seeds and a tolerance of 5 standard errors unless stated
otherwise: for a correct engine a single such check fails with probability about 6e-7,
and since the seeds are fixed, a passing test passes every time.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np
import torch

from multilevel_em.engine import Ladder

F64 = torch.float64

# The tests use small tensors: one intra-op thread is as fast, and it avoids OpenMP threads
# spinning against each other when the suite shares its cores (that doubled its run time).
torch.set_num_threads(1)


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    slope, _ = np.polyfit(lx, ly, 1)
    return float(slope)


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """sqrt(mean over samples of |x_b - ref_b|^2)."""
    d = (x - ref).reshape(x.shape[0], -1)
    return float(d.pow(2).sum(1).mean().sqrt())


class Counting:
    """Wraps a drift level and counts the rows (sample-evaluations) it was called on."""

    def __init__(self, f: Callable):
        self.f = f
        self.rows = 0
        self.calls = 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        self.calls += 1
        return self.f(x, t)


def wiggle_levels(amplitudes: Sequence[float]) -> List[Callable]:
    """f^l(x, t) = -x + a_l sin(3x + t): an OU-like drift with a perturbation of size a_l."""

    def make(a: float):
        return lambda x, t: -x + a * torch.sin(3.0 * x + t)

    return [make(a) for a in amplitudes]


def three_level_ladder(costs=(1.0, 4.0, 16.0)) -> Ladder:
    """Three levels with distinct values everywhere: f^1 = -x, f^2 = f^1 + 0.5 sin(3x + t),
    f^3 = f^2 + 0.3 cos(2x - t)."""
    f1 = lambda x, t: -x
    f2 = lambda x, t: -x + 0.5 * torch.sin(3.0 * x + t)
    f3 = lambda x, t: -x + 0.5 * torch.sin(3.0 * x + t) + 0.3 * torch.cos(2.0 * x - t)
    return Ladder([f1, f2, f3], list(costs))


def tiny_unet2d_condition(width: int, seed: int):
    """A tiny ``UNet2DConditionModel`` (channels (width, 2 width), 16-dim prompt tokens), random weights
    (built from a config, as diffusers' own pipeline tests do: no downloads)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2, attention_head_dim=2,
    ).eval()


def tiny_dit(layers: int, heads: int, seed: int, out_channels: int = 8):
    """A tiny class-conditional ``DiTTransformer2DModel`` (learned sigma with out_channels=8), random weights."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        sample_size=8, num_layers=layers, patch_size=2, attention_head_dim=8, num_attention_heads=heads,
        in_channels=4, out_channels=out_channels, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    ).eval()


__all__ = ["F64", "tiny_dit", "tiny_unet2d_condition", "fit_slope", "rms", "Counting", "wiggle_levels", "three_level_ladder"]
