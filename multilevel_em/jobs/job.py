"""A sampling job: what to sample, and the folder of shards it writes.

Folder layout (``job.out``)::

    job.json              the job's description and fingerprint (written first)
    shard-000000.npz      samples 0 .. batch_size-1, written atomically when complete
    shard-000001.npz      ...
    png/000000.png ...    one image per sample, only with png=True (written before its shard)
    report.json           the final report (samples, cost per level, throughput, the ML-EM plan)
    job.lock              while a run is in progress: locked (flock) by its process, holds its pid;
                          a second process refuses the folder while it is locked

A shard file holds ``x`` (float32 ``(b, C, H, W)``, the raw samples in the data scale [-1, 1],
not clipped), ``images`` (uint8 ``(b, H, W, C)``), ``indices`` (int64 ``(b,)``, the samples'
indices in the job), ``evaluations`` (float64 ``(levels,)``: sample-evaluations of each level in
the shard), ``top_equivalents`` (float64, the shard's total cost in top-level equivalents),
``wall_seconds`` and ``plan`` (a JSON string: the ML-EM plan the shard followed, ``null`` for
other methods; shards written before it existed lack it).  A shard exists completely or not at all, so a rerun of the same job skips the
shards that exist and computes the rest.

Every random number of sample i comes from generators keyed by ``(seed, i)``
(:func:`multilevel_em.engine.sample_generators`); the shards are fixed by ``batch_size``, so the
same job gives bit-identical shards whatever the number of workers or the order in which
shards complete.  With another ``batch_size`` sample i gets the same random numbers, but the
networks' float32 results on a differently sized batch can differ in the last bits (~1e-6),
unless ``batch_invariant=True``, which evaluates the networks one sample at a time: then
sample i is bit-identical at any batch size too, at 3-10x the CPU time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Optional, Tuple

from .. import __version__
from ..diffusion.registry import METHODS

__all__ = ["JobError", "SamplingJob", "JOB_FILE", "LOCK_FILE", "REPORT_FILE", "read_ladder_bundle", "shard_path"]

JOB_FILE = "job.json"
REPORT_FILE = "report.json"
LOCK_FILE = "job.lock"
SHARD_PATTERN = "shard-{:06d}.npz"
PNG_DIR = "png"
JOB_FORMAT = "multilevel_em.jobs.SamplingJob"
_METHODS = METHODS  # MultilevelPipeline's methods (the registry's); plain data, no torch


class JobError(RuntimeError):
    """A job that cannot start, resume or finish; the message says why and what was left on disk."""


@dataclass(frozen=True)
class SamplingJob:
    """What to sample and where.

    Attributes:
        ladder: a UNet ladder folder (``mlem train`` or ``MultilevelPipeline.save_pretrained``).
        n: number of samples (>= 1).
        out: the output folder of shards.
        method: "mlem", "em", "ddpm", "ddim", "euler_ode", "dpmpp_2m", "stitch" or "auto" (see ``MultilevelPipeline``).
        batch_size: samples per shard (the last shard may be smaller).
        seed: the job's seed; sample i's random numbers are keyed by (seed, i).
        steps: step count (default: the method's or the plan's).
        budget: cost per sample in top-level equivalents ("mlem": planned with the ladder's
            calibration; one-model methods: floor(budget) steps).
        rates: "mlem": lambda_2..lambda_K per unit of diffusion time (numbers), with ``steps``.
        sampler: "mlem" / "stitch": the sampling loop (``MultilevelPipeline``'s default if None).
        png: also write one PNG per sample under ``out/png``.
        batch_invariant: evaluate the UNets one sample at a time, so that sample i is
            bit-identical whatever the batch size too (3-10x slower on a CPU); see
            ``MultilevelPipeline``.
        device: where the workers run the UNets ("cpu", "cuda", ...; on Ray, a "cuda" worker
            asks for one GPU). Random numbers are drawn on the CPU whatever the device.
        trace: run the UNets as TorchScript traces (``MultilevelPipeline(..., trace=True)``): less
            per-call overhead. Part of the fingerprint when set (a traced run could round
            differently from an eager one), absent from it when not (older jobs keep theirs).
    """

    ladder: str
    n: int
    out: str
    method: str = "mlem"
    batch_size: int = 256
    seed: int = 0
    steps: Optional[int] = None
    budget: Optional[float] = None
    rates: Optional[Tuple[float, ...]] = None
    sampler: Optional[str] = None
    png: bool = False
    device: str = "cpu"
    batch_invariant: bool = False
    trace: bool = False

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"n: expected the number of samples, an int >= 1, got {self.n!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {self.batch_size!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method: expected one of {', '.join(map(repr, _METHODS))}, got {self.method!r}")
        if self.steps is not None and (not is_int(self.steps) or self.steps < 1):
            raise ValueError(f"steps: expected an int >= 1 or None, got {self.steps!r}")
        if self.budget is not None and (
            isinstance(self.budget, bool)
            or not isinstance(self.budget, Real)
            or not math.isfinite(self.budget)
            or self.budget <= 0
        ):
            raise ValueError(f"budget: expected a positive number of top-level equivalents, got {self.budget!r}")
        if self.rates is not None:
            rates = tuple(self.rates)
            if not all(isinstance(r, Real) and not isinstance(r, bool) and math.isfinite(r) and r >= 0 for r in rates):
                raise ValueError(f"rates: expected numbers >= 0 (serialisable; callables are not), got {self.rates!r}")
            object.__setattr__(self, "rates", tuple(float(r) for r in rates))
        for name in ("png", "batch_invariant", "trace"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device: expected a torch device name such as 'cpu' or 'cuda', got {self.device!r}")
        if not isinstance(self.out, (str, os.PathLike)) or not os.fspath(self.out):
            raise ValueError(f"out: expected a folder path, got {self.out!r}")
        if str(self.out).lower().endswith(".png"):
            raise ValueError(f"out: {self.out!r} looks like an image file; a job writes a folder of shards")

    # ------------------------------------------------------------------ shards

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.batch_size)

    def shard_range(self, k: int) -> Tuple[int, int]:
        """Sample indices [start, stop) of shard ``k``."""
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range (the job has {self.n_shards})")
        return k * self.batch_size, min(self.n, (k + 1) * self.batch_size)

    def pipeline_kwargs(self) -> Dict:
        """Keyword arguments of ``MultilevelPipeline.__call__`` (without batch size and generator)."""
        kw = {"method": self.method, "steps": self.steps, "budget": self.budget}
        if self.rates is not None:
            kw["rates"] = list(self.rates)
        if self.sampler is not None:
            kw["sampler"] = self.sampler
        if self.batch_invariant:
            kw["batch_invariant"] = True
        if self.trace:
            kw["trace"] = True
        return kw

    # ------------------------------------------------------------------ identity

    def description(self, ladder_digest: str) -> Dict:
        """Everything that determines the shards' contents (not where they are written)."""
        d = dataclasses.asdict(self)
        del d["out"]
        d["ladder"] = os.path.abspath(os.fspath(self.ladder))
        d["rates"] = list(self.rates) if self.rates is not None else None
        if not self.trace:
            del d["trace"]  # the eager default: the description (and fingerprint) of jobs made before trace=
        d["ladder_sha256"] = ladder_digest
        d["format"] = JOB_FORMAT
        return d

    @staticmethod
    def fingerprint(description: Dict) -> str:
        """SHA-256 of the description, without the ladder's path (a moved ladder is the same ladder)."""
        d = {k: v for k, v in description.items() if k != "ladder"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def manifest(self, ladder_digest: str) -> Dict:
        d = self.description(ladder_digest)
        return {
            "job": d,
            "fingerprint": self.fingerprint(d),
            "n_shards": self.n_shards,
            "shard_pattern": SHARD_PATTERN,
            "version": __version__,
        }


def shard_path(out: str, k: int) -> str:
    return os.path.join(os.fspath(out), SHARD_PATTERN.format(k))


def png_path(out: str, index: int) -> str:
    return os.path.join(os.fspath(out), PNG_DIR, f"{index:06d}.png")


def _ladder_files(path: str) -> List[str]:
    """The files sampling needs, relative to the ladder folder."""
    from ..images.ladder import INDEX, UNET_CONFIG, WEIGHTS, CheckpointError, read_json
    from ..images.pipeline import CALIBRATION

    index = read_json(os.path.join(path, INDEX))
    levels = index.get("levels")
    if not isinstance(levels, list) or not levels:
        raise CheckpointError(f"{os.path.join(path, INDEX)}: no levels")
    files = [INDEX] + [os.path.join(str(name), f) for name in levels for f in (UNET_CONFIG, WEIGHTS)]
    if os.path.exists(os.path.join(path, CALIBRATION)):
        files.append(CALIBRATION)
    return files


def read_ladder_bundle(path: str) -> Tuple[Dict[str, bytes], str]:
    """The bytes of the ladder's sampling files ({relative path: bytes}) and their SHA-256.

    Workers on other machines rebuild the ladder from this bundle, so they need no shared
    file system; the digest identifies the ladder in the job's fingerprint.
    """
    from ..images.ladder import CheckpointError

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"ladder: {path!r} is not a folder")
    bundle, h = {}, hashlib.sha256()
    for rel in _ladder_files(path):
        full = os.path.join(path, rel)
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CheckpointError(f"{full}: cannot read ({e.strerror or e})") from None
        bundle[rel] = data
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return bundle, h.hexdigest()
