"""Benchmark problems with known answers: synthetic ladders and exact drifts."""

from .gaussian import GaussianMixtureProblem, GaussianProblem, gaussian, gaussian_mixture, perturbed_ladder
from .htmc import HTMCProblem, htmc

__all__ = [
    "GaussianMixtureProblem",
    "GaussianProblem",
    "HTMCProblem",
    "gaussian",
    "gaussian_mixture",
    "htmc",
    "perturbed_ladder",
]
