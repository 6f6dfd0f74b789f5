"""A level that produces NaN or Inf stops every sampler of the pipeline with an error naming the level."""

import pytest
import torch

pytest.importorskip("diffusers")

from multilevel_em.images import MultilevelPipeline


@pytest.fixture(scope="module")
def nan_top(nan_ladder):
    """The shared tiny ladder whose top UNet (level 2, width 8) has NaN weights (conftest)."""
    return nan_ladder


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ode", "em"])
def test_every_sampler_checks_finiteness(nan_top, sampler):
    pipe = MultilevelPipeline.from_pretrained(nan_top)
    with pytest.raises(FloatingPointError, match=r"level 2 \(width 8\)"):
        pipe(2, method="mlem", sampler=sampler, rates=[1e6], steps=3, generator=torch.Generator().manual_seed(0))
