"""Small file helpers shared by every layer (no dependencies inside the package)."""

from __future__ import annotations

import json
import os
import tempfile


def write_json(path, data, *, indent: int = 2, allow_nan: bool = True) -> None:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then
    ``os.replace``, so a crash never leaves a half-written file. Creates the folder."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, allow_nan=allow_nan)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
