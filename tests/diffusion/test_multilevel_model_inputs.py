"""MultilevelModel's inputs (issue 20): gradients through the first call, levels that modify their inputs or
disagree on dtype, unset scheduler timesteps, models and probabilities as other containers, guidance-pair
detection, sample sizes, plans that save nothing, and the messages of a few misuses.

Tiny models built from configs (no downloads); fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from conftest import tiny_dit as _dit  # noqa: E402
from conftest import tiny_sd_pipeline, tiny_vae  # noqa: E402
from conftest import tiny_unet as _unet  # noqa: E402
from conftest import tiny_unet2d_condition as _unet_cond  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PNDMScheduler,
)

from multilevel_em.diffusion import MultilevelDenoiser, MultilevelModel  # noqa: E402


@pytest.fixture(scope="module")
def unet_ladder():
    return [_unet_cond(4, 1), _unet_cond(8, 2), _unet_cond(16, 3)]


@pytest.fixture(scope="module")
def dit_ladder():
    return [_dit(1, 1, 1), _dit(1, 2, 2), _dit(2, 2, 3)]


def _embeds(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, 16, generator=torch.Generator().manual_seed(seed))


def _latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


_vae = tiny_vae


_sd_pipe = tiny_sd_pipeline


def _sd_kw(**kw):
    base = dict(
        prompt_embeds=_embeds(2, 0),
        negative_prompt_embeds=_embeds(2, 1),
        num_inference_steps=3,
        guidance_scale=5.0,
        height=8,
        width=8,
        output_type="latent",
    )
    base.update(kw)
    return base


class _Wrap(torch.nn.Module):
    """A UNet2DConditionModel that misbehaves on demand: modifies an input in place, casts its output, or changes
    its output from call ``after`` on (the same class at every level, so that the ladder is one family)."""

    def __init__(self, unet, *, in_place=None, dtype=None, after=0, shape_change=False):
        super().__init__()
        self.unet, self.in_place, self.cast, self.after, self.shape_change = unet, in_place, dtype, after, shape_change
        self.calls = 0

    @property
    def config(self):  # what a pipeline reads (through MultilevelModel.config: the top level's)
        return self.unet.config

    def forward(self, sample, timestep, **kw):
        self.calls += 1
        late = self.calls > self.after
        kw.pop("return_dict", None)  # always (out,)
        if late and self.in_place == "sample":
            sample.mul_(1.0)
        if late and self.in_place == "encoder_hidden_states":
            kw["encoder_hidden_states"].add_(0.0)
        out = self.unet(sample, timestep, **kw).sample
        if late and self.cast is not None:
            out = out.to(self.cast)
        if late and self.shape_change:
            out = out[:, :2]
        return (out,)


# ----------------------------------------------------------------------------- item 3: gradients


@pytest.mark.parametrize("costs", [None, [1.0, 2.0, 4.0]])
def test_gradient_guidance_works_from_the_first_call(unet_ladder, costs):
    """The first call's FLOP probe ran on the non-detached sample ("Expected gradient function to be set"), even
    with costs given.  With every p = 1 the estimate is the top model's output, and so is its gradient."""
    x = _latents(2).requires_grad_()
    emb = _embeds(2, 3)
    mm = MultilevelModel(unet_ladder, costs=costs, probabilities=[1.0, 1.0], generator=torch.Generator().manual_seed(0))
    out = mm(x, 500, encoder_hidden_states=emb).sample
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out.pow(2).sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(unet_ladder[-1](x_ref, 500, encoder_hidden_states=emb).sample.pow(2).sum(), x_ref)
    torch.testing.assert_close(grad, ref, atol=1e-4, rtol=1e-4)
    assert mm.costs is not None and all(c > 0 for c in mm.costs)


