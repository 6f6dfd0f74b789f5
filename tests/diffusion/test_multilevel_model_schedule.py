"""MultilevelModel(schedule=...) in stock pipelines (issue 22, item 1): which model at which call.

Tiny conditional UNets built from configs (no downloads) in a stock StableDiffusionPipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from conftest import tiny_sd_pipeline
from conftest import tiny_unet2d_condition as _unet_cond
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from multilevel_em.diffusion import MultilevelModel
from multilevel_em.engine import CallSchedule


@pytest.fixture(scope="module")
def ladder():
    return [_unet_cond(4, 1), _unet_cond(8, 2), _unet_cond(16, 3)]


def _kw(n=2, steps=5):
    g = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(n, 4, 16, generator=g),
        negative_prompt_embeds=torch.randn(n, 4, 16, generator=g),
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=8,
        width=8,
        output_type="np",
    )


def _images(pipe, **kw):
    return pipe(generator=torch.Generator().manual_seed(0), **kw).images


@pytest.mark.parametrize("scheduler", [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_top_alone_and_a_switch_are_the_models_they_name(ladder, scheduler):
    """The top-alone schedule gives the top model's images; a switch to level 1 for all calls gives level 1's;
    the switch's counted cost is the schedule's expected cost exactly (no randomness)."""
    kw = _kw()
    top = _images(tiny_sd_pipeline(ladder[-1], scheduler()), **kw)
    low = _images(tiny_sd_pipeline(ladder[0], scheduler()), **kw)
    pipe = tiny_sd_pipeline(ladder[-1], scheduler())
    pipe.unet = MultilevelModel(ladder, schedule=CallSchedule.top_alone(5, 3), scheduler=pipe.scheduler)
    np.testing.assert_allclose(_images(pipe, **kw), top, atol=1e-5, rtol=0)
    assert pipe.unet.report()["top_equivalents_per_image"] == pytest.approx(5.0)
    pipe.unet.set_schedule(CallSchedule.switch(5, 3, level=0, fraction=1.0))
    pipe.unet.reset()
    np.testing.assert_allclose(_images(pipe, **kw), low, atol=1e-5, rtol=0)
    sw = CallSchedule.switch(5, 3, level=0, fraction=0.4)
    pipe.unet.set_schedule(sw)
    pipe.unet.reset()
    out = _images(pipe, **kw)
    assert np.isfinite(out).all() and not np.allclose(out, top, atol=1e-4)
    assert pipe.unet.evaluations == [2 * 2 * 2, 0, 3 * 2 * 2]  # calls x images x guidance copies
    rep = pipe.unet.report()["top_equivalents_per_image"]
    assert rep == pytest.approx(sw.expected_cost(pipe.unet.costs))


def test_a_hybrid_schedule_runs_and_costs_about_its_expectation(ladder):
    """Level 1 alone for 2 calls, then level 1 corrected to the top with p = 0.5: finite images, level 2
    never runs, the top runs on whole guidance pairs only."""
    kw = _kw(n=8, steps=6)
    pipe = tiny_sd_pipeline(ladder[-1], DDIMScheduler())
    s = CallSchedule([(0,)] * 2 + [(0, 2)] * 4, [()] * 2 + [(0.5,)] * 4, 3, "hybrid")
    pipe.unet = MultilevelModel(
        ladder, schedule=s, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(1)
    )
    out = _images(pipe, **kw)
    assert np.isfinite(out).all()
    ev = pipe.unet.evaluations
    assert ev[0] == 6 * 16 and ev[1] == 0 and ev[2] % 2 == 0 and 0 < ev[2] < 4 * 16
    assert "schedule" in repr(pipe.unet)


def test_schedule_bad_inputs_are_named(ladder):
    pipe = tiny_sd_pipeline(ladder[-1], DDIMScheduler())
    with pytest.raises(ValueError, match="at most one of probabilities=, rates= and schedule="):
        MultilevelModel(ladder, probabilities=[1, 1], schedule=CallSchedule.top_alone(5, 3))
    with pytest.raises(ValueError, match="made for a ladder of 4 levels, but this one has 3"):
        MultilevelModel(ladder, schedule=CallSchedule.top_alone(5, 4))
    with pytest.raises(TypeError, match="schedule: expected a CallSchedule"):
        MultilevelModel(ladder).set_schedule([(2,)] * 5)
    pipe.unet = MultilevelModel(ladder, schedule=CallSchedule.top_alone(5, 3))
    with pytest.raises(ValueError, match="scheduler: rates, calibrate"):
        _images(pipe, **_kw())
    pipe.unet.scheduler = pipe.scheduler
    with pytest.raises(ValueError, match="made for 5 model calls, but the scheduler's timestep grid makes 7"):
        _images(pipe, **_kw(steps=7))
    heun = tiny_sd_pipeline(ladder[-1], HeunDiscreteScheduler())
    heun.unet = MultilevelModel(ladder, schedule=CallSchedule.top_alone(9, 3), scheduler=heun.scheduler)
    with pytest.raises(ValueError, match="more than once per timestep"):
        _images(heun, **_kw())
