"""Run a :class:`SamplingJob` in this process or on Ray; resume after an interruption.

    from multilevel_em.jobs import SamplingJob, run_job
    job = SamplingJob(ladder="multilevel_em/images/pretrained/digits", n=50_000, batch_size=256,
                      seed=0, method="mlem", budget=100, out="samples/")
    report = run_job(job)                       # one process
    report = run_job(job, ray="local", workers=2)   # a local Ray instance with 2 workers
    report = run_job(job, ray="10.0.0.5:6379")      # join a running cluster

The driver (this process) owns the output folder: it writes ``job.json``, receives each
finished shard from a worker and writes it atomically (temporary file, then rename), so
workers need no shared file system, and a crash anywhere leaves only complete shards.  It locks
the folder while it runs, so a second driver on the same folder refuses instead of repeating the work.
Each worker (a :class:`ShardWorker`; on Ray an actor) loads the ladder once, from the bytes the
driver put in Ray's object store, and samples shards with one torch thread.  A worker process
that dies mid-shard is restarted and the shard retried (``max_restarts``/``max_task_retries``);
the shard's samples do not depend on which worker computes it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
import time
import zipfile
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from .._io import atomic_write, remove_temporaries, write_json
from .._text import plural
from .job import (
    JOB_FILE,
    LOCK_FILE,
    REPORT_FILE,
    SHARD_PATTERN,
    JobError,
    SamplingJob,
    png_path,
    read_ladder_bundle,
    shard_path,
)

__all__ = ["ShardWorker", "run_job", "completed_shards", "load_samples"]

#: Fault injection for tests: with MLEM_JOBS_CRASH_DIR set, a worker exits abruptly (as if
#: killed) the first time it starts each shard listed in MLEM_JOBS_CRASH_SHARDS (comma-separated);
#: a marker file in MLEM_JOBS_CRASH_DIR records the crash, so the retry goes through.
CRASH_DIR_ENV, CRASH_SHARDS_ENV = "MLEM_JOBS_CRASH_DIR", "MLEM_JOBS_CRASH_SHARDS"


def _maybe_crash(k: int) -> None:
    directory = os.environ.get(CRASH_DIR_ENV)
    shards = os.environ.get(CRASH_SHARDS_ENV, "")
    if not directory or str(k) not in [s.strip() for s in shards.split(",")]:
        return
    try:
        fd = os.open(os.path.join(directory, f"crashed-{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(137)  # no cleanup, no exception: like SIGKILL


class ShardWorker:
    """Samples shards of one job; loads the ladder once.

    Args:
        job: the :class:`SamplingJob` (its ``out`` is not used here).
        bundle: ``{relative path: bytes}`` of the ladder's files (:func:`read_ladder_bundle`);
            None loads ``job.ladder`` from this machine's disk.
    """

    def __init__(self, job: SamplingJob, bundle: Optional[Dict[str, bytes]] = None):
        from ..images import MultilevelPipeline

        self.job = job
        if bundle is None:
            self.pipe = MultilevelPipeline.from_pretrained(job.ladder)
        else:
            with tempfile.TemporaryDirectory(prefix="mlem-ladder-") as tmp:
                for rel, data in bundle.items():
                    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                    with open(os.path.join(tmp, rel), "wb") as f:
                        f.write(data)
                self.pipe = MultilevelPipeline.from_pretrained(tmp)
        try:
            self.pipe.to(job.device)
        except (RuntimeError, AssertionError) as e:  # torch: unknown device, or no CUDA in this build
            raise ValueError(f"device: cannot use {job.device!r} on this worker: {e}") from None

    def run(self, k: int) -> Dict:
        """Sample shard ``k``: returns its arrays (see :mod:`multilevel_em.jobs.job`) and ``shard``."""
        import torch

        from ..engine import sample_generators

        _maybe_crash(k)
        start, stop = self.job.shard_range(k)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same numerics on every worker; small UNets gain nothing from threads
        try:
            t0 = time.perf_counter()
            out = self.pipe(
                stop - start,
                generator=sample_generators(self.job.seed, range(start, stop)),
                **self.job.pipeline_kwargs(),
            )
            wall = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)
        r = out.report
        return {
            "shard": k,
            "x": out.x.detach().float().cpu().numpy(),
            "images": np.round(out.images * 255).astype(np.uint8),
            "indices": np.arange(start, stop, dtype=np.int64),
            "evaluations": np.array([lv["evaluations_per_sample"] * (stop - start) for lv in r["levels"]]),
            "level_numbers": np.array([lv["level"] for lv in r["levels"]], dtype=np.int64),
            "top_equivalents": np.float64(r["top_equivalents_per_sample"] * (stop - start)),
            "wall_seconds": np.float64(wall),
            "steps": np.int64(r["steps"]),
            "plan": np.array(json.dumps(r.get("plan"))),  # the ML-EM plan followed (JSON; "null" if none)
        }


class _RayShardWorker(ShardWorker):
    """A ShardWorker as a Ray actor: the ladder bundle comes as ``[ref]`` (a reference inside a list
    is passed as is, and fetched here, also when Ray restarts the actor after a crash)."""

    def __init__(self, job: SamplingJob, bundle_ref: list):
        import ray

        super().__init__(job, ray.get(bundle_ref[0]))


# ----------------------------------------------------------------------------- the output folder

_SHARD_KEYS = ("x", "images", "indices", "evaluations", "level_numbers", "top_equivalents", "wall_seconds", "steps")

#: Members a shard may lack: shards written before the plan was stored in them are still complete.
_OPTIONAL_KEYS = ("plan",)


#: The small members of a shard (the report reads only these; npz members load one at a time).
_SUMMARY_KEYS = ("indices", "evaluations", "level_numbers", "top_equivalents", "wall_seconds", "steps", "plan")


def _read_shard(job: SamplingJob, path: str, k: int, keys=_SUMMARY_KEYS) -> Optional[Dict]:
    """The shard's arrays ``keys`` if the file is shard ``k`` of ``job`` with every member, else None.

    Shards are written whole (temporary file, then rename), so a file with the right members
    and indices is complete; the samples themselves are not read unless asked for."""
    try:
        with np.load(path) as z:
            if not set(_SHARD_KEYS) <= set(z.files) <= set(_SHARD_KEYS + _OPTIONAL_KEYS):
                return None
            data = {key: z[key] for key in set(keys) | {"indices"} if key in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    start, stop = job.shard_range(k)
    if not np.array_equal(data["indices"], np.arange(start, stop)):
        return None
    return data


def completed_shards(job: SamplingJob) -> List[int]:
    """Indices of the shards already complete in ``job.out``."""
    return [
        k
        for k in range(job.n_shards)
        if os.path.exists(shard_path(job.out, k))
        and _read_shard(job, shard_path(job.out, k), k, keys=("indices",)) is not None
    ]


def load_samples(out: str, *, partial: bool = False) -> Dict[str, np.ndarray]:
    """The samples of the job in ``out``, concatenated in sample order: ``x``, ``images``, ``indices``.

    Every ``shard-*.npz`` file in ``out`` must be a shard of this job (its number within the job's
    shard count and its sample indices those of that shard); a file that is not raises
    :class:`JobError` naming it, rather than mixing another job's samples in.
    Raises :class:`JobError` if the folder holds no job, or if the job is unfinished (some shards
    missing) unless ``partial=True``, which returns the complete shards only (check ``indices``)."""
    manifest = _read_manifest(out)
    if manifest is None:
        raise JobError(f"{out}: no {JOB_FILE}; not a sampling job folder")
    n, batch_size, n_shards = manifest["job"]["n"], manifest["job"]["batch_size"], manifest["n_shards"]
    parts = {"x": [], "images": [], "indices": []}
    for path in sorted(glob.glob(os.path.join(os.fspath(out), "shard-*.npz"))):
        k = _shard_number(path)
        if k is None or not 0 <= k < n_shards:
            raise JobError(
                f"{path}: not a shard of this job (it has shards 0 to {n_shards - 1}, named like "
                f"{os.path.basename(shard_path(out, 0))}); move the file out of {out}"
            )
        try:
            with np.load(path) as z:
                arrays = {key: z[key] for key in parts}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise JobError(f"{path}: not a complete shard ({e}); rerun the job to compute it again") from None
        start, stop = k * batch_size, min(n, (k + 1) * batch_size)
        if not np.array_equal(arrays["indices"], np.arange(start, stop)) or len(arrays["x"]) != stop - start:
            raise JobError(
                f"{path}: holds samples other than this job's shard {k} (samples {start} to {stop - 1}); "
                f"it belongs to another job: move it out of {out}"
            )
        for key in parts:
            parts[key].append(arrays[key])
    if not parts["x"]:
        raise JobError(f"{out}: no complete shard yet")
    if not partial and len(parts["x"]) < n_shards:
        raise JobError(
            f"{out}: unfinished job, {len(parts['x'])} of {plural(n_shards, 'shard')} complete; rerun the "
            "job to finish it, or pass partial=True for the complete shards only"
        )
    return {key: np.concatenate(v) for key, v in parts.items()}


def _shard_number(path: str) -> Optional[int]:
    """k for a file named like ``shard_path(out, k)``, else None."""
    name = os.path.basename(path)
    prefix, _, suffix = SHARD_PATTERN.partition("{:06d}")
    digits = name[len(prefix) : len(name) - len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
    return int(digits) if digits.isdigit() and len(digits) >= 6 else None


def _read_manifest(out: str) -> Optional[Dict]:
    """``out``'s job.json, validated: the description it holds must hash to its fingerprint (so a hand edit
    of ``n``, ``budget``, ... is caught) and its shard count must follow from it. None if there is none."""
    path = os.path.join(os.fspath(out), JOB_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise JobError(f"{path}: unreadable ({e}); not resuming into {out}") from None
    job = manifest.get("job") if isinstance(manifest, dict) else None
    if not isinstance(job, dict) or not isinstance(manifest.get("fingerprint"), str):
        raise JobError(
            f"{path}: expected an object with a 'job' description and its 'fingerprint'; not a job file "
            f"this version wrote (delete the folder to start over)"
        )
    if SamplingJob.fingerprint(job) != manifest["fingerprint"]:
        raise JobError(
            f"{path}: the job description does not match its fingerprint: the file was edited by hand. "
            "A job's settings cannot be changed in place: restore the file, or start the new job in "
            "another folder"
        )
    n, batch_size = job.get("n"), job.get("batch_size")
    valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, batch_size))
    if not valid or manifest.get("n_shards") != -(-n // batch_size):
        raise JobError(
            f"{path}: 'n_shards' ({manifest.get('n_shards')!r}) does not follow from n={n!r} and "
            f"batch_size={batch_size!r}; the file was edited by hand: restore it"
        )
    return manifest


def _prepare_folder(job: SamplingJob, manifest: Dict) -> None:
    """Create ``job.out`` with its job.json, or check that it holds this same job."""
    out = os.fspath(job.out)
    old = _read_manifest(out)
    if old is None:
        if os.path.isdir(out) and _entries(out):
            raise JobError(f"out: {out} exists and is not empty, but holds no {JOB_FILE}; choose another folder")
        if os.path.exists(out) and not os.path.isdir(out):
            raise JobError(f"out: {out} exists and is not a folder")
        write_json(os.path.join(out, JOB_FILE), manifest)
        return
    if old.get("fingerprint") != manifest["fingerprint"]:
        before, now = old.get("job", {}), manifest["job"]
        changed = sorted(k for k in set(before) | set(now) if k != "ladder" and before.get(k) != now.get(k))
        what = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed) or "its fingerprint"
        raise JobError(
            f"out: {out} holds a different job ({what}); refusing to resume into it. Use another folder, "
            "or delete this one to start over."
        )


def _entries(out: str) -> List[str]:
    """The folder's entries other than the lock file."""
    return [e for e in os.listdir(out) if e != LOCK_FILE]