def test_gradients_flow_through_the_rows_that_ran_a_level(unet_ladder):
    """p < 1, per-image draws: the rows run different levels; every row's gradient is finite and nonzero, and it
    is the gradient of that row's own combination of levels."""
    x = _latents(6, 1).requires_grad_()
    emb = _embeds(6, 4)
    mm = MultilevelModel(
        unet_ladder, probabilities=[0.5, 0.5], pair_guidance=False, generator=torch.Generator().manual_seed(3)
    )
    out = mm(x, 300, encoder_hidden_states=emb, return_dict=False)[0]
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()
    assert 0 < mm.evaluations[2] < 6  # some rows ran the top level, some did not


def test_gradient_guidance_in_a_pipeline_loop(unet_ladder):
    """A guidance step as a user writes it: grad of a loss on the output w.r.t. the latents, at every call."""
    s = DDIMScheduler()
    s.set_timesteps(3)
    mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.5], generator=torch.Generator().manual_seed(1))
    x = _latents(2, 5)
    emb = _embeds(2, 6)
    for t in s.timesteps:
        xg = x.detach().requires_grad_()
        eps = mm(xg, t, encoder_hidden_states=emb).sample
        (g,) = torch.autograd.grad(eps.pow(2).mean(), xg)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        x = s.step(eps.detach() + 0.1 * g, t, x).prev_sample
    assert torch.isfinite(x).all()


# ----------------------------------------------------------------------------- item 8: levels modifying their inputs


@pytest.mark.parametrize("what", ["sample", "encoder_hidden_states"])
@pytest.mark.parametrize("after", [0, 1])  # in the first-call probe, or at a later call
def test_a_level_that_modifies_its_input_in_place_is_named(unet_ladder, what, after):
    levels = [_Wrap(unet_ladder[0]), _Wrap(unet_ladder[1], in_place=what, after=after), _Wrap(unet_ladder[2])]
    mm = MultilevelModel(levels, probabilities=[1.0, 1.0], names=["s", "m", "l"])
    x, emb = _latents(2), _embeds(2, 1)
    with pytest.raises(ValueError, match=rf"level 2 \(m\) modified its input .*{what}.* in place at timestep 500"):
        for _ in range(2):
            mm(x, 500, encoder_hidden_states=emb)


def test_a_level_that_modifies_the_latents_is_named_inside_a_stock_pipeline(unet_ladder):
    levels = [_Wrap(unet_ladder[0], in_place="sample", after=1), _Wrap(unet_ladder[1]), _Wrap(unet_ladder[2])]
    pipe = _sd_pipe(unet_ladder[-1], DDIMScheduler())
    pipe.unet = MultilevelModel(levels, probabilities=[0.5, 0.5], costs=[1, 2, 4])
    with pytest.raises(ValueError, match=r"level 1 \(_Wrap\) modified its input sample in place"):
        pipe(generator=torch.Generator().manual_seed(0), **_sd_kw())


# ----------------------------------------------------------------------------- item 14: dtypes


def test_levels_returning_different_dtypes_are_refused_at_the_first_call(unet_ladder):
    levels = [_Wrap(unet_ladder[0]), _Wrap(unet_ladder[1], dtype=torch.float64), _Wrap(unet_ladder[2])]
    mm = MultilevelModel(levels, probabilities=[0.5, 0.5], names=["s", "m", "l"])
    with pytest.raises(TypeError, match=r"level 2 \(m\) returns torch.float64 on cpu but level 1 \(s\) returns "):
        mm(_latents(2), 500, encoder_hidden_states=_embeds(2, 1))


def test_a_level_whose_dtype_or_shape_changes_later_is_named(unet_ladder):
    for change, err, match in (
        (dict(dtype=torch.float64), TypeError, r"level 3 \(l\): output dtype/device torch.float64/cpu differs"),
        (dict(shape_change=True), ValueError, r"level 3 \(l\): output per row \(2, 8, 8\) differs"),
    ):
        levels = [_Wrap(unet_ladder[0]), _Wrap(unet_ladder[1]), _Wrap(unet_ladder[2], after=2, **change)]
        mm = MultilevelModel(levels, probabilities=[1.0, 1.0], names=["s", "m", "l"])
        mm(_latents(2), 500, encoder_hidden_states=_embeds(2, 1))  # probe and first call: fine
        with pytest.raises(err, match=match):
            mm(_latents(2), 400, encoder_hidden_states=_embeds(2, 1))


