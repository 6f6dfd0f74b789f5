"""Sampling jobs: many samples from a UNet ladder, in shards, in one process or on Ray.

Identical samples at any worker count (randomness keyed by (seed, sample index)), atomic
shards, resumable.  Imports :mod:`multilevel_em.images`; nothing below imports this package.
Ray is optional: ``pip install 'multilevel-em[distributed]'``.
"""

from .job import JobError, SamplingJob, read_ladder_bundle
from .runner import ShardWorker, completed_shards, load_samples, run_job

__all__ = [
    "JobError",
    "SamplingJob",
    "ShardWorker",
    "completed_shards",
    "load_samples",
    "read_ladder_bundle",
    "run_job",
]
