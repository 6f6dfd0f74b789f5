"""Output paths checked before any work is spent: one check for every command's --out/--plot options.

Each check raises :class:`click.BadParameter` naming the CLI option and the path, and leaves
nothing on disk (a probe file in the deepest existing folder is created and removed again).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Optional, Sequence

import click

from .._text import plural

#: Extensions that name an image format: a grid is written as PNG only, so the others are refused
#: rather than taken for a job folder (``grid.jpg/shard-000000.npz``).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")

#: Seeds: the generators take 64-bit seeds; negative ones would alias (-1 and 2**64 - 1 gave the same samples).
SEED = click.IntRange(min=0, max=2**63 - 1)


def _probe(path: str, option: str) -> None:
    """Fail unless a file can be created next to ``path`` (in its deepest existing ancestor folder)."""
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise click.BadParameter(f"cannot write {path}: {existing} is a file, not a folder", param_hint=option)
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".mlem-write-check-")
    except OSError as e:
        raise click.BadParameter(
            f"cannot write {path}: {existing} is not writable ({e.strerror or e})", param_hint=option
        ) from None
    os.close(fd)
    os.unlink(tmp)


#: The installed package's folder: the shipped ladders and classifiers live under it.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inside_package(path) -> bool:
    """``path`` is inside the installed package's folder (a shipped ladder, say), which commands do not write
    into unless a path there is named explicitly."""
    real, package = os.path.realpath(os.fspath(path)), os.path.realpath(PACKAGE_DIR)
    return os.path.commonpath([real, package]) == package


def check_output_file(
    path: Optional[str], option: str, *, suffixes: Optional[Sequence[str]] = None, overwrite: bool = True
) -> None:
    """``path`` can be written as a file: not a folder, its folder creatable and writable, the suffix
    one of ``suffixes`` (lower case, with the dot), and, unless ``overwrite``, not there yet."""
    if path is None:
        return
    path = os.fspath(path)
    if suffixes is not None and os.path.splitext(path)[1].lower() not in suffixes:
        raise click.BadParameter(f"{path}: expected a file name ending in {' or '.join(suffixes)}", param_hint=option)
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a folder, not a file", param_hint=option)
    if not overwrite and os.path.exists(path):
        raise click.BadParameter(f"{path} exists; pass --overwrite to replace it", param_hint=option)
    _probe(path, option)


def check_output_folder(path: Optional[str], option: str) -> None:
    """``path`` can be used as an output folder: a folder or nothing yet, with a writable parent."""
    if path is None:
        return
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise click.BadParameter(f"{path} exists and is not a folder", param_hint=option)
    _probe(os.path.join(path, "x") if os.path.isdir(path) else path, option)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass every range comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return v


#: A positive finite number (learning rates, budgets, targets, exponents).
POSITIVE = FiniteFloat(min=0, min_open=True)

#: torch threads: at most the machine's cores (OpenBLAS crashes on absurd thread counts).
THREADS = click.IntRange(min=1, max=os.cpu_count() or 1)


def check_device(name: str, option: str = "--device") -> None:
    """``name`` is a torch device this machine has: cpu, or cuda[:i] / mps with that device present."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise click.BadParameter(f"{name!r} is not a torch device ({e})", param_hint=option) from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise click.BadParameter(f"{name!r}: there is one CPU device, cpu (or cpu:0)", param_hint=option)
    elif device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise click.BadParameter(f"{name!r}: no CUDA device here (or this torch has no CUDA)", param_hint=option)
        if device.index is not None and device.index >= count:
            raise click.BadParameter(
                f"{name!r}: this machine has {plural(count, 'CUDA device')} (cuda:0 .. cuda:{count - 1})",
                param_hint=option,
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise click.BadParameter(f"{name!r}: MPS is not available here", param_hint=option)
    else:
        raise click.BadParameter(f"{name!r}: expected cpu, cuda, cuda:N or mps", param_hint=option)
