"""Diffusion-model sampling with ML-EM: VP schedules, multilevel denoisers, samplers, metrics.

    from multilevel_em.diffusion import VPSchedule, MultilevelDenoiser, sample

    schedule = VPSchedule.linear()
    denoiser = MultilevelDenoiser([small, medium, big], costs=[1, 8, 64], rates=[20.0, 5.0])
    out = sample(denoiser, torch.randn(16, 3, 64, 64), schedule=schedule, steps=100, sampler="em")
    out.x, out.cost, out.evaluations

Builds on the engine (:mod:`multilevel_em.engine`); the engine does not import this package.
The "ddpm", "ddim" and "dpmpp_2m" samplers need diffusers (``pip install 'multilevel-em[diffusion]'``).
"""

from .denoisers import DiffusersUNetAdapter, MultilevelDenoiser, TStitchDenoiser, as_eps_model
from .multilevel_model import MultilevelModel, scheduler_spans
from .metrics import median_bandwidth, mmd2_unbiased, sliced_wasserstein
from .mlp import EpsMLP, MLPLadder, load_mlp_ladder, train_mlp_ladder
from .rates import learn_probabilities, measure_profiles
from .samplers import SAMPLERS, Samples, make_scheduler, sample
from .schedule import VPSchedule

__all__ = [
    "DiffusersUNetAdapter",
    "EpsMLP",
    "MLPLadder",
    "MultilevelDenoiser",
    "MultilevelModel",
    "SAMPLERS",
    "Samples",
    "TStitchDenoiser",
    "VPSchedule",
    "as_eps_model",
    "learn_probabilities",
    "load_mlp_ladder",
    "make_scheduler",
    "measure_profiles",
    "median_bandwidth",
    "mmd2_unbiased",
    "sample",
    "scheduler_spans",
    "sliced_wasserstein",
    "train_mlp_ladder",
]
