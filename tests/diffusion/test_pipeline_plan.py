"""calibrate(run(num_inference_steps)) -> plan(budget) -> apply on a stock pipeline (issue 22, items 2-3).

Tiny conditional UNets built from configs (no downloads) in a stock StableDiffusionPipeline with DDIM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from conftest import tiny_sd_pipeline
from conftest import tiny_unet2d_condition as _unet_cond
from diffusers import DDIMScheduler, HeunDiscreteScheduler

from multilevel_em.calibration.schedules import PipelineMeasurements, step_error
from multilevel_em.diffusion import MultilevelModel
from multilevel_em.engine import CallSchedule


@pytest.fixture(scope="module")
def ladder():
    return [_unet_cond(4, 1), _unet_cond(8, 2), _unet_cond(16, 3)]


def _pipe(ladder, scheduler=lambda: DDIMScheduler(clip_sample=False), n=4):
    pipe = tiny_sd_pipeline(ladder[-1], scheduler())
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(n, 4, 16, generator=g), torch.randn(n, 4, 16, generator=g)
    pipe.unet = MultilevelModel(ladder, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(1))

    def run(num_inference_steps):
        return pipe(
            prompt_embeds=emb,
            negative_prompt_embeds=neg,
            num_inference_steps=num_inference_steps,
            guidance_scale=5.0,
            height=8,
            width=8,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )

    return pipe, run


@pytest.fixture(scope="module")
def calibrated(ladder):
    pipe, run = _pipe(ladder)
    pipe.unet.calibrate(run, steps=(2, 3, 4), reference_steps=8, blocks=2)
    return pipe, run


def test_calibration_measures_the_pipeline(calibrated):
    pipe, run = calibrated
    m = pipe.unet.pipeline_measurements
    # top alone at 2 and 3, the reference, the recording at 4, 2 perturbed blocks, 2 levels x 2 fractions x 3 counts
    # but round(0.2 x 2) = 0: no run for 20% of 2 calls
    assert m.runs == 2 + 1 + 1 + 2 + 10 and m.steps == (2, 3, 4) and m.reference_steps == 8
    assert all(e > 0 for e in m.step_errors) and all(s > 0 for s in m.sensitivity)
    assert [(lv, f) for lv, f, _ in m.switches] == [(0, 0.2), (0, 0.4), (1, 0.2), (1, 0.4)]
    assert m.switches[0][2][0] is None and all(e > 0 for e in m.switches[1][2])  # round(0.2 x 2) = 0 calls switched
    # the top model alone at a measured count: its error is the measured one
    assert pipe.unet.calibration is not None and pipe.unet.schedule is None
    pipe.unet.set_schedule(CallSchedule.top_alone(3, 3))
    top3 = run(3).images
    pipe.unet.set_schedule(CallSchedule.top_alone(8, 3))
    ref = run(8).images
    assert step_error(m, 3) == pytest.approx(float(np.sqrt(np.mean((top3 - ref) ** 2))), rel=1e-6)
    assert step_error(m, 1) is None and step_error(m, 9) is None  # no extrapolation
    assert PipelineMeasurements.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_plan_compares_candidates_and_applies_the_pick(calibrated):
    pipe, run = calibrated
    plan = pipe.unet.plan(3)
    names = [c.name for c in plan.candidates]
    assert names[0] == "top model alone, 3 calls" and any("ML-EM" in n for n in names)
    assert any(n.startswith("level ") for n in names)
    assert {c.kind for c in plan.candidates} == {"top", "switch", "mlem", "hybrid"}
    assert plan.choice.predicted_error == min(c.predicted_error for c in plan.candidates)
    assert all(c.predicted_cost <= 3 * (1 + 1e-9) for c in plan.candidates)
    assert plan.pipeline_kwargs == {"num_inference_steps": plan.choice.num_inference_steps}
    assert pipe.unet.schedule is plan.choice.schedule and "Picked" in plan.message
    pipe.unet.reset()
    out = run(**plan.pipeline_kwargs).images
    assert np.isfinite(out).all()
    # counted cost of the run against the schedule's expected cost (4 images x 2 guidance copies: 8 rows a call)
    got = pipe.unet.report()["top_equivalents_per_image"]
    assert got == pytest.approx(plan.choice.predicted_cost, rel=0.5)


def test_hybrid_candidate_is_a_measured_switch_then_mlem(calibrated):
    """The hybrid: a cheaper level alone for the first calls (a switch the calibration ran), ML-EM after with
    rates sized to the rest of the budget; its predicted error adds the tail's variance to the switch's measured
    error, and its expected cost fits the budget."""
    pipe, _ = calibrated
    m = pipe.unet.pipeline_measurements
    plan = pipe.unet.plan(3)
    (h,) = [c for c in plan.candidates if c.kind == "hybrid"]
    n = h.num_inference_steps
    heads = [lv for lv in h.schedule.levels if len(lv) == 1]
    first = len(heads)
    assert 0 < first < n and h.schedule.levels[:first] == tuple(heads) and len(set(heads)) == 1
    (level,) = heads[0]
    assert level < 2 and all(lv[-1] == 2 and len(lv) > 1 for lv in h.schedule.levels[first:])
    assert any(p < 1 for row in h.schedule.probabilities[first:] for p in row)
    assert h.predicted_cost <= 3 * (1 + 1e-9)
    assert h.predicted_cost == pytest.approx(h.schedule.expected_cost(pipe.unet.costs))
    # the switch's measured error at n calls (n is a measured count here) is the floor of the prediction
    (e_switch,) = [errs[m.steps.index(n)] for lv, f, errs in m.switches if lv == level and round(f * n) == first]
    assert h.predicted_error > e_switch


def test_schedule_candidates_predict_their_measured_error(calibrated):
    """Every candidate of plan(3): predicted error within 1.5x of its measured error against the reference
    (the issue's target, on these tiny random-weight UNets; ML-EM measured over 4 images x 6 repeats)."""
    pipe, run = calibrated
    plan = pipe.unet.plan(3)
    pipe.unet.set_schedule(CallSchedule.top_alone(8, 3))
    ref = run(8).images
    for c in plan.candidates:
        pipe.unet.set_schedule(c.schedule)
        reps = 6 if c.kind in ("mlem", "hybrid") else 1
        sq = []
        for r in range(reps):
            pipe.unet.generator = torch.Generator().manual_seed(100 + r)
            sq.append(np.mean((run(c.num_inference_steps).images - ref) ** 2))
        measured = float(np.sqrt(np.mean(sq)))
        print(f"{c.name}: predicted {c.predicted_error:.4g}, measured {measured:.4g}")
        assert 1 / 1.5 <= c.predicted_error / measured <= 1.5, (c.name, c.predicted_error, measured)


def test_plan_and_calibrate_bad_inputs(ladder, calibrated):
    pipe, run = _pipe(ladder)
    with pytest.raises(ValueError, match="plan: run calibrate"):
        pipe.unet.plan(3)
    with pytest.raises(ValueError, match="reference_steps: expected more than the largest of steps"):
        pipe.unet.calibrate(run, steps=(2, 4), reference_steps=4)
    with pytest.raises(ValueError, match="blocks"):
        pipe.unet.calibrate(run, steps=(2,), blocks=3)
    with pytest.raises(ValueError, match="fractions"):
        pipe.unet.calibrate(run, steps=(2,), blocks=1, fractions=(1.5,))
    with pytest.raises(ValueError, match="fractions, perturbation: expected numbers"):
        pipe.unet.calibrate(run, steps=(2,), blocks=1, fractions=("a",))
    with pytest.raises(TypeError, match="run: expected it to return the pipeline's output"):
        pipe.unet.calibrate(lambda n: "images", steps=(2,), blocks=1)
    for bad in ((), (2.5,), (0, 2), (True,)):
        with pytest.raises(ValueError, match="steps: expected integer step counts >= 1"):
            pipe.unet.calibrate(run, steps=bad, blocks=1)
    cal_pipe, _ = calibrated
    with pytest.raises(ValueError, match="below one call of the cheapest schedule"):
        cal_pipe.unet.plan(0.001)
    with pytest.raises(ValueError, match="levels: a schedule plan chooses its levels itself"):
        cal_pipe.unet.plan(3, levels=[0, 2])
    sched = cal_pipe.unet.scheduler
    cal_pipe.unet.scheduler = HeunDiscreteScheduler()
    try:
        with pytest.raises(
            ValueError, match="measured with DDIMScheduler, but the scheduler is now HeunDiscreteScheduler"
        ):
            cal_pipe.unet.plan(3)
    finally:
        cal_pipe.unet.scheduler = sched
    # a failed calibration keeps the earlier one (here: none)
    assert pipe.unet.calibration is None and pipe.unet.pipeline_measurements is None
    heun, heun_run = _pipe(ladder, HeunDiscreteScheduler, n=1)
    with pytest.raises(
        ValueError, match=r"run: \d+ inference steps made \d+ model calls; the calibration needs one call per step"
    ):
        heun.unet.calibrate(heun_run, steps=(2,), reference_steps=3, blocks=1)


def test_measurements_are_validated_when_loaded(calibrated):
    d = calibrated[0].unet.pipeline_measurements.to_dict()
    for key, bad, match in (
        ("steps", [4, 2, 3], "increasing"),
        ("step_errors", [0.1], "one error per call count"),
        ("reference_steps", 3, "more calls than every measured count"),
        ("sensitivity", [float("nan"), 1.0], "finite"),
        ("switches", [[0, 2.0, [0.1, 0.1, 0.1]]], "fraction in"),
        ("switches", [[0, 0.5, [0.1]]], "one per call count"),
        ("switches", [[2, 0.5, [0.1, 0.1, 0.1]]], "below the top of the 3 levels"),
    ):
        with pytest.raises(ValueError, match=match):
            PipelineMeasurements.from_dict({**d, key: bad})
    with pytest.raises(ValueError, match="missing field.*runs"):
        PipelineMeasurements.from_dict({k: v for k, v in d.items() if k != "runs"})


def test_a_calibration_that_fails_midway_keeps_the_earlier_one(ladder):
    pipe, run = _pipe(ladder, n=2)
    cal = pipe.unet.calibrate(run, steps=(2,), reference_steps=3, blocks=1, fractions=(0.5,), features=_features)
    meas = pipe.unet.pipeline_measurements
    calls = []

    def failing(num_inference_steps):
        calls.append(num_inference_steps)
        if len(calls) == 3:  # after the reference and the recording run: in the perturbed runs
            raise RuntimeError("the pipeline broke")
        return run(num_inference_steps)

    with pytest.raises(RuntimeError, match="the pipeline broke"):
        pipe.unet.calibrate(failing, steps=(2,), reference_steps=3, blocks=1, fractions=(0.5,))
    assert pipe.unet.calibration is cal and pipe.unet.pipeline_measurements is meas
    assert pipe.unet._forward_hook is None
    assert pipe.unet.plan(2, criterion="distribution", boot=20).criterion == "distribution"  # features kept


def _features(images):
    """Per-image channel means and standard deviations of the (n, H, W, 3) images: (n, 6) features."""
    x = np.asarray(images).reshape(images.shape[0], -1, images.shape[-1])
    return np.concatenate([x.mean(1), x.std(1)], 1)


def test_distribution_criterion_scores_every_candidate_and_switch(ladder):
    """criterion="distribution": every candidate and every switch that fits the budget is run and scored by the
    Frechet distance of its features to the reference run's (bootstrap intervals, paired differences to the top
    model alone); the pick has the lowest distance; the pathwise plan is unchanged by the features."""
    pipe, run = _pipe(ladder, n=8)
    pipe.unet.calibrate(run, steps=(2, 3, 4), reference_steps=8, blocks=2, features=_features)
    pathwise = pipe.unet.plan(3)
    assert pathwise.criterion == "pathwise" and all(c.fd is None for c in pathwise.candidates)
    plan = pipe.unet.plan(3, criterion="distribution", boot=50)
    assert plan.criterion == "distribution" and len(plan.switches) == 4  # 2 levels x 2 fractions
    scored = list(plan.candidates) + list(plan.switches)
    assert all(c.fd is not None and c.fd_ci[0] <= c.fd_ci[1] for c in scored)
    assert plan.choice.fd == min(c.fd for c in scored) and pipe.unet.schedule is plan.choice.schedule
    top = plan.candidates[0]
    assert top.name.startswith("top model alone") and top.fd_minus_top == 0 and top.fd_minus_top_ci == (0.0, 0.0)
    assert "Frechet distance" in plan.message and plan.pipeline_kwargs["num_inference_steps"] >= 1
    # the measurement is reproducible: the same seed gives the same distances
    again = pipe.unet.plan(3, criterion="distribution", boot=50)
    assert [c.fd for c in again.candidates] == [c.fd for c in plan.candidates]


def test_distribution_criterion_bad_inputs(ladder, calibrated):
    cal_pipe, _ = calibrated
    with pytest.raises(ValueError, match="criterion: 'distribution' needs features"):
        cal_pipe.unet.plan(3, criterion="distribution")
    with pytest.raises(ValueError, match="criterion: expected 'pathwise' or 'distribution'"):
        cal_pipe.unet.plan(3, criterion="fid")
    pipe, run = _pipe(ladder, n=4)
    with pytest.raises(TypeError, match="features: expected a function"):
        pipe.unet.calibrate(run, steps=(2,), blocks=1, features="clip")
    with pytest.raises(ValueError, match=r"features: expected it to return an \(images, d\)"):
        pipe.unet.calibrate(run, steps=(2,), blocks=1, features=lambda images: images.mean())
    with pytest.raises(ValueError, match="features: needs run"):
        pipe.unet.calibrate(lambda: run(2), features=_features)
    pipe.unet.calibrate(run, steps=(2, 3), reference_steps=4, blocks=1, features=_features)
    with pytest.raises(ValueError, match="boot: expected an integer >= 20"):
        pipe.unet.plan(2, criterion="distribution", boot=5)


def test_a_users_own_scheduler_loop_with_unipc(ladder):
    """Item 6: schedulers a stock pipeline cannot drive (UniPC's step takes no generator) run in a short loop of the
    user's own, as users write one; calibrate(run(n)) -> plan -> apply works the same, and the applied plan
    costs what it predicted (deterministic schedules) or about that (ML-EM)."""
    from diffusers import UniPCMultistepScheduler

    from multilevel_em.testing import tiny_unet

    unets = [tiny_unet(4, 1), tiny_unet(8, 2), tiny_unet(16, 3)]
    sched = UniPCMultistepScheduler()
    model = MultilevelModel(unets, scheduler=sched, generator=torch.Generator().manual_seed(3))

    @torch.no_grad()
    def run(num_inference_steps):
        sched.set_timesteps(num_inference_steps)
        x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x).prev_sample
        return x

    model.calibrate(run, steps=(2, 3, 4), reference_steps=8, blocks=2)
    plan = model.plan(3)
    assert plan.choice in plan.candidates and model.schedule is plan.choice.schedule
    model.reset()
    out = run(**plan.pipeline_kwargs)
    assert torch.isfinite(out).all()
    got = model.report()["top_equivalents_per_image"]
    assert got == pytest.approx(plan.choice.predicted_cost, rel=0 if "ML-EM" not in plan.choice.name else 0.5)