def test_multilevel_denoiser_names_a_level_whose_shape_changes_later():
    calls = []

    def late(x, t):
        calls.append(1)
        return -x if len(calls) < 3 else -x[:, :1]

    den = MultilevelDenoiser([lambda x, t: -x, late], costs=[1, 2], rates=[1e6], names=["a", "b"])
    den.set_step(0.1)
    den(torch.ones(3, 2), 0.5)
    with pytest.raises(ValueError, match=r"level 2 \(b\): output shape \(3, 1\) differs from the state's"):
        den(torch.ones(3, 2), 0.4)


# ----------------------------------------------------------------------------- item 15: unset timesteps


def test_a_scheduler_whose_timesteps_are_unset_is_named(unet_ladder):
    """PNDMScheduler (Stable Diffusion 1.x's default) has timesteps None before set_timesteps."""
    mm = MultilevelModel(unet_ladder, rates=[5.0, 2.0], scheduler=PNDMScheduler())
    with pytest.raises(ValueError, match=r"scheduler: the timesteps of PNDMScheduler are not set; .*set_timesteps"):
        mm(_latents(2), 500, encoder_hidden_states=_embeds(2, 1))
    s = DDIMScheduler()
    s.timesteps = "999, 500"
    mm.scheduler = s
    with pytest.raises(ValueError, match=r"scheduler: DDIMScheduler.timesteps is '999, 500', not a sequence of"):
        mm(_latents(2), 500, encoder_hidden_states=_embeds(2, 1))
    with pytest.raises(ValueError, match="not a sequence of numbers"):  # calibrate's up-front check
        mm.calibrate(lambda: None)


def test_calibrate_on_a_pndm_pipeline_whose_timesteps_the_pipeline_sets(unet_ladder):
    """Unset timesteps are fine at calibrate(): the pipeline sets them inside run(); then plan() and a run."""
    pipe = _sd_pipe(unet_ladder[-1], PNDMScheduler(skip_prk_steps=True))
    mm = MultilevelModel(unet_ladder, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(0))
    pipe.unet = mm
    assert pipe.scheduler.timesteps is None
    cal = mm.calibrate(lambda: pipe(generator=torch.Generator().manual_seed(0), **_sd_kw(num_inference_steps=4)))
    assert len(cal.times) >= 4
    mm.plan(budget=2.5)
    out = pipe(generator=torch.Generator().manual_seed(1), **_sd_kw(num_inference_steps=4)).images
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- items 18, 19: containers


