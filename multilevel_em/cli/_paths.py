"""Output paths checked before any work is spent: one check for every command's --out/--plot options.

Each check raises :class:`click.BadParameter` naming the CLI option and the path, and leaves
nothing on disk (a probe file in the deepest existing folder is created and removed again).
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import click

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
        raise click.BadParameter(f"cannot write {path}: {existing} is not writable ({e.strerror or e})",
                                 param_hint=option) from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: Optional[str], option: str, *, suffixes: Optional[Sequence[str]] = None,
                      overwrite: bool = True) -> None:
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

