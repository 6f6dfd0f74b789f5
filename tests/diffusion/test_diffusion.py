"""Tests of multilevel_em.diffusion (the exact-eps problems: tests/problems/test_gaussian.py).

Fixed seeds throughout; each statistical check states its tolerance (a number of standard
errors, or a bound with the reason for it).  Tiny diffusers UNets are built from configs:
nothing is downloaded.
"""

from __future__ import annotations

import inspect
import json
import math
import re

import pytest
import torch
from conftest import F64, assert_moments, rms, tiny_unet

from multilevel_em import BrownianPath, Ladder
from multilevel_em.diffusion import (
    SAMPLERS,
    DiffusersUNetAdapter,
    MultilevelDenoiser,
    TStitchDenoiser,
    VPSchedule,
    mmd2_unbiased,
    sample,
    sliced_wasserstein,
)
from multilevel_em.problems import GaussianProblem, gaussian, gaussian_mixture, perturbed_ladder

diffusers = pytest.importorskip("diffusers")
# diffusers' DPMSolverMultistepScheduler calls np.array on a tensor in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LINEAR, COSINE = VPSchedule.linear(), VPSchedule.cosine()
# (sampler, extra options): every sampler, DDIM both deterministic and stochastic.
SAMPLER_CASES = [
    ("em", {}),
    ("ddpm", {}),
    ("ddim", {}),
    ("ddim", {"eta": 0.5}),
    ("euler_ode", {}),
    ("dpmpp_2m", {}),
    ("dpmpp_sde", {}),
    ("unipc", {}),
]
SAMPLER_IDS = ["em", "ddpm", "ddim", "ddim-eta0.5", "euler_ode", "dpmpp_2m", "dpmpp_sde", "unipc"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_schedule_matches_diffusers_alphas_cumprod(schedule):
    ac = diffusers.DDPMScheduler(**schedule.diffusers_config()).alphas_cumprod.to(F64)
    k = torch.arange(schedule.num_train_timesteps)
    ab = schedule.alpha_bar(schedule.time(k))
    if schedule.kind == "cosine":
        # Same formula and the same cap on the last beta: float32 rounding of diffusers' table only.
        assert float(((ab - ac) / ac).abs().max()) < 1e-4
    else:
        # The continuous VP-SDE misses the O(beta^2 / T) term of log(1 - beta_k): measured 8.1e-4 and 1.3e-3.
        assert float((ab - ac).abs().max()) < 1e-3
        assert float((schedule.sigma(schedule.time(k)) - (1 - ac).sqrt()).abs().max()) < 2e-3
    assert VPSchedule.from_diffusers(diffusers.DDIMScheduler(**schedule.diffusers_config())) == schedule


def test_schedule_dict_round_trips_and_bad_dicts_are_named():
    for s in (LINEAR, COSINE, VPSchedule.linear(0.2, 10.0, 500), VPSchedule.cosine(0.01, 200, 0.99)):
        d = s.to_dict()
        assert set(d) == {"kind", "beta_min", "beta_max", "s", "num_train_timesteps", "t_max"}
        assert VPSchedule.from_dict(d) == s and VPSchedule.from_dict(json.loads(json.dumps(d))) == s
    # The dict every ladder file so far holds (shipped digits ladder, `mlem train-mlp` configs).
    old = {"kind": "linear", "beta_min": 0.1, "beta_max": 20.0, "s": 0.008, "num_train_timesteps": 1000, "t_max": 1.0}
    assert VPSchedule.from_dict(old) == LINEAR
    assert (
        VPSchedule.from_dict({"kind": "linear", "beta_min": 0.1, "beta_max": 20, "num_train_timesteps": 1000}) == LINEAR
    )
    for bad, what in (
        (None, "expected a schedule dict"),
        ({}, "kind"),
        ({"kind": "quadratic"}, "quadratic"),
        ({"kind": "linear", "beta_min": 0.1}, "beta_max"),
        (dict(old, beta_min=30.0), "beta_min, beta_max"),
        (dict(old, num_train_timesteps=1000.0), "num_train_timesteps"),
        (dict(COSINE.to_dict(), s=-1.0), "s: expected a positive offset"),
        (dict(COSINE.to_dict(), t_max=2.0), "t_max"),
        (dict(old, beta_max="20"), "beta_max"),
    ):
        with pytest.raises(ValueError, match=r"^ladder\.json: \"schedule\": .*" + re.escape(what)):
            VPSchedule.from_dict(bad, 'ladder.json: "schedule"')


def test_timestep_conversion_round_trips():
    for schedule in (LINEAR, VPSchedule.linear(num_train_timesteps=50)):
        T = schedule.num_train_timesteps
        k = torch.arange(T)
        assert torch.equal(schedule.timestep(schedule.time(k)), k)
        assert torch.allclose(schedule.time(k), (k + 1).double() / T)
        assert int(schedule.timestep(1.0)) == T - 1 and int(schedule.timestep(0.0)) == 0
        # Times between grid points go to the nearest one.
        assert torch.equal(schedule.timestep(schedule.time(k) + 0.4 / T), k)


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_beta_is_minus_derivative_of_log_alpha_bar(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    e = 1e-6
    fd = -(schedule.log_alpha_bar(t + e) - schedule.log_alpha_bar(t - e)) / (2 * e)
    torch.testing.assert_close(fd, schedule.beta(t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))


def test_conversions_and_drifts():
    s = LINEAR
    g = gen(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0], dtype=F64)  # one time per row
    x = s.add_noise(x0, eps, t)
    torch.testing.assert_close(s.x0_to_eps(x0, x, t), eps)
    torch.testing.assert_close(s.eps_to_x0(eps, x, t), x0)
    torch.testing.assert_close(s.score_to_eps(s.eps_to_score(eps, t), t), eps)
    b = s.beta(t)[:, None]
    score = s.eps_to_score(eps, t)
    # f - g^2 score and f - g^2/2 score with f = -beta/2 x, g^2 = beta.
    torch.testing.assert_close(s.reverse_sde_drift(x, t, eps), -0.5 * b * x - b * score)
    torch.testing.assert_close(s.probability_flow_drift(x, t, eps), -0.5 * b * x - 0.5 * b * score)
    torch.testing.assert_close(s.eps_to_score(eps, 0.3), -eps / float(s.sigma(0.3)))


def test_probability_flow_drift_moves_along_the_exact_flow():
    """d/dt of the exact ODE flow map equals the probability-flow drift with the exact eps."""
    for schedule in (LINEAR, COSINE):
        P = gaussian(3, schedule=schedule, seed=1)
        x1 = torch.randn(4, 3, generator=gen(1), dtype=F64)
        for t in (0.2, 0.7):
            e = 1e-6
            xt = P.ode_flow(x1, 1.0, t)
            fd = (P.ode_flow(x1, 1.0, t + e) - P.ode_flow(x1, 1.0, t - e)) / (2 * e)
            torch.testing.assert_close(fd, schedule.probability_flow_drift(xt, t, P.eps), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- samplers against exact answers


@pytest.mark.parametrize("sampler", ["euler_ode", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_ode_samplers_converge_to_the_exact_flow(sampler, schedule):
    P = gaussian(4, schedule=schedule, seed=6)
    x_T = torch.randn(256, 4, generator=gen(7), dtype=F64)
    if sampler == "euler_ode":
        ref = P.ode_flow(x_T, schedule.t_max, 1e-3)
    else:
        ref = P.ode_flow(x_T, 1.0, 0.0)  # diffusers' grids start at t = 1 and end at the clean sample
    errs = [rms(sample(P.eps, x_T, schedule=schedule, steps=n, sampler=sampler).x, ref) for n in (20, 200)]
    # First-order methods gain 10x from 10x more steps; the linear schedule's scheduler samplers
    # hit a floor of about 2e-3 (continuous vs discrete alpha_bar, see the schedule test).
    floor = 3e-3 if (schedule.kind == "linear" and sampler != "euler_ode") else 0.0
    assert errs[1] < 0.02 and errs[1] < errs[0] / 5 + floor, errs


@pytest.mark.parametrize(
    "sampler,opts", [("em", {}), ("ddpm", {}), ("ddim", {"eta": 1.0})], ids=["em", "ddpm", "ddim-eta1"]
)
def test_sde_samplers_reproduce_gaussian_data(sampler, opts):
    P = gaussian(3, seed=7)
    x_T = torch.randn(4000, 3, generator=gen(8), dtype=F64)
    out = sample(P.eps, x_T, schedule=LINEAR, steps=250, sampler=sampler, generator=gen(9), **opts)
    # 5 standard errors plus 0.02 for the time discretisation (O(1/steps)) and the schedule mismatch.
    assert_moments(out.x, P.mean, P.cov, bias=0.02)
    assert out.top_equivalents == 250 and out.evaluations == (250 * 4000,)


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps", [("em", 300), ("dpmpp_2m", 50)])
def test_samplers_on_a_mixture_match_exact_samples(sampler, steps):
    M = gaussian_mixture(2, 4, seed=8)  # 4 modes on the unit circle, std 0.1-0.2
    data = M.sample(2000, generator=gen(10))
    x_T = torch.randn(2000, 2, generator=gen(12), dtype=F64)
    out = sample(M.eps, x_T, schedule=LINEAR, steps=steps, sampler=sampler, generator=gen(13))
    # Sets of 2000: MMD^2 (bandwidth 0.3) of a good sampler to exact samples stayed within
    # 3e-3 over 16 seeds (bias of the linear schedule's mismatch: 2e-4), noise x_T is at 0.2;
    # SW of a good sampler stayed below 0.16, noise is at 0.55.
    assert abs(mmd2_unbiased(out.x, data, bandwidth=0.3)) < 4e-3
    assert mmd2_unbiased(x_T, data, bandwidth=0.3) > 0.1
    assert sliced_wasserstein(out.x, data, projections=512, generator=gen(0)) < 0.25


# ----------------------------------------------------------------------------- our loops are diffusers' loops


def _diffusers_loop(unet, scheduler, x, steps, generator, **step_kwargs):
    scheduler.set_timesteps(steps)
    for k in scheduler.timesteps:
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs = dict(step_kwargs, generator=generator)
        x = scheduler.step(unet(x, k).sample, k, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize(
    "sampler,cls,config,step_kwargs",
    [
        ("ddpm", "DDPMScheduler", {"clip_sample": False}, {}),
        ("ddim", "DDIMScheduler", {"clip_sample": False}, {}),
        ("ddim", "DDIMScheduler", {"clip_sample": False}, {"eta": 0.7}),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}),
        ("dpmpp_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, {}),
        ("unipc", "UniPCMultistepScheduler", {"predict_x0": True, "solver_order": 2, "solver_type": "bh2"}, {}),
    ],
    ids=["ddpm", "ddim", "ddim-eta0.7", "dpmpp_2m", "dpmpp_sde", "unipc"],
)
@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_scheduler_samplers_match_diffusers_loops(sampler, cls, config, step_kwargs, schedule):
    unet = tiny_unet(8, seed=1)
    x_T = torch.randn(3, 1, 8, 8, generator=gen(14))
    scheduler = getattr(diffusers, cls)(**schedule.diffusers_config(), timestep_spacing="trailing", **config)
    ref = _diffusers_loop(unet, scheduler, x_T, 12, gen(15), **step_kwargs)
    out = sample(unet, x_T, schedule=schedule, steps=12, sampler=sampler, generator=gen(15), **step_kwargs)
    torch.testing.assert_close(out.x, ref, rtol=1e-5, atol=1e-5)
    assert out.steps == 12 and out.top_equivalents == 12
    torch.testing.assert_close(out.times, schedule.time(scheduler.timesteps))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scheduler_samplers_match_diffusers_pipelines(sampler):
    """DDPMPipeline / DDIMPipeline (default "leading" spacing) on the same generator: same images."""
    unet = tiny_unet(8, seed=2)
    cls = diffusers.DDPMScheduler if sampler == "ddpm" else diffusers.DDIMScheduler
    pipe_cls = diffusers.DDPMPipeline if sampler == "ddpm" else diffusers.DDIMPipeline
    pipe = pipe_cls(unet=unet, scheduler=cls(**LINEAR.diffusers_config(), clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"eta": 0.3} if sampler == "ddim" else {}
    images = pipe(batch_size=2, generator=gen(16), num_inference_steps=10, output_type="pt", **kwargs).images
    g = gen(16)
    x_T = diffusers.utils.torch_utils.randn_tensor((2, 1, 8, 8), generator=g)
    out = sample(
        unet,
        x_T,
        schedule=LINEAR,
        steps=10,
        sampler=sampler,
        generator=g,
        scheduler_config={"timestep_spacing": "leading"},
        **kwargs,
    )
    torch.testing.assert_close((out.x / 2 + 0.5).clamp(0, 1), images, rtol=1e-5, atol=1e-5)


def test_adapter_maps_continuous_time_to_integer_timesteps():
    unet = tiny_unet(4, seed=3)
    adapter = DiffusersUNetAdapter(unet, LINEAR)
    x = torch.randn(3, 1, 8, 8, generator=gen(17))
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, 0.5), unet(x, 499).sample)
        t = torch.tensor([0.001, 0.5, 1.0])
        ref = torch.cat([unet(x[i : i + 1], k).sample for i, k in enumerate([0, 499, 999])])
        torch.testing.assert_close(adapter(x, t), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the multilevel denoiser


@pytest.mark.parametrize("draws", ["per_sample", "shared"])
@pytest.mark.parametrize("sampler,opts", SAMPLER_CASES, ids=SAMPLER_IDS)
def test_degenerate_multilevel_denoiser_reproduces_the_single_model(sampler, opts, draws):
    """One model, or every probability 1: the same samples as the plain model on the same noise."""
    P = gaussian(4, seed=9)
    ladder = perturbed_ladder(P.eps, 4, levels=3, seed=9)
    x_T = torch.randn(16, 4, generator=gen(18), dtype=F64)

    def run(denoiser):
        return sample(denoiser, x_T, schedule=LINEAR, steps=15, sampler=sampler, generator=gen(19), **opts)

    # dpmpp_2m computes its update in float32 (diffusers upcasts to float32, not float64).
    tol = dict(rtol=1e-5, atol=1e-5) if sampler == "dpmpp_2m" else dict(rtol=1e-10, atol=1e-10)
    top = run(ladder[-1])
    one = run(MultilevelDenoiser([ladder[-1]], draws=draws))
    assert torch.equal(one.x, top.x) and one.top_equivalents == top.top_equivalents == 15
    always = MultilevelDenoiser(ladder, rates=[1e9, 1e9], draws=draws, generator=gen(20))  # p = min(1, 1e9 h) = 1
    out = run(always)
    torch.testing.assert_close(out.x, top.x, **tol)
    assert out.evaluations == (15 * 16,) * 3
    assert out.top_equivalents == pytest.approx(15 * (4 + 16 + 64) / 64)


def test_multilevel_unet_ladder_is_unbiased_for_the_top_model():
    """Per-sample draws on a 3-UNet ladder: the mean over rows is the top UNet within 5 standard errors."""
    models = [tiny_unet(w, seed=10 + w) for w in (4, 8, 16)]
    n = 4000
    den = MultilevelDenoiser(models, costs=[1, 4, 16], rates=[5.0, 2.5], schedule=LINEAR, generator=gen(21))
    den.set_step(0.1)  # p_2 = 0.5, p_3 = 0.25
    x = torch.randn(1, 1, 8, 8, generator=gen(22)).expand(n, -1, -1, -1).contiguous()
    with torch.no_grad():
        est = den(x, 0.6)
        top = models[-1](x[:1], int(LINEAR.timestep(0.6))).sample[0]
    se = est.std(0) / math.sqrt(n)
    z = (est.mean(0) - top) / se
    assert float(z.abs().max()) < 5, float(z.abs().max())
    # Cost: level 1 on every row, level 3 on the rows where B_3 fired, level 2 where B_2 or B_3 fired.
    e1, e2, e3 = den.evaluations
    assert e1 == n
    for count, p in ((e3, 0.25), (e2, 1 - 0.5 * 0.75)):
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (count, n * p)
    assert den.total_cost == e1 + 4 * e2 + 16 * e3
    den.reset()
    assert den.evaluations == (0, 0, 0) and den.total_cost == 0


@pytest.mark.slow
def test_shared_draws_are_unbiased_too():
    P = gaussian(2, seed=11)
    ladder = perturbed_ladder(P.eps, 2, levels=3, seed=11, amplitude=4.0)
    den = MultilevelDenoiser(ladder, rates=[4.0, 2.0], draws="shared", generator=gen(23))
    den.set_step(0.125)  # p = 0.5, 0.25
    x = torch.randn(1, 2, generator=gen(24), dtype=F64)
    est = torch.cat([den(x, 0.4) for _ in range(3000)])
    z = (est.mean(0) - ladder[-1](x, 0.4)[0]) / (est.std(0) / math.sqrt(3000))
    assert float(z.abs().max()) < 5
    assert den.evaluations[0] == 3000 and 500 < den.evaluations[2] < 1000  # ~750 firings of level 3


@pytest.mark.parametrize("sampler", ["euler_ode", "dpmpp_2m"])
def test_whole_trajectory_is_unbiased_for_affine_levels(sampler):
    """Levels that are exact eps of slightly different Gaussians (affine in x): the ODE samplers are
    affine recursions with independent random coefficients, so the mean final state over the
    draws equals the top model's run exactly; checked within 5 standard errors."""
    base = gaussian(3, seed=12)
    levels = [GaussianProblem(base.mean + 0.3 * 2.0**-l, base.cov * (1 + 0.2 * 2.0**-l), LINEAR).eps for l in (1, 2, 3)]
    n = 3000
    x_T = torch.randn(1, 3, generator=gen(25), dtype=F64).expand(n, -1).contiguous()
    den = MultilevelDenoiser(levels, costs=[1, 4, 16], rates=[10.0, 5.0], generator=gen(26))
    out = sample(den, x_T, schedule=LINEAR, steps=20, sampler=sampler)
    top = sample(levels[-1], x_T[:1], schedule=LINEAR, steps=20, sampler=sampler).x[0]
    z = (out.x.mean(0) - top) / (out.x.std(0) / math.sqrt(n))
    assert float(z.abs().max()) < 5, z
    assert 0 < out.top_equivalents < 20  # cheaper than 20 top-level evaluations
    expected = sum(e * c for e, c in zip(out.evaluations, (1, 4, 16))) / 16 / n
    assert out.top_equivalents == pytest.approx(expected)


def test_rates_may_be_callables_of_time():
    P = gaussian(2, seed=13)
    ladder = perturbed_ladder(P.eps, 2, levels=2, seed=13)
    seen = []
    den = MultilevelDenoiser(ladder, rates=[lambda t: seen.append(t) or 5 * t], generator=gen(27))
    out = sample(den, torch.randn(8, 2, generator=gen(28), dtype=F64), schedule=LINEAR, steps=10, sampler="euler_ode")
    assert out.evaluations[0] == 80 and 0 < out.evaluations[1] < 80
    den.set_step(0.01)
    assert den.probabilities(0.5) == [pytest.approx(5 * 0.5 * 0.01)]
    assert any(abs(t - LINEAR.t_max) < 1e-12 for t in seen)


def test_step_aware_models_are_told_the_step():
    """A model with set_step (here a MultilevelDenoiser used as one model) hears of every step."""
    P = gaussian(2, seed=18)
    inner = MultilevelDenoiser(perturbed_ladder(P.eps, 2, levels=2, seed=18), rates=[1e9], generator=gen(36))
    out = sample(inner, torch.randn(4, 2, generator=gen(37), dtype=F64), schedule=LINEAR, steps=5, sampler="ddim")
    outer = sample(
        MultilevelDenoiser([inner]),
        torch.randn(4, 2, generator=gen(37), dtype=F64),
        schedule=LINEAR,
        steps=5,
        sampler="ddim",
    )
    torch.testing.assert_close(outer.x, out.x)  # without set_step the inner denoiser would raise


# ----------------------------------------------------------------------------- T-Stitch


class _Recorder:
    """An eps model that records the times of its full-batch calls."""

    def __init__(self, f, batch):
        self.f, self.batch, self.times = f, batch, []

    def __call__(self, x, t):
        if x.shape[0] == self.batch:  # skip the one-row shape check of the first call
            self.times.append(float(t))
        return self.f(x, t)


@pytest.mark.parametrize("sampler", ["ddim", "em"])
def test_t_stitch_uses_the_small_model_for_the_first_steps(sampler):
    P = gaussian(2, seed=14)
    small, big = (_Recorder(f, 5) for f in perturbed_ladder(P.eps, 2, levels=2, seed=14))
    x_T = torch.randn(5, 2, generator=gen(29), dtype=F64)
    out = sample(None, x_T, schedule=LINEAR, steps=10, sampler=sampler, stitch=(Ladder([small, big], [1, 8]), [0.4]))
    assert len(small.times) == 4 and len(big.times) == 6
    assert min(small.times) > max(big.times)  # the small model took the noisiest steps
    assert out.evaluations == (20, 30) and out.top_equivalents == pytest.approx((4 * 1 + 6 * 8) / 8)
    # The same run through the class, with three models.
    st = TStitchDenoiser([small, big, big], [0.25, 0.25], costs=[1, 2, 8])
    assert [st.level_for_step(i, 8) for i in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]


# ----------------------------------------------------------------------------- refusals and errors


def test_clip_sample_and_thresholding_are_refused_unless_forced():
    P = GaussianProblem(torch.full((2,), 3.0, dtype=F64), 0.1 * torch.eye(2, dtype=F64), LINEAR)  # data far beyond 1
    x_T = torch.randn(4, 2, generator=gen(30), dtype=F64)
    kw = dict(schedule=LINEAR, steps=10, sampler="ddim")
    with pytest.raises(ValueError, match="clip_sample.*unbiased.*force=True"):
        sample(P.eps, x_T, clip_sample=True, **kw)
    with pytest.raises(ValueError, match="clip_sample"):
        sample(P.eps, x_T, scheduler_config={"clip_sample": True}, **kw)
    with pytest.raises(ValueError, match="thresholding"):
        sample(P.eps, x_T, thresholding=True, **{**kw, "sampler": "dpmpp_2m"})
    with pytest.raises(ValueError, match="guidance_rescale"):
        sample(P.eps, x_T, guidance_rescale=0.7, **kw)
    assert float(sample(P.eps, x_T, **kw).x.min()) > 2  # unclipped: the data sit near 3
    clipped = sample(P.eps, x_T, clip_sample=True, force=True, **kw)
    assert float(clipped.x.abs().max()) <= 1.0 + 1e-6  # the last DDIM step returns the clipped x0


def test_bad_options_are_named():
    P = gaussian(2, seed=15)
    x_T = torch.randn(4, 2, dtype=F64)
    kw = dict(schedule=LINEAR, steps=5)
    with pytest.raises(ValueError, match="sampler"):
        sample(P.eps, x_T, sampler="heun", **kw)
    with pytest.raises(TypeError, match="eta"):
        sample(P.eps, x_T, sampler="ddpm", eta=0.5, **kw)
    with pytest.raises(ValueError, match="beta_start"):
        sample(P.eps, x_T, sampler="ddim", scheduler_config={"beta_start": 0.001}, **kw)
    with pytest.raises(ValueError, match="no such setting"):
        sample(P.eps, x_T, sampler="ddim", scheduler_config={"timestep_spacin": "leading"}, **kw)
    with pytest.raises(ValueError, match="noise"):
        sample(P.eps, x_T, sampler="em", noise=BrownianPath((3, 2), 0.0, 1.0, seed=0, dtype=F64), **kw)
    with pytest.raises(ValueError, match="t_min"):
        sample(P.eps, x_T, sampler="em", t_min=0.0, **kw)
    with pytest.raises(ValueError, match="stitch"):
        sample(P.eps, x_T, sampler="em", stitch=([P.eps, P.eps], [0.5]), **kw)


def test_models_of_the_wrong_shape_are_named_on_the_first_call():
    P = gaussian(4, seed=16)
    den = MultilevelDenoiser([P.eps, lambda x, t: P.eps(x, t)[:, :2]], costs=[1, 2], rates=[1.0])
    den.set_step(0.01)  # level 2 would almost never fire: the check must not wait for it
    with pytest.raises(ValueError, match=r"level 2 .*output shape \(2,\) differs from the input shape \(4,\)"):
        den(torch.randn(3, 4, dtype=F64), 0.5)
    unets = [tiny_unet(4, seed=4), tiny_unet(4, seed=5, channels=3)]
    den = MultilevelDenoiser(unets, costs=[1, 2], rates=[1.0])
    den.set_step(0.01)
    with pytest.raises(ValueError, match="level 2"):
        den(torch.randn(2, 1, 8, 8), 0.5)


def test_rates_are_checked():
    P = gaussian(2, seed=17)
    three = [P.eps, P.eps, P.eps]
    with pytest.raises(ValueError, match="rates: expected 2 rates"):
        MultilevelDenoiser(three, costs=[1, 2, 4], rates=[1.0])
    with pytest.raises(ValueError, match="rates"):
        MultilevelDenoiser(three, costs=[1, 2, 4])
    with pytest.raises(TypeError, match="rates"):
        MultilevelDenoiser(three, costs=[1, 2, 4], rates=3.0)
    with pytest.raises(ValueError, match="rate >= 0"):
        MultilevelDenoiser(three, costs=[1, 2, 4], rates=[1.0, -1.0])
    with pytest.raises(ValueError, match="costs"):
        MultilevelDenoiser(three, rates=[1.0, 1.0])
    den = MultilevelDenoiser(three, costs=[1, 2, 4], rates=[1.0, 1.0])
    with pytest.raises(RuntimeError, match="set_step"):
        den(torch.randn(2, 2, dtype=F64), 0.5)
    den.set_step(0.1)
    with pytest.raises(ValueError, match="one time per call"):
        den(torch.randn(2, 2, dtype=F64), torch.tensor([0.1, 0.2]))


# ----------------------------------------------------------------------------- metrics


def test_sliced_wasserstein():
    x = torch.randn(500, 8, generator=gen(31), dtype=F64)
    assert sliced_wasserstein(x, x) == 0.0
    c = torch.full((8,), 0.5, dtype=F64)
    # A translation shifts every projection by <theta, c>: SW_2^2 = E <theta, c>^2 = |c|^2 / d.
    sw = sliced_wasserstein(x, x + c, projections=4000, generator=gen(32))
    assert abs(sw / (float(c.norm()) / math.sqrt(8)) - 1) < 0.05
    # Different sizes: compared through quantiles; close to the equal-size value.
    y = torch.randn(700, 8, generator=gen(33), dtype=F64) + c
    assert abs(sliced_wasserstein(x, y, projections=2000, generator=gen(34)) - sw) < 0.1


def test_mmd2_unbiased_matches_the_closed_form():
    d, b, shift = 3, 1.5, 0.8
    # Gaussian kernel, N(0, I) vs N(c, I): MMD^2 = 2 (b^2 / (b^2 + 2))^(d/2) (1 - exp(-|c|^2 / (2 (b^2 + 2)))).
    exact = 2 * (b * b / (b * b + 2)) ** (d / 2) * (1 - math.exp(-(shift**2) / (2 * (b * b + 2))))
    g = gen(35)
    same, diff = [], []
    for _ in range(40):
        x, y = torch.randn(100, d, generator=g, dtype=F64), torch.randn(100, d, generator=g, dtype=F64)
        same.append(mmd2_unbiased(x, y, bandwidth=b))
        diff.append(mmd2_unbiased(x, y + torch.tensor([shift, 0, 0], dtype=F64), bandwidth=b))
    for vals, target in ((same, 0.0), (diff, exact)):
        v = torch.tensor(vals)
        assert abs(float(v.mean()) - target) < 5 * float(v.std()) / math.sqrt(len(v)), (float(v.mean()), target)
    assert mmd2_unbiased(x, y + 3.0) > 0.1  # median bandwidth by default


def test_samplers_table_is_complete():
    assert set(SAMPLERS) == {c for c, _ in SAMPLER_CASES}


def test_ddim_warns_when_its_steps_do_not_divide_the_training_timesteps():
    from multilevel_em.diffusion import VPSchedule

    sched = VPSchedule.linear()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

    def eps(x, t):
        return 0.1 * x

    with pytest.warns(UserWarning, match="30 does not divide num_train_timesteps = 1000"):
        sample(eps, x, schedule=sched, steps=30, sampler="ddim")
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        sample(eps, x, schedule=sched, steps=25, sampler="ddim")
        sample(eps, x, schedule=sched, steps=30, sampler="ddim", scheduler_config={"timestep_spacing": "leading"})
