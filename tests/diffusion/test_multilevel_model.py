"""MultilevelModel: a ladder of diffusers models as one drop-in denoiser for stock pipelines.

Tiny models built from configs (no downloads), as diffusers' own pipeline tests do.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from conftest import tiny_dit as _dit  # noqa: E402
from conftest import tiny_sd_pipeline, tiny_vae  # noqa: E402
from conftest import tiny_unet2d_condition as _unet_cond  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from multilevel_em.diffusion import MultilevelModel, scheduler_spans  # noqa: E402

SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(),
    "ddpm": lambda: DDPMScheduler(),
    "euler": lambda: EulerDiscreteScheduler(),
    "euler_ancestral": lambda: EulerAncestralDiscreteScheduler(),
    "dpmpp_2m": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
    "dpmpp_sde": lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2),
    "unipc": lambda: UniPCMultistepScheduler(),
    "heun": lambda: HeunDiscreteScheduler(),
}


_vae = tiny_vae


@pytest.fixture(scope="module")
def dit_ladder():
    return [_dit(1, 1, 1), _dit(1, 2, 2), _dit(2, 2, 3)]


@pytest.fixture(scope="module")
def unet_ladder():
    return [_unet_cond(4, 1), _unet_cond(8, 2), _unet_cond(16, 3)]


def _dit_pipe(top, scheduler):
    pipe = DiTPipeline(transformer=top, vae=_vae(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_sd_pipe = tiny_sd_pipeline


def _embeds(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, 16, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- stock pipelines, all p = 1


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_dit_pipeline_with_probabilities_one_is_the_top_model(dit_ladder, name):
    """Stock DiTPipeline: class labels, guidance 4 (batch doubled), learned sigma (8 output channels)."""
    pipe = _dit_pipe(dit_ladder[-1], SCHEDULERS[name]())
    kw = dict(class_labels=[1, 7], num_inference_steps=4, guidance_scale=4.0, output_type="np")
    # DiTPipeline passes no generator to scheduler.step: stochastic schedulers draw from torch's global RNG
    torch.manual_seed(5)
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.transformer = MultilevelModel(dit_ladder, probabilities=[1.0, 1.0], generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    rep = pipe.transformer.report()
    calls = len(pipe.scheduler.timesteps)
    assert rep["calls"] == calls and rep["rows_per_call"] == 4  # two images, doubled by guidance
    assert [lv["evaluations"] for lv in rep["levels"]] == [4 * calls] * 3
    # every level at every call: sum_l c_l / c_K top-level equivalents per call
    c = pipe.transformer.costs
    assert rep["top_equivalents_per_image"] == pytest.approx(calls * sum(c) / c[-1])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_stable_diffusion_pipeline_with_probabilities_one_is_the_top_model(unet_ladder, name):
    """Stock StableDiffusionPipeline with prompt embeddings (one per image) and guidance 5."""
    pipe = _sd_pipe(unet_ladder[-1], SCHEDULERS[name]())
    kw = dict(
        prompt_embeds=_embeds(2, 0),
        negative_prompt_embeds=_embeds(2, 1),
        num_inference_steps=4,
        guidance_scale=5.0,
        height=8,
        width=8,
        output_type="np",
    )
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.unet = MultilevelModel(unet_ladder, probabilities=[1.0, 1.0], generator=torch.Generator().manual_seed(1))
    assert pipe.unet.config.in_channels == 4 and pipe.unet.dtype == torch.float32
    out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_multilevel_pipeline_spends_less_than_the_top_model(unet_ladder):
    """Probabilities < 1: images differ from the top model's but stay finite, and the counted cost is lower."""
    pipe = _sd_pipe(unet_ladder[-1], DDIMScheduler())
    mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.25], generator=torch.Generator().manual_seed(3))
    pipe.unet = mm
    out = pipe(
        prompt_embeds=_embeds(3, 0),
        negative_prompt_embeds=_embeds(3, 1),
        num_inference_steps=6,
        guidance_scale=5.0,
        height=8,
        width=8,
        output_type="np",
    ).images
    assert out.shape == (3, 8, 8, 3) and np.isfinite(out).all()
    rep = mm.report()
    assert rep["calls"] == 6 and 1.0 < rep["top_equivalents_per_image"] < 6.0


# ----------------------------------------------------------------------------- unbiasedness