def test_models_as_a_module_list_or_a_generator(unet_ladder):
    x, emb = _latents(3), _embeds(3, 1)
    outs = []
    for models in (list(unet_ladder), torch.nn.ModuleList(unet_ladder), (m for m in unet_ladder), tuple(unet_ladder)):
        mm = MultilevelModel(models, probabilities=[0.5, 0.5], generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            outs.append(mm(x, 500, encoder_hidden_states=emb).sample)
        assert len(mm.models) == 3
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    for bad, match in (
        (unet_ladder[0], "got a single UNet2DConditionModel; wrap it as"),
        (torch.nn.Sequential(*unet_ladder), "got a single Sequential"),
        ({"a": unet_ladder[0]}, "got a dict"),
        (3, "got int"),
    ):
        with pytest.raises(TypeError, match=match):
            MultilevelModel(bad)


def test_probabilities_and_rates_as_tensors_or_arrays(unet_ladder):
    x, emb = _latents(3), _embeds(3, 1)
    outs = []
    for p in (
        [0.5, 0.25],
        torch.tensor([0.5, 0.25]),
        np.array([0.5, 0.25]),
        torch.tensor([0.5, 0.25], dtype=torch.float64),
    ):
        mm = MultilevelModel(unet_ladder, probabilities=p, generator=torch.Generator().manual_seed(2))
        assert mm.probabilities_at(500) == [0.5, 0.25]
        with torch.no_grad():
            outs.append(mm(x, 500, encoder_hidden_states=emb).sample)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    mm = MultilevelModel(unet_ladder, rates=torch.tensor([5.0, 2.0]), scheduler=DDIMScheduler())
    assert mm.rates == [5.0, 2.0]
    for bad, err, match in (
        (torch.tensor(0.5), TypeError, "got one value"),
        (np.float64(0.5), TypeError, "got one value"),
        (torch.ones(2, 2), ValueError, r"got an array of shape \(2, 2\)"),
        (torch.tensor([0.5]), ValueError, "expected 2 values"),
        ("0.5", TypeError, "got one value"),
    ):
        with pytest.raises(err, match=match):
            MultilevelModel(unet_ladder, probabilities=bad)


# ----------------------------------------------------------------------------- items 20, 21: guidance pairs


def test_copies_of_one_latent_without_guidance_and_a_generator_per_image(unet_ladder):
    """Item 20: identical latents, no guidance, one generator per image was taken for a guidance pair
    ("expected one generator per sample (1), got 2"); now each image draws from its own generator."""
    x = _latents(1).repeat(2, 1, 1, 1)
    for emb in (_embeds(1, 1).repeat(2, 1, 1), _embeds(2, 1)):  # the same prompt, or two prompts
        gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
        mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.5], generator=gens)
        with torch.no_grad():
            both = mm(x, 500, encoder_hidden_states=emb).sample
            mm.generator = [torch.Generator().manual_seed(11)]
            second = mm(x[1:], 500, encoder_hidden_states=emb[1:]).sample
        torch.testing.assert_close(second[0], both[1], atol=1e-5, rtol=1e-5)  # image 1's draws are its own


