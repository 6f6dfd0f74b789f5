"""Resumable benchmarks: a folder that keeps each finished unit of work (tensors + JSON), and shards.

A long benchmark (``mlem bench images`` on Fashion-MNIST: tens of runs of 2000 samples) is a list of
independent units. :class:`RunCache` stores each unit when it finishes, so that a run interrupted by
the end of a session resumes where it stopped. Several processes can fill one folder at once (one per
core): each claims a unit before computing it (:meth:`RunCache.claim`, a lock file with its pid) and
skips the units others hold; ``--shard i/k`` splits the units statically instead (:func:`shard_units`).

The folder's ``settings.json`` holds the fingerprint of what produced it (the ladder's weights, the
settings that change the numbers); a folder of other settings is refused, naming it, so a stale unit
is never mixed into new results.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._io import atomic_write, write_json

__all__ = ["RunCache", "file_sha256", "check_shard", "shard_units", "jsonable"]

SETTINGS_FILE = "settings.json"


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(obj):
    """``obj`` with numpy / torch scalars and arrays turned into Python numbers and lists (for JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _slug(key: str) -> str:
    """A file name for a unit's key, readable and unique (a hash of the key breaks ties)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:80]
    return f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class RunCache:
    """Finished units of one benchmark: ``put(key, tensors, meta, depends)``, ``fresh(key, depends)``, ``get(key)``.

    Args:
        folder: where units are kept (created); None keeps them in memory only (no resuming).
        fingerprint: JSON-able description of what produced the units. Raises ValueError naming
            ``cache_dir`` when the folder already holds units of another fingerprint, or a corrupt
            ``settings.json``.
    """

    def __init__(self, folder: Optional[str], fingerprint: Dict):
        self.folder, self.fingerprint = folder, jsonable(fingerprint)
        self._memory: Dict[str, Tuple[Dict[str, torch.Tensor], Dict]] = {}
        if folder is None:
            return
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"cache_dir: {folder} exists and is not a folder")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, SETTINGS_FILE)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    found = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"cache_dir: {path} is not readable JSON ({e}); remove the folder to start over"
                ) from None
            if found != self.fingerprint:
                diff = sorted(k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k))
                raise ValueError(
                    f"cache_dir: {folder} holds runs of other settings (differing: {', '.join(diff)}); "
                    "choose another folder or remove it"
                )
        elif set(os.listdir(folder)):
            raise ValueError(f"cache_dir: {folder} is not empty and holds no {SETTINGS_FILE}; refusing to use it")
        else:
            write_json(path, self.fingerprint)

    def path(self, key: str) -> str:
        """The unit's tensor file (its JSON sits beside it, same stem)."""
        return os.path.join(self.folder or "", _slug(key) + ".safetensors")

    def __contains__(self, key: str) -> bool:
        if key in self._memory:
            return True
        if self.folder is None:
            return False
        stem = self.path(key)[: -len(".safetensors")]
        return os.path.isfile(stem + ".safetensors") and os.path.isfile(stem + ".json")

    def fresh(self, key: str, depends: Optional[Dict] = None) -> bool:
        """Whether a finished unit ``key`` is kept and was made from the same ``depends`` (what it was computed
        from: weights digests, a calibration's hash); a stale unit is recomputed and replaced."""
        if key not in self:
            return False
        return self.get(key)[1].get("depends") == jsonable(depends)

    def put(self, key: str, tensors: Dict[str, torch.Tensor], meta: Dict, depends: Optional[Dict] = None) -> None:
        """Keep a finished unit (on disk: tensors first, then the JSON that marks it complete); ``depends``:
        what it was computed from (:meth:`fresh`)."""
        meta = jsonable(dict(meta, key=key, depends=depends))
        self._memory[key] = (tensors, meta)
        if self.folder is None:
            return
        from safetensors.torch import save_file

        path = self.path(key)
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(flat, tmp))
        write_json(path[: -len(".safetensors")] + ".json", meta)

    def _lock(self, key: str) -> str:
        return self.path(key)[: -len(".safetensors")] + ".lock"

    def claim(self, key: str) -> bool:
        """Take unit ``key`` for this process (a lock file holding its pid), so that other processes filling the
        same folder skip it; False when a live process holds it. A lock of a dead process (same machine) is
        taken over. Without a folder, always True."""
        if self.folder is None:
            return True
        lock = self._lock(key)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self.holder(key)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    return False
                try:
                    os.remove(lock)  # stale: its process is gone (or it is ours)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False

    def holder(self, key: str) -> Optional[int]:
        """The pid holding unit ``key``'s lock, or None."""
        try:
            with open(self._lock(key)) as f:
                return int(f.read().strip() or -1)
        except (FileNotFoundError, ValueError):
            return None

    def claimed_elsewhere(self, key: str) -> bool:
        """Whether a live process other than this one holds unit ``key``."""
        holder = self.holder(key)
        return holder is not None and holder != os.getpid() and _alive(holder)

    def release(self, key: str) -> None:
        """Drop this process's lock on ``key`` (after :meth:`put`, or when its computation failed)."""
        if self.folder is not None and self.holder(key) == os.getpid():
            try:
                os.remove(self._lock(key))
            except FileNotFoundError:
                pass

    def get(self, key: str) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """``(tensors, meta)`` of a finished unit; ValueError naming the file when it is missing or corrupt."""
        if key in self._memory:
            return self._memory[key]
        if key not in self:
            raise ValueError(f"cache_dir: no finished unit {key!r} in {self.folder}")
        from safetensors.torch import load_file

        path = self.path(key)
        try:
            tensors = load_file(path)
            with open(path[: -len(".safetensors")] + ".json") as f:
                meta = json.load(f)
        except Exception as e:  # safetensors / JSON errors of a damaged file
            raise ValueError(f"cache_dir: {path} (or its .json) is damaged ({e}); delete both to recompute") from None
        if meta.get("key") != key:
            raise ValueError(f"cache_dir: {path} holds {meta.get('key')!r}, not {key!r}; delete it to recompute")
        self._memory[key] = (tensors, meta)
        return tensors, meta


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_shard(shard: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``"i/k"`` (1 <= i <= k) -> ``(i - 1, k)``; None -> ``(None, None)``. ValueError naming ``shard`` otherwise."""
    if shard is None:
        return None, None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"shard: expected 'i/k' with 1 <= i <= k (e.g. 1/2), got {shard!r}")
    return int(m.group(1)) - 1, int(m.group(2))


def shard_units(units: Sequence, costs: Sequence[float], i: int, k: int) -> List:
    """The units of shard ``i`` of ``k``: the longest first, each to the least loaded shard (a deterministic
    balance of the estimated ``costs``), returned in their original order."""
    if len(units) != len(costs):
        raise ValueError("costs: expected one estimated cost per unit")
    load = [0.0] * k
    owner = {}
    for j in sorted(range(len(units)), key=lambda j: (-costs[j], j)):
        s = min(range(k), key=lambda s: (load[s], s))
        owner[j] = s
        load[s] += costs[j]
    return [u for j, u in enumerate(units) if owner[j] == i]
