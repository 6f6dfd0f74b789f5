"""Every benchmark, named once: what ``mlem bench NAME`` runs, where its code lives, what it writes.

A benchmark is a module of :mod:`multilevel_em.bench`. Its options are declared in one of two ways:

* ``"click"``: by the command line (:mod:`multilevel_em.cli.bench`, one click command per benchmark),
  which checks them and calls the module's ``run_*`` function;
* ``"argv"``: by the module itself: ``main(argv, command=...)`` parses the arguments (argparse, whose
  ``--help`` is the benchmark's help) and ``mlem bench NAME ARGS...`` hands them over unchanged.

Adding a benchmark: a module here and one :class:`Benchmark` entry below (plus, for ``"click"``, its
command in :mod:`multilevel_em.cli.bench`). Importing this module imports no benchmark (nor torch).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Tuple

__all__ = ["BENCHMARKS", "Benchmark", "get", "load", "quick_path"]


def quick_path(path: str) -> str:
    """A quick run's version of a results path: ``results/NAME.json`` -> ``results/NAME_quick.json``."""
    root, ext = os.path.splitext(path)
    return f"{root}_quick{ext}"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``mlem bench NAME``.

    Attributes:
        name: the subcommand name.
        module: the module under :mod:`multilevel_em.bench` that runs it.
        summary: one line for ``mlem bench --help``.
        results: the files a default run writes (relative to the repository root); a ``--quick`` run writes
            :meth:`outputs` ``(quick=True)`` instead, never these.
        options: ``"click"`` (declared by :mod:`multilevel_em.cli.bench`) or ``"argv"`` (parsed by the
            module's ``main(argv, command=...)``).
    """

    name: str
    module: str
    summary: str
    results: Tuple[str, ...] = ()
    options: str = "click"

    def __post_init__(self):
        if self.options not in ("click", "argv"):
            raise ValueError(f"options: expected 'click' or 'argv', got {self.options!r}")

    def outputs(self, quick: bool = False) -> Tuple[str, ...]:
        """The files a run writes by default: :attr:`results`, or for a ``--quick`` run the same names with
        ``_quick`` before the suffix (``results/images.json`` -> ``results/images_quick.json``), so that a
        smoke test never replaces a full run's results."""
        return tuple(quick_path(p) for p in self.results) if quick else self.results

    def load(self) -> ModuleType:
        """The benchmark's module (imported now: it may import torch)."""
        return importlib.import_module(f"{__package__}.{self.module}")


BENCHMARKS: Dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "htmc",
            "htmc",
            "Cost-vs-error fronts and fitted cost exponents of EM and ML-EM on the synthetic HTMC family.",
            ("results/htmc.json", "results/htmc.png"),
        ),
        Benchmark(
            "diffusion",
            "diffusion",
            "Cost-error Pareto fronts of EM, DDPM, DDIM, DPM-Solver++, T-Stitch and ML-EM with trained MLP ladders.",
            ("results/diffusion.json", "results/diffusion.png"),
        ),
        Benchmark(
            "images",
            "images",
            "Cost against KID, FD and pathwise error of every sampler and ML-EM on a UNet ladder.",
            ("results/images.json", "results/images.png"),
        ),
        Benchmark(
            "samplers",
            "samplers",
            "Plans inside each measured sampler against what ML-EM measures there and the top UNet alone.",
            ("results/samplers.json", "results/samplers.png"),
        ),
        Benchmark(
            "rates",
            "rates",
            "Closed-form, sensitivity-weighted and learned ML-EM rates at equal expected cost.",
            ("results/rates.json", "results/rates.png"),
        ),
        Benchmark(
            "overhead",
            "overhead",
            "Is the counted cost the real cost? Wall time per top-level equivalent, ML-EM vs EM, on an MLP ladder.",
            ("results/overhead.json",),
            options="argv",
        ),
        Benchmark(
            "wallclock",
            "wallclock",
            "Wall and CPU seconds per top-level equivalent, ML-EM vs EM-top, eager and "
            "traced, on the digits and MLP ladders.",
            ("results/wallclock.json",),
            options="argv",
        ),
        Benchmark(
            "fashion-reference",
            "fashion_reference",
            "Fashion-MNIST reference scores: training images (the floor) and blurred training images "
            "against the test set, FD and KID in the shipped classifier's features.",
            ("results/fashion_reference.json",),
            options="argv",
        ),
        Benchmark(
            "jobs",
            "jobs_throughput",
            "Throughput of a sampling job: this process vs Ray with 1 and 2 workers.",
            ("results/jobs_throughput.json",),
            options="argv",
        ),
        Benchmark(
            "gpu",
            "gpu_images",
            "On a GPU: train a bigger UNet ladder and compare EM, DPM-Solver++ and ML-EM at equal cost.",
            ("results/gpu_images.json", "results/gpu_images.png"),
            options="argv",
        ),
        Benchmark(
            "distill",
            "distill",
            "A distilled ladder against one trained on data, at equal widths and iterations.",
            ("results/distill.json", "results/distill.png"),
            options="argv",
        ),
        Benchmark(
            "cfg-pairing",
            "cfg_pairing",
            "Classifier-free guidance with MultilevelModel: the variance that pairing the two copies' draws saves.",
            ("results/cfg_pairing.json",),
            options="argv",
        ),
        Benchmark(
            "pipeline-plan",
            "pipeline_plan",
            "Schedule plans on a stock DDPMPipeline running the digits ladder: every candidate's predicted error "
            "against its measured error, the pick against the top model alone and T-Stitch's default.",
            ("results/pipeline_plan.json",),
            options="argv",
        ),
        Benchmark(
            "real-ladders",
            "real_ladders",
            "SD 1.4 + BK-SDM and DiT S/B/XL from their configs: FLOP share against seconds share per level, "
            "eager and compiled, and the ML-EM plan made in FLOPs against the one made in seconds.",
            ("results/real_ladders.json",),
            options="argv",
        ),
    )
}


def get(name: str) -> Benchmark:
    """The benchmark called ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"benchmark: expected one of {', '.join(BENCHMARKS)}, got {name!r}") from None


def load(name: str) -> ModuleType:
    """The module of the benchmark called ``name``."""
    return get(name).load()