def test_copies_of_one_latent_draw_row_by_row(unet_ladder):
    """Item 21: copies of one latent with the same conditioning (a variance study) shared their draws under
    "auto", so half the draws; now they draw as with pair_guidance=False (the same numbers)."""
    n = 16
    x = _latents(1).repeat(n, 1, 1, 1)
    emb = _embeds(1, 2).repeat(n, 1, 1)
    outs = {}
    for pairing in ("auto", False):
        mm = MultilevelModel(
            unet_ladder, probabilities=[0.5, 0.5], pair_guidance=pairing, generator=torch.Generator().manual_seed(4)
        )
        with torch.no_grad():
            outs[pairing] = mm(x, 500, encoder_hidden_states=emb).sample
    assert torch.equal(outs["auto"], outs[False])
    assert not torch.equal(outs["auto"][: n // 2], outs["auto"][n // 2 :])
    # an unconditional ladder's copies too (no conditioning: nothing for guidance to differ in)
    unc = [_unet(4, 1, channels=4), _unet(8, 2, channels=4)]
    mm = MultilevelModel(unc, probabilities=[0.5], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        o = mm(x, 500).sample
    assert not torch.equal(o[: n // 2], o[n // 2 :])


def test_classifier_free_guidance_is_still_paired(unet_ladder, dit_ladder):
    """A stock guided pipeline (Stable Diffusion: prompt embeddings; DiT: class labels) still pairs its halves
    under "auto": the same numbers as pair_guidance=True; per-image generators (one per image) too."""
    for gens in (lambda: torch.Generator().manual_seed(1), lambda: [torch.Generator().manual_seed(i) for i in (1, 2)]):
        images = {}
        for pairing in ("auto", True) if isinstance(gens(), list) else ("auto", True, False):
            pipe = _sd_pipe(unet_ladder[-1], DDIMScheduler())
            pipe.unet = MultilevelModel(unet_ladder, probabilities=[0.4, 0.3], pair_guidance=pairing, generator=gens())
            images[pairing] = pipe(generator=torch.Generator().manual_seed(0), **_sd_kw()).images
        assert torch.equal(images["auto"], images[True])
        assert False not in images or not torch.equal(images["auto"], images[False])
    images = {}
    for pairing in ("auto", True):
        pipe = DiTPipeline(transformer=dit_ladder[-1], vae=_vae(), scheduler=DDIMScheduler())
        pipe.set_progress_bar_config(disable=True)
        pipe.transformer = MultilevelModel(
            dit_ladder, probabilities=[0.5, 0.5], pair_guidance=pairing, generator=torch.Generator().manual_seed(1)
        )
        kw = dict(class_labels=[1, 7], num_inference_steps=3, guidance_scale=4.0, output_type="latent")
        images[pairing] = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_array_equal(np.asarray(images["auto"]), np.asarray(images[True]))


# ----------------------------------------------------------------------------- item 24: sample sizes


def test_a_dit_built_for_another_sample_size_is_refused(dit_ladder):
    torch.manual_seed(0)
    big = DiTTransformer2DModel(
        sample_size=16,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=1,
        in_channels=4,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
    with pytest.raises(ValueError, match=r"config.sample_size differs between levels \(level 1: 16, level 2: 8"):
        MultilevelModel([big, dit_ladder[1], dit_ladder[2]])
    # the same with UNets (the pipeline sizes its latents from the top model's sample_size)
    with pytest.raises(ValueError, match="config.sample_size differs"):
        MultilevelModel([_unet(4, 1, size=16), _unet(8, 2, size=8)])


# ----------------------------------------------------------------------------- item 27: plans that save nothing


def test_a_plan_that_runs_every_level_at_every_call_says_so(dit_ladder):
    pipe = DiTPipeline(transformer=dit_ladder[-1], vae=_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    mm = MultilevelModel(dit_ladder, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(0))
    pipe.transformer = mm
    kw = dict(num_inference_steps=4, guidance_scale=4.0, output_type="latent")
    mm.calibrate(lambda: pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), **kw))
    every = 4 * sum(mm.costs) / mm.costs[-1]  # every level at each of the 4 calls
    plan = mm.plan(budget=every * 2)
    assert np.all(plan.probabilities == 1.0) and plan.top_equivalents == pytest.approx(every)
    assert "top model alone; nothing" not in plan.message
    assert "every level runs at every call" in plan.message and "more than the top model alone (4)" in plan.message
    assert f"{100 * (every / 4 - 1):.0f}% more" in plan.message and "nothing is saved" in plan.message
    mm.reset()
    pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(1), **kw)
    assert mm.report()["top_equivalents_per_image"] == pytest.approx(every)  # what the message says is spent
    cheap = mm.plan(budget=2.0)
    assert "nothing is saved" not in cheap.message


# ----------------------------------------------------------------------------- item 28: misuse messages


def test_an_empty_batch_is_named(unet_ladder):
    mm = MultilevelModel(unet_ladder, probabilities=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"sample: got an empty batch \(shape \(0, 4, 8, 8\)\)"):
        mm(torch.zeros(0, 4, 8, 8), 500, encoder_hidden_states=_embeds(0, 1))
    with pytest.raises(TypeError, match="got a 0-dim tensor"):
        mm(torch.tensor(1.0), 500)


def test_calibrate_inside_its_own_run_is_named(dit_ladder):
    pipe = DiTPipeline(transformer=dit_ladder[-1], vae=_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    mm = MultilevelModel(dit_ladder, scheduler=pipe.scheduler, probabilities=[0.5, 0.5])
    pipe.transformer = mm
    run = lambda: pipe(class_labels=[1], num_inference_steps=2, output_type="latent")
    with pytest.raises(RuntimeError, match="calibrate: this model is already calibrating"):
        mm.calibrate(lambda: mm.calibrate(run))
    assert mm._recording is None
    mm.calibrate(run)  # and it still calibrates afterwards
    other = MultilevelModel(dit_ladder, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="run\\(\\) never called this model"):
        other.calibrate(run)