def _step_mean_z(step, outs, ref):
    """Max |z| over elements of mean(step(out)) - step(ref), with the standard error across draws."""
    y = torch.stack([step(o) for o in outs]).double()  # (draws, ...)
    mean, se = y.mean(0), y.std(0) / math.sqrt(y.shape[0])
    r = step(ref).double()
    return float(((mean - r).abs() / se.clamp_min(1e-12)).max())


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample", "flow"])
@pytest.mark.parametrize("pairing", [True, False])
def test_unbiased_for_the_top_model_step_with_per_row_conditioning(unet_ladder, prediction, pairing):
    """E[scheduler step of the estimate] = the step of the top model, each row with its own prompt.

    400 draws per configuration (per-sample draws: replicated rows draw independently); tolerance:
    every element within 5 standard errors; the same statistic against level 2 must fail (power).
    """
    torch.manual_seed(0)
    n_img, reps = 2, 400
    x = torch.randn(n_img, 4, 8, 8)
    cond, uncond = _embeds(n_img, 5), _embeds(n_img, 6)
    # Rows: [uncond x reps; cond x reps] with identical latents, as a guidance pipeline passes them.
    xs = torch.cat([x.repeat(reps, 1, 1, 1)] * 2)
    emb = torch.cat([uncond.repeat(reps, 1, 1), cond.repeat(reps, 1, 1)])
    k = 500
    if prediction == "flow":
        sch = FlowMatchEulerDiscreteScheduler()
        sch.set_timesteps(10)
        k = float(sch.timesteps[3])
    else:
        sch = DDIMScheduler(prediction_type=prediction, clip_sample=False)  # clipping x0 is nonlinear
        sch.set_timesteps(10)
        k = int(sch.timesteps[3])
    mm = MultilevelModel(
        unet_ladder, probabilities=[0.4, 0.2], pair_guidance=pairing, generator=torch.Generator().manual_seed(11)
    )
    with torch.no_grad():
        est = mm(xs, torch.tensor(k), encoder_hidden_states=emb).sample
        top = unet_ladder[-1](
            torch.cat([x, x]), torch.tensor(k), encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
        mid = unet_ladder[1](torch.cat([x, x]), torch.tensor(k), encoder_hidden_states=torch.cat([uncond, cond])).sample
    w = 3.0
    guided = lambda o: o[:n_img] + w * (o[n_img:] - o[:n_img])
    est = est.view(2, reps, n_img, 4, 8, 8).transpose(0, 1).reshape(reps, 2 * n_img, 4, 8, 8)
    outs = [guided(e) for e in est]

    def step(o):
        s = (
            FlowMatchEulerDiscreteScheduler()
            if prediction == "flow"
            else DDIMScheduler(prediction_type=prediction, clip_sample=False)
        )
        s.set_timesteps(10)
        if prediction == "flow":
            s._step_index = 3
        return s.step(o, k, x).prev_sample

    assert _step_mean_z(step, outs, guided(top)) < 5
    assert _step_mean_z(step, outs, guided(mid)) > 8  # the test can tell level 2 from the top


def test_guidance_pairs_share_their_draws(unet_ladder):
    """With pairing the two copies of an image use the same levels: the guided combination then
    has a correction that is one draw, not two; measured variance ratio printed for the notes."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    cond, uncond = _embeds(1, 5), _embeds(1, 6)
    reps = 200
    xs = torch.cat([x.repeat(reps, 1, 1, 1)] * 2)
    emb = torch.cat([uncond.repeat(reps, 1, 1), cond.repeat(reps, 1, 1)])
    var = {}
    for pairing in (True, False):
        mm = MultilevelModel(
            unet_ladder, probabilities=[0.3, 0.1], pair_guidance=pairing, generator=torch.Generator().manual_seed(2)
        )
        with torch.no_grad():
            o = mm(xs, 500, encoder_hidden_states=emb).sample
        if pairing:  # level 3 ran on whole pairs only
            assert mm.evaluations[2] % 2 == 0
        g = o[:reps] + 7.5 * (o[reps:] - o[:reps])
        var[pairing] = float(g.var(0).sum())
    assert var[True] < var[False]


def test_evaluation_counts_match_the_probabilities(unet_ladder):
    """Rows evaluating level 2: 1 - (1 - p2)(1 - p3); level 3: p3 (cost sharing); within 5 SE."""
    p2, p3, n = 0.3, 0.1, 2000
    mm = MultilevelModel(
        unet_ladder, probabilities=[p2, p3], pair_guidance=False, generator=torch.Generator().manual_seed(4)
    )
    x = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mm(x, 500, encoder_hidden_states=_embeds(n, 1))
    for got, p in ((mm.evaluations[1], 1 - (1 - p2) * (1 - p3)), (mm.evaluations[2], p3)):
        assert abs(got / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert mm.evaluations[0] == n


def test_per_image_generators_make_draws_independent_of_the_batch(unet_ladder):
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = _embeds(3, 1)
    gens = lambda ids: [torch.Generator().manual_seed(100 + i) for i in ids]
    mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.5], generator=gens(range(3)))
    with torch.no_grad():
        full = mm(x, 300, encoder_hidden_states=emb).sample
        mm.generator = gens([1])
        alone = mm(x[1:2], 300, encoder_hidden_states=emb[1:2]).sample
        mm.generator = gens(range(3))
        again = mm(x, 300, encoder_hidden_states=emb).sample
    torch.testing.assert_close(alone[0], full[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, full)


def test_conditioning_is_sliced_with_the_rows(unet_ladder):
    """A row that runs a level on a sub-batch sees its own prompt: every row of the estimate is one of
    the four combinations f1 + B2/p2 (f2 - f1) + B3/p3 (f3 - f2) of its own outputs, and some rows ran
    level 3 while others did not (so the sub-batch was a real subset)."""
    n, p2, p3 = 8, 0.5, 0.5
    x = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = _embeds(n, 2)
    mm = MultilevelModel(
        unet_ladder, probabilities=[p2, p3], pair_guidance=False, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        est = mm(x, 200, encoder_hidden_states=emb, return_dict=False)[0]
        f1, f2, f3 = (m(x, 200, encoder_hidden_states=emb).sample for m in unet_ladder)
        other = unet_ladder[2](x[:1], 200, encoder_hidden_states=emb[1:2]).sample
    assert (other - f3[:1]).abs().max() > 1e-3  # the output depends on the prompt
    combos = torch.stack([f1 + b2 / p2 * (f2 - f1) + b3 / p3 * (f3 - f2) for b2 in (0, 1) for b3 in (0, 1)])
    dist = (combos - est[None]).flatten(2).abs().max(2).values  # (4, n)
    assert bool((dist.min(0).values < 1e-4).all())
    ran_top = dist.argmin(0) % 2 == 1
    assert 0 < int(ran_top.sum()) < n and mm.evaluations[2] == int(ran_top.sum())


# ----------------------------------------------------------------------------- rates, calibration, plans


def test_scheduler_spans_cover_the_grid_once():
    for name in ("ddim", "euler", "heun", "dpmpp_2m"):
        s = SCHEDULERS[name]()
        s.set_timesteps(7)
        table = scheduler_spans(s)
        total = sum(table[round(float(k), 4)][1] for k in s.timesteps)
        top_t = max(t for t, _ in table.values())
        assert total == pytest.approx(top_t), name  # the calls' spans add up to [0, t_max]
        assert all(span > 0 for _, span in table.values())


def test_calibrate_and_plan_on_a_stock_pipeline(dit_ladder):
    pipe = _dit_pipe(dit_ladder[-1], DDIMScheduler())
    mm = MultilevelModel(dit_ladder, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(0))
    pipe.transformer = mm
    kw = dict(num_inference_steps=10, guidance_scale=4.0, output_type="latent")
    cal = mm.calibrate(lambda: pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), **kw))
    assert len(cal.times) == 10 and cal.deltas.shape == (10, 2) and np.all(cal.deltas > 0)
    plan = mm.plan(budget=3.0)
    assert plan.calls == 10 and plan.top_equivalents == pytest.approx(3.0, rel=0.02)
    assert plan.probabilities.shape == (10, 2) and np.all((plan.probabilities > 0) & (plan.probabilities <= 1))
    mm.reset()
    labels = list(range(32))
    pipe(class_labels=labels, generator=torch.Generator().manual_seed(1), **kw)
    # 32 images x 10 calls of per-image draws: tolerance 25% of the plan (its spread is ~8% here).
    assert mm.report()["top_equivalents_per_image"] == pytest.approx(plan.top_equivalents, rel=0.25)
    with pytest.raises(ValueError, match="budget .* too small"):
        mm.plan(budget=0.1)


def test_rates_need_a_scheduler_and_use_its_grid(unet_ladder):
    mm = MultilevelModel(unet_ladder, rates=[5.0, 2.0])
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="scheduler"):
        mm(x, 500, encoder_hidden_states=_embeds(2, 0))
    s = DDIMScheduler()
    s.set_timesteps(10)
    mm.scheduler = s
    k = float(s.timesteps[2])
    t, span = mm.time_and_span(k)
    assert mm.probabilities_at(k) == pytest.approx([min(1, 5.0 * span), min(1, 2.0 * span)])
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        mm.probabilities_at(k + 3)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_named(unet_ladder, dit_ladder):
    with pytest.raises(TypeError, match="one family"):
        MultilevelModel(
            [
                UNet2DModel(
                    sample_size=8,
                    block_out_channels=(4, 8),
                    norm_num_groups=2,
                    down_block_types=("DownBlock2D",) * 2,
                    up_block_types=("UpBlock2D",) * 2,
                ),
                unet_ladder[-1],
            ]
        )
    with pytest.raises(TypeError, match="list of denoisers"):
        MultilevelModel(unet_ladder[-1])
    with pytest.raises(ValueError, match=r"probabilities\[1\] \(level 3\).*\[0, 1\]"):
        MultilevelModel(unet_ladder, probabilities=[0.5, 1.5])
    with pytest.raises(ValueError, match="expected 2 values"):
        MultilevelModel(unet_ladder, probabilities=[0.5])
    with pytest.raises(ValueError, match="at most one"):
        MultilevelModel(unet_ladder, probabilities=[0.5, 0.5], rates=[1.0, 1.0])
    with pytest.raises(ValueError, match="rates.*finite rate"):
        MultilevelModel(unet_ladder, rates=[1.0, -1.0])
    with pytest.raises(ValueError, match="prediction types disagree.*level 3: v_prediction"):
        MultilevelModel(unet_ladder, prediction_types=["epsilon", "epsilon", "v_prediction"])
    with pytest.raises(ValueError, match="pair_guidance"):
        MultilevelModel(unet_ladder, pair_guidance="yes")
    mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"encoder_hidden_states: first dimension 3 matches neither the batch \(2\)"):
        mm(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=_embeds(3, 0))
    with pytest.raises(ValueError, match="one timestep per call"):
        mm(torch.randn(2, 4, 8, 8), torch.tensor([500, 400]), encoder_hidden_states=_embeds(2, 0))
    with pytest.raises(ValueError, match="one generator per sample"):
        MultilevelModel(unet_ladder, probabilities=[0.5, 0.5], generator=[torch.Generator()] * 3)(
            torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=_embeds(2, 0)
        )
    # output shapes differ (learned sigma vs not): refused on the first call, naming the level
    with pytest.raises(ValueError, match=r"config.out_channels differs between levels \(level 1: 4, level 2: 8\)"):
        MultilevelModel([_dit(1, 1, 1, out_channels=4), dit_ladder[-1]], probabilities=[0.5])
    # callables without configs: the output shapes are compared on the first call
    mixed = MultilevelModel([lambda x, t: x.flatten(1), lambda x, t: x], costs=[1, 2], probabilities=[0.5])
    with pytest.raises(ValueError, match=r"level 2 .* returns \(4, 8, 8\) per row but level 1 .* returns \(256,\)"):
        mixed(torch.randn(2, 4, 8, 8), 500)
    # the models must be cheapest first when costs are measured
    wrong = MultilevelModel([unet_ladder[2], unet_ladder[0]], probabilities=[0.5])
    with pytest.raises(ValueError, match="cheapest first"):
        wrong(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=_embeds(2, 0))
    with pytest.raises(ValueError, match="calibrate"):
        MultilevelModel(unet_ladder).plan(budget=2.0)


def test_nan_from_a_level_is_an_error_naming_it(unet_ladder):
    class Wrapped(torch.nn.Module):
        def __init__(self, inner, nan):
            super().__init__()
            self.inner, self.nan = inner, nan

        def forward(self, *a, **k):
            out = self.inner(*a, **k).sample
            return (out * float("nan"),) if self.nan else (out,)

    models = [Wrapped(m, nan=j == 2) for j, m in enumerate(unet_ladder)]
    mm = MultilevelModel(models, costs=[1, 2, 4], probabilities=[1.0, 1.0], names=["small", "mid", "big"])
    with pytest.raises(FloatingPointError, match=r"level 3 \(big\)"):
        with torch.no_grad():
            mm(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=_embeds(2, 0))


def _unet_sdxl(width: int, seed: int) -> UNet2DConditionModel:
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
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,
    ).eval()


def test_sdxl_pipeline_with_added_cond_kwargs():
    """Stock StableDiffusionXLPipeline (added_cond_kwargs text_embeds / time_ids sliced by row; the pipeline
    reads unet.add_embedding through the model): p = 1 equals the top UNet; p < 1 stays finite and cheaper."""
    from diffusers import StableDiffusionXLPipeline

    ladder = [_unet_sdxl(4, 1), _unet_sdxl(8, 2), _unet_sdxl(16, 3)]
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=ladder[-1],
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    kw = dict(
        prompt_embeds=torch.randn(2, 4, 16, generator=g),
        negative_prompt_embeds=torch.randn(2, 4, 16, generator=g),
        pooled_prompt_embeds=torch.randn(2, 8, generator=g),
        negative_pooled_prompt_embeds=torch.randn(2, 8, generator=g),
        num_inference_steps=4,
        guidance_scale=5.0,
        height=8,
        width=8,
        output_type="np",
    )
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.unet = MultilevelModel(ladder, probabilities=[1.0, 1.0])
    out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    pipe.unet = MultilevelModel(ladder, probabilities=[0.5, 0.2], generator=torch.Generator().manual_seed(1))
    out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert np.isfinite(out).all() and pipe.unet.report()["top_equivalents_per_image"] < 4
