"""Tiny diffusers models with random weights, built from configs (no downloads): for tests, quick
benchmark runs and examples that need a model of a real class without its weights.

Each builder seeds torch's global generator with ``seed`` before building, so the same arguments
give the same weights. They import diffusers when called (the ``diffusion`` extra).
"""

from __future__ import annotations

import torch

__all__ = ["tiny_unet", "tiny_unet2d_condition", "tiny_dit"]


def tiny_unet(width: int, seed: int, channels: int = 1, size: int = 8):
    """A tiny ``UNet2DModel`` (channels (width, 2 width), two down and up blocks), random weights."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def tiny_unet2d_condition(width: int, seed: int):
    """A tiny ``UNet2DConditionModel`` (channels (width, 2 width), 8x8 latents of 4 channels, 16-dim prompt
    tokens), random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=2,
        attention_head_dim=2,
    ).eval()


def tiny_dit(layers: int, heads: int, seed: int, out_channels: int = 8):
    """A tiny class-conditional ``DiTTransformer2DModel`` (learned sigma with out_channels=8), random weights."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        sample_size=8,
        num_layers=layers,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=heads,
        in_channels=4,
        out_channels=out_channels,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