def test_a_stochastic_scheduler_warns_and_the_distribution_criterion_still_plans():
    """Item 6: Euler ancestral (fresh noise at every step) in a user's loop with scale_model_input, on the shipped
    digits UNets: runs with 4, 8 and 16 calls do not converge to one output from the same noise (RMS error against
    32 calls about 0.5 at each), so calibrate(run) says that the pathwise predictions mean little; the
    distributional criterion still scores the schedules by running them."""
    from diffusers import EulerAncestralDiscreteScheduler

    from multilevel_em.diffusion.samplers import make_scheduler
    from multilevel_em.images.ladder import load_ladder, resolve_ladder

    L = load_ladder(resolve_ladder("digits"))
    sched = EulerAncestralDiscreteScheduler.from_config(make_scheduler("ddim", L.schedule).config)
    model = MultilevelModel(L.unets, costs=L.costs, scheduler=sched, generator=torch.Generator().manual_seed(3))

    @torch.no_grad()
    def run(num_inference_steps):
        sched.set_timesteps(num_inference_steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 1, 16, 16, generator=g) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x, generator=g).prev_sample
        return x

    with pytest.warns(RuntimeWarning, match="does not fall with more calls"):
        model.calibrate(run, steps=(4, 8, 16), reference_steps=32, blocks=2, fractions=(0.4,), features=_features)
    plan = model.plan(5, criterion="distribution", boot=20)
    assert plan.criterion == "distribution" and all(c.fd is not None for c in plan.candidates)
    assert plan.choice.fd == min(c.fd for c in plan.candidates + plan.switches)
