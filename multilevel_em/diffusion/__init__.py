"""Diffusion-model sampling with ML-EM: VP schedules, multilevel denoisers, samplers, metrics.

    from multilevel_em.diffusion import VPSchedule, MultilevelDenoiser, sample

    schedule = VPSchedule.linear()
    denoiser = MultilevelDenoiser([small, medium, big], costs=[1, 8, 64], rates=[20.0, 5.0])
    out = sample(denoiser, torch.randn(16, 3, 64, 64), schedule=schedule, steps=100, sampler="em")
    out.x, out.top_equivalents, out.evaluations

Builds on the engine (:mod:`multilevel_em.engine`); the engine does not import this package.
The samplers with a diffusers scheduler (``scheduler_samplers()`` in :mod:`.registry`: "ddpm",
"ddim", "dpmpp_2m") need diffusers (``pip install 'multilevel-em[diffusion]'``).

Names are imported on first use (PEP 562), so that :mod:`.registry` (the sampler names, plain
data) can be read without loading torch, e.g. by the command line's ``--help``.
"""

import importlib

# name -> the submodule defining it
_LAZY = {
    "DiffusersUNetAdapter": ".denoisers",
    "MultilevelDenoiser": ".denoisers",
    "TStitchDenoiser": ".denoisers",
    "as_eps_model": ".denoisers",
    "MultilevelModel": ".multilevel_model",
    "scheduler_spans": ".multilevel_model",
    "median_bandwidth": ".metrics",
    "mmd2_unbiased": ".metrics",
    "sliced_wasserstein": ".metrics",
    "EpsMLP": ".mlp",
    "MLPLadder": ".mlp",
    "load_mlp_ladder": ".mlp",
    "train_mlp_ladder": ".mlp",
    "learn_probabilities": ".rates",
    "measure_profiles": ".rates",
    "Samples": ".samplers",
    "make_scheduler": ".samplers",
    "sample": ".samplers",
    "SAMPLERS": ".registry",
    "VPSchedule": ".schedule",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
