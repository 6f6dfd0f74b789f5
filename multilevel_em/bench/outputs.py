"""When a benchmark may replace a file: one rule for every ``mlem bench NAME``.

* A ``--quick`` run never writes the full run's results: its default paths are the registered ones with
  ``_quick`` before the suffix (:meth:`.registry.Benchmark.outputs`: ``results/images.json`` ->
  ``results/images_quick.json``).
* An existing output file is replaced only with ``--overwrite``, and that is checked after the arguments
  and before any work is spent, so a refused run leaves every file as it was.

The click commands (:mod:`multilevel_em.cli.bench`, with :func:`multilevel_em.cli._paths.check_output_file`)
and the benchmarks that parse their own arguments (``options="argv"``, with :func:`check_outputs` here) both
follow it. Importing this module imports no benchmark (nor torch).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence, Tuple

from .registry import get

__all__ = ["default_outputs", "output_problem", "check_outputs", "add_overwrite_argument", "threads_argument"]


def default_outputs(name: str, quick: bool) -> Tuple[str, ...]:
    """The files benchmark ``name`` writes by default (:meth:`.registry.Benchmark.outputs`)."""
    return get(name).outputs(quick)


def output_problem(path: Optional[str], overwrite: bool) -> Optional[str]:
    """Why ``path`` may not be written (a folder; an existing file without ``overwrite``), or None."""
    if path is None:
        return None
    path = os.fspath(path)
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    if not overwrite and os.path.exists(path):
        return f"{path} exists; pass --overwrite to replace it (or --out elsewhere)"
    return None


def check_outputs(parser: argparse.ArgumentParser, paths: Sequence[Optional[str]], overwrite: bool) -> None:
    """For a benchmark's own argument parser: ``parser.error`` (exit status 2, nothing written) naming the first
    path of ``paths`` that may not be written (:func:`output_problem`)."""
    for path in paths:
        problem = output_problem(path, overwrite)
        if problem is not None:
            parser.error(problem)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag every benchmark takes."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (without it, a run that would replace one stops before any work)",
    )


def threads_argument(text: str) -> int:
    """argparse ``type=`` for ``--threads``: an int from 1 to this machine's CPU count (argparse names the option
    and exits with status 2 otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    cpus = os.cpu_count() or 1
    if not 1 <= n <= cpus:
        raise argparse.ArgumentTypeError(f"expected 1 to {cpus} (this machine's CPUs), got {n}")
    return n
