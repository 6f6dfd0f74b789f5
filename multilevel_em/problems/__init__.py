"""Benchmark problems with known answers: synthetic ladders and exact drifts."""

from .htmc import HTMCProblem, htmc

__all__ = ["HTMCProblem", "htmc"]
