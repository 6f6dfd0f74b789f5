"""Small file helpers shared by every layer (no dependencies inside the package)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Callable


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` into a temporary file in the same folder, then rename
    it over ``path``: a crash leaves the old file (or none), never a half-written one.
    Creates the folder."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, data, *, indent: int = 2, allow_nan: bool = True) -> None:
    """Write ``data`` as JSON atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent, allow_nan=allow_nan)
            f.write("\n")

    atomic_write(path, write)


def remove_temporaries(*folders) -> None:
    """Remove the temporary files (``.NAME.*.tmp``) that :func:`atomic_write` leaves when its process is killed."""
    for folder in folders:
        for tmp in glob.glob(os.path.join(os.fspath(folder), ".*.tmp")):
            try:
                os.unlink(tmp)
            except OSError:
                pass
