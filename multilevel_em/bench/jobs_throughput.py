"""Throughput of a sampling job: this process vs Ray with 1 and 2 workers, side by side.

Runs the same :class:`~multilevel_em.jobs.SamplingJob` (the shipped digits ladder, ML-EM with a
planned budget) three times into fresh folders:

    local    run_job(job)                          one process, one torch thread
    ray-1    run_job(job, ray="local", workers=1)  a local Ray instance, one worker (actor)
    ray-2    run_job(job, ray="local", workers=2)  two workers

and reports samples per second of sampling (from the first shard submitted to the last one
written, Ray's start-up excluded) and of the whole call (start-up included), the speedup of 2
workers over 1, and whether the three runs produced bit-identical samples (they must).
Each worker uses one torch thread, so 2 workers can use both cores of a 2-core machine; the
ratio is only meaningful on an otherwise idle machine.

Usage::

    mlem bench jobs                 # n = 256, batch 32 (about 2 minutes on 2 cores)
    mlem bench jobs --quick         # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from .._io import write_json
from ..jobs import SamplingJob, load_samples, run_job
from .common import DIGITS_LADDER
from .outputs import add_overwrite_argument, check_outputs, default_outputs


def main(argv: Optional[List[str]] = None, *, command: Optional[str] = None) -> Dict:
    """``mlem bench jobs [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the command line
    recorded in the results (default: ``mlem bench jobs`` and the arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="mlem bench jobs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ladder", default=DIGITS_LADDER, help="Ladder folder (default: the shipped digits).")
    ap.add_argument("--n", type=int, default=256, help="Samples per run.")
    ap.add_argument("--batch-size", type=int, default=32, help="Samples per shard.")
    ap.add_argument("--budget", type=float, default=50.0, help="ML-EM budget, top-level equivalents per sample.")
    ap.add_argument("--quick", action="store_true", help="n = 8, batch 4, budget 10.")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default results/jobs_throughput.json; results/jobs_throughput_quick.json with --quick)",
    )
    add_overwrite_argument(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batch_size, args.budget = 8, 4, 10.0
    if args.n < 1 or args.batch_size < 1:
        ap.error("--n and --batch-size must be >= 1")
    out = args.out or default_outputs("jobs", args.quick)[0]
    check_outputs(ap, [out], args.overwrite)
    try:
        import ray  # noqa: F401
    except ImportError:
        ap.error("needs Ray: pip install 'multilevel-em[distributed]'")

    runs, samples = {}, {}
    tmp = tempfile.mkdtemp(prefix="mlem-jobs-bench-")
    try:
        for name, kw in (
            ("local", {}),
            ("ray-1", {"ray": "local", "workers": 1}),
            ("ray-2", {"ray": "local", "workers": 2}),
        ):
            job = SamplingJob(
                ladder=args.ladder,
                n=args.n,
                out=os.path.join(tmp, name),
                method="mlem",
                batch_size=args.batch_size,
                seed=0,
                budget=args.budget,
            )
            t0 = time.perf_counter()
            report = run_job(job, progress=False, echo=lambda *_: None, **kw)
            total = time.perf_counter() - t0
            samples[name] = load_samples(job.out)["x"]
            runs[name] = {
                "workers": report["workers"],
                "executor": report["executor"],
                "sampling_seconds": report["sampling_wall_seconds"],
                "total_seconds": total,
                "samples_per_second": report["throughput_samples_per_second"],
                "samples_per_second_with_startup": args.n / total,
                "worker_seconds_per_sample": report["worker_seconds_per_sample"],
                "top_equivalents_per_sample": report["top_equivalents_per_sample"],
            }
            print(
                f"{name:>6}: {runs[name]['samples_per_second']:.3g} samples/s sampling, "
                f"{runs[name]['samples_per_second_with_startup']:.3g} with start-up ({total:.1f} s)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    identical = all(np.array_equal(samples["local"], samples[k]) for k in ("ray-1", "ray-2"))
    speedup = runs["ray-2"]["samples_per_second"] / runs["ray-1"]["samples_per_second"]
    result = {
        "command": command or shlex.join(["mlem", "bench", "jobs", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared",
        "python": platform.python_version(),
        "ladder": args.ladder,
        "n": args.n,
        "batch_size": args.batch_size,
        "budget": args.budget,
        "quick": args.quick,
        "runs": runs,
        "speedup_2_workers_over_1": speedup,
        "bit_identical": identical,
    }
    write_json(out, result)
    print(f"2 workers / 1 worker: {speedup:.2f}x; samples bit-identical across runs: {identical}; wrote {out}")
    if not identical:
        raise SystemExit("samples differ between runs: the job is not deterministic")
    return result


if __name__ == "__main__":
    main()