def _remove_if_empty(out: str) -> None:
    """Remove a folder this run created if it holds nothing but the lock file."""
    if os.path.isdir(out) and not _entries(out):
        shutil.rmtree(out, ignore_errors=True)


def _lock_folder(out: str, echo: Callable[[str], None]) -> int:
    """Create ``out`` if needed and lock it for this process: an exclusive ``flock`` on ``out/job.lock``.

    Returns the open descriptor; closing it releases the lock, and so does the kernel when the
    process dies, so a lock file that a killed run left behind never blocks (the file stays; only
    the lock counts).  The holder writes its pid and host into the file for the message below.

    Raises:
        JobError: another process holds the lock (naming its pid), or the folder cannot be created.
    """
    import fcntl

    if os.path.exists(out) and not os.path.isdir(out):
        raise JobError(f"out: {out} exists and is not a folder")
    path = os.path.join(out, LOCK_FILE)
    for _ in range(5):
        try:
            os.makedirs(out, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise JobError(f"out: cannot create {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
            raise JobError(
                f"{out} is in use by another mlem process{who}; wait for it to finish or stop it, "
                "then run the same command again to resume"
            ) from None
        except OSError as e:  # a file system without locks: run, but say that nothing guards the folder
            echo(f"warning: cannot lock {path} ({e.strerror or e}); do not run a second process on {out}")
            return fd
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # the holder removed the folder (a failed fresh run) while we waited: lock the new one
    raise JobError(f"out: could not lock {path}; is another process creating and removing {out}?")


def _clean_temporaries(out: str) -> None:
    """Remove temporary files that a killed run left behind (never complete shards)."""
    remove_temporaries(out, os.path.join(out, "png"))


def _write_shard(job: SamplingJob, result: Dict) -> None:
    """PNGs first (if asked), then the shard file: its presence marks the shard complete."""
    if job.png:
        from ..images.pipeline import to_pil

        for i, im in zip(result["indices"].tolist(), to_pil(result["images"].astype(np.float32) / 255)):
            atomic_write(png_path(job.out, i), lambda tmp, im=im: im.save(tmp, format="PNG"))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{key: result[key] for key in _SHARD_KEYS + _OPTIONAL_KEYS if key in result})
            f.flush()
            os.fsync(f.fileno())

    atomic_write(shard_path(job.out, result["shard"]), write)


# ----------------------------------------------------------------------------- executors


def _run_local(worker: ShardWorker, pending: List[int]) -> Iterator[Dict]:
    for k in pending:
        yield worker.run(k)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, before anything is written, if nothing listens at a Ray address host:port."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise JobError(f"ray: expected 'local', 'auto' or an address HOST:PORT (or ray://HOST:PORT), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise JobError(f"ray: cannot reach a Ray cluster at {address} ({e}); nothing was written") from None


def _ray_init(address: str, workers: Optional[int]):
    try:
        import ray
    except ImportError:
        raise JobError("ray: Ray is not installed: pip install 'multilevel-em[distributed]'") from None
    if ray.is_initialized():
        return ray, False
    env = {k: os.environ[k] for k in (CRASH_DIR_ENV, CRASH_SHARDS_ENV) if k in os.environ}
    kw = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    try:
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count() or 1, **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... depending on the address
        raise JobError(f"ray: cannot connect to {address}: {e}") from None
    return ray, True


def _run_ray(job: SamplingJob, pending: List[int], bundle: Dict[str, bytes], ray_mod, workers: int) -> Iterator[Dict]:
    from ray.util import ActorPool

    gpus = 1 if job.device.startswith("cuda") else 0
    remote = ray_mod.remote(num_cpus=1, num_gpus=gpus, max_restarts=3, max_task_retries=3)(_RayShardWorker)
    bundle_ref = ray_mod.put(bundle)  # once in the object store, fetched by each (re)started worker
    actors = [remote.remote(job, [bundle_ref]) for _ in range(max(1, min(workers, len(pending))))]
    pool = ActorPool(actors)
    for k in pending:
        pool.submit(lambda actor, k: actor.run.remote(k), k)
    try:
        while pool.has_next():
            yield pool.get_next_unordered()
    finally:
        for a in actors:
            ray_mod.kill(a)


# ----------------------------------------------------------------------------- the job


def run_job(
    job: SamplingJob,
    *,
    ray: Optional[str] = None,
    workers: Optional[int] = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Run (or resume) ``job``; returns the final report, also written to ``out/report.json``.

    Args:
        job: the :class:`SamplingJob`.
        ray: None (this process), ``"local"`` (start a local Ray instance with ``workers`` CPUs),
            ``"auto"`` or ``"HOST:PORT"`` / ``"ray://HOST:PORT"`` (join a running cluster).
        workers: number of Ray workers (default: the local CPU count, or the cluster's CPUs).
        progress: show a progress bar over the job's samples.
        echo: where to print messages.

    The driver locks ``out`` for the whole run (``out/job.lock``); a second process on the same
    folder raises JobError at once instead of computing the same shards. With ``method="mlem"``
    and no rates, the report holds the plan the workers followed (``plan``, as in a grid's report).

    Raises:
        JobError: the folder holds another job or is in use by another process, Ray cannot be
            reached (nothing written), or a shard could not be written (the job stops; complete
            shards stay, rerun to resume).
        CheckpointError: the ladder cannot be read.
    """
    if not isinstance(job, SamplingJob):
        raise TypeError(f"job: expected a SamplingJob, got {type(job).__name__}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    if ray is not None and (not isinstance(ray, str) or not ray):
        raise ValueError(f"ray: expected 'local', 'auto' or HOST:PORT, got {ray!r}")
    bundle, digest = read_ladder_bundle(job.ladder)
    if ray is not None:
        _check_reachable(ray)
    manifest = job.manifest(digest)
    out = os.fspath(job.out)
    created = not os.path.exists(out)
    t_start = time.perf_counter()
    lock = _lock_folder(out, echo)  # held for the whole run: a second process on this folder refuses
    try:
        return _run_in_folder(
            job, manifest, bundle, created, t_start, ray=ray, workers=workers, progress=progress, echo=echo
        )
    finally:  # remove the file, then unlock: a process that opened it meanwhile sees it gone and retries
        try:
            os.unlink(os.path.join(out, LOCK_FILE))
        except OSError:
            pass
        os.close(lock)


def _run_in_folder(job, manifest, bundle, created, t_start, *, ray, workers, progress, echo) -> Dict:
    """run_job, once this process holds the folder's lock."""
    from .._progress import progress_bar

    out = os.fspath(job.out)
    try:
        fresh = _read_manifest(out) is None  # this run writes job.json
    except JobError:
        if created:
            _remove_if_empty(out)
        raise
    ray_mod, started = (None, False)

    def undo_fresh_folder() -> None:
        """A failure before any shard was written leaves no trace of a job this run started."""
        if not fresh or completed_shards(job):
            return
        if os.path.exists(os.path.join(out, JOB_FILE)):
            os.unlink(os.path.join(out, JOB_FILE))
        _clean_temporaries(out)
        if created:
            _remove_if_empty(out)

    try:
        if ray is not None:
            ray_mod, started = _ray_init(ray, workers)
        _prepare_folder(job, manifest)
    except JobError:
        if created:
            _remove_if_empty(out)
        if started:
            ray_mod.shutdown()
        raise
    _clean_temporaries(out)
    done = completed_shards(job)
    pending = [k for k in range(job.n_shards) if k not in set(done)]
    n_done = sum(job.shard_range(k)[1] - job.shard_range(k)[0] for k in done)
    if done:
        echo(
            f"resuming {out}: {len(done)} of {plural(job.n_shards, 'shard')} ({plural(n_done, 'sample')}) "
            "already complete"
        )
    results = iter(())
    computed = 0
    try:
        if ray_mod is not None:
            n_workers = workers or int(ray_mod.cluster_resources().get("CPU", 1))
            if pending:
                results = _run_ray(job, pending, bundle, ray_mod, n_workers)
            where = f"Ray ({ray}, {plural(n_workers, 'worker')})"
        else:
            n_workers = 1
            if pending:
                results = _run_local(ShardWorker(job), pending)
            where = "this process"
        t_compute = time.perf_counter()
        with progress_bar(total=job.n, initial=n_done, desc="sample", unit="img", disable=not progress) as bar:
            for result in results:
                k = int(result["shard"])
                try:
                    _write_shard(job, result)
                except OSError as e:
                    complete = len(completed_shards(job))
                    raise JobError(
                        f"writing {shard_path(out, k)} failed: {e.strerror or e}; that shard was not written. "
                        f"The job stopped with {complete} of {job.n_shards} shards complete; rerun the same "
                        "command to resume"
                    ) from e
                computed += len(result["indices"])
                bar.update(len(result["indices"]))
    except Exception as e:
        undo_fresh_folder()
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError: the worker's exception
        if isinstance(cause, (ValueError, FloatingPointError)):
            raise JobError(f"a worker failed: {cause}") from None
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        if started:
            ray_mod.shutdown()
    wall = time.perf_counter() - t_start
    report = _report(job, manifest, computed, wall, time.perf_counter() - t_compute, where, n_workers)
    write_json(os.path.join(out, REPORT_FILE), report)
    return report


def _report(job, manifest, computed, wall, compute_wall, where, n_workers) -> Dict:
    evaluations, top, levels, steps, shard_seconds, plan = None, 0.0, None, None, 0.0, None
    for k in range(job.n_shards):
        data = _read_shard(job, shard_path(job.out, k), k)
        if data is None:
            raise JobError(f"{shard_path(job.out, k)}: missing or unreadable after the run")
        evaluations = data["evaluations"] if evaluations is None else evaluations + data["evaluations"]
        top += float(data["top_equivalents"])
        levels, steps = data["level_numbers"].tolist(), int(data["steps"])
        shard_seconds += float(data["wall_seconds"])
        if "plan" in data:  # every shard of a job follows the same plan
            plan = json.loads(str(data["plan"]))
    report = {
        "job": manifest["job"],
        "fingerprint": manifest["fingerprint"],
        "samples": job.n,
        "shards": job.n_shards,
        "steps": steps,
        "levels": [{"level": lv, "evaluations_per_sample": float(e) / job.n} for lv, e in zip(levels, evaluations)],
        "top_equivalents_per_sample": top / job.n,
        "computed_this_run": computed,
        "executor": where,
        "workers": n_workers,
        "wall_seconds": wall,
        "sampling_wall_seconds": compute_wall,
        "throughput_samples_per_second": computed / compute_wall if computed and compute_wall > 0 else None,
        "worker_seconds_per_sample": shard_seconds / job.n,
    }
    if plan is not None:
        report["plan"] = plan
    return report
