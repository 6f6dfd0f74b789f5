"""Shared helpers and fixtures of the test suite (tests/<layer>/ mirrors multilevel_em/<layer>/).

Statistical tests use fixed seeds and a tolerance of 5 standard errors unless stated
otherwise: for a correct engine a single such check fails with probability about 6e-7,
and since the seeds are fixed, a passing test passes every time.

Helpers are imported (``from conftest import F64, rms``); fixtures are requested by name:

- ``tiny_ladder`` (session): the folder of a tiny calibrated image ladder, trained once per run;
  ``nan_ladder`` (session): a copy whose top level has NaN weights. Tests must not write into
  either folder (copy it first): the fixture checks at the end of the run that nothing changed.
- ``tiny_unet``, ``tiny_unet2d_condition``, ``tiny_dit``: tiny diffusers models built from configs with
  random weights (no downloads).

The test folders have no ``__init__.py``: test file names must be unique across folders.
Tests that run a whole benchmark, demo or training end to end are marked ``slow``;
``pytest -m "not slow"`` is the fast path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Callable, Dict, List, Sequence

import pytest
import torch

from multilevel_em._fit import loglog_slope
from multilevel_em.engine import Ladder

F64 = torch.float64

# The tests use small tensors: one intra-op thread is as fast, and it avoids OpenMP threads
# spinning against each other when the suite shares its cores (that doubled its run time).
torch.set_num_threads(1)


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(ys) against log(xs): the library's log-log fit
    (:func:`multilevel_em._fit.loglog_slope` fits log(cost) against log(1/error)) with its sign turned."""
    return -loglog_slope(ys, xs)[0]


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """sqrt(mean over samples of |x_b - ref_b|^2)."""
    d = (x - ref).reshape(x.shape[0], -1)
    return float(d.pow(2).sum(1).mean().sqrt())


class Counting:
    """Wraps a drift level and counts the rows (sample-evaluations) it was called on."""

    def __init__(self, f: Callable):
        self.f = f
        self.rows = 0
        self.calls = 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        self.calls += 1
        return self.f(x, t)


def wiggle_levels(amplitudes: Sequence[float]) -> List[Callable]:
    """f^l(x, t) = -x + a_l sin(3x + t): an OU-like drift with a perturbation of size a_l."""

    def make(a: float):
        return lambda x, t: -x + a * torch.sin(3.0 * x + t)

    return [make(a) for a in amplitudes]


def three_level_ladder(costs=(1.0, 4.0, 16.0)) -> Ladder:
    """Three levels with distinct values everywhere: f^1 = -x, f^2 = f^1 + 0.5 sin(3x + t),
    f^3 = f^2 + 0.3 cos(2x - t)."""
    f1 = lambda x, t: -x
    f2 = lambda x, t: -x + 0.5 * torch.sin(3.0 * x + t)
    f3 = lambda x, t: -x + 0.5 * torch.sin(3.0 * x + t) + 0.3 * torch.cos(2.0 * x - t)
    return Ladder([f1, f2, f3], list(costs))


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, *, n_se: float = 5.0, bias: float = 0.0):
    """Sample mean and covariance within n_se standard errors (Gaussian formulas) plus an allowed bias."""
    n = x.shape[0]
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= n_se * se_mean + bias).all(), (x.mean(0), mean)
    d = torch.diagonal(cov)
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() <= n_se * se_cov + bias).all(), (torch.cov(x.T), cov)


# ----------------------------------------------------------------------------- tiny diffusers models


# ----------------------------------------------------------------------------- tiny diffusers models

# One home, shared with the quick benchmark runs: multilevel_em.testing.
from multilevel_em.testing import tiny_dit, tiny_unet, tiny_unet2d_condition  # noqa: E402


def tiny_vae():
    """A tiny ``AutoencoderKL`` (4 latent channels), random weights (seed 0): the stock pipelines need one."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[8], latent_channels=4, norm_num_groups=8, layers_per_block=1).eval()


def tiny_sd_pipeline(unet, scheduler):
    """A stock ``StableDiffusionPipeline`` around ``unet`` with a tiny VAE, no text encoder (pass prompt embeds)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- tiny Fashion-MNIST files


def write_idx(path, array, compress: bool = False) -> None:
    """Write ``array`` (uint8) as an IDX file (gzip-compressed when ``compress``), as Fashion-MNIST ships."""
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(raw)


def write_fashion_files(folder, n_train: int, n_test: int, seed: int = 1) -> str:
    """Random 28x28 "Fashion-MNIST" IDX files (train and t10k, images and labels) in ``folder``; returns it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), np.arange(n) % 10)
    return str(folder)


# ----------------------------------------------------------------------------- tiny image ladders


def train_tiny_ladder(out: str, widths: Sequence[int] = (4, 8), iters: int = 4, save_every: int = 2) -> str:
    """Train a UNet ladder on 16x16 digits (batch 4) in ``out`` and calibrate it (8 paths of 18 steps, seed 0)."""
    from multilevel_em.images import MultilevelPipeline, load_digits, train_ladder

    ladder = train_ladder(
        load_digits(16), out, widths=list(widths), iters=iters, batch=4, save_every=save_every, loss_plot=False
    )
    pipe = MultilevelPipeline(ladder)
    pipe.calibrate(n=8, steps=18, generator=torch.Generator().manual_seed(0))
    pipe.save_calibration(out)
    return out


def _folder_digest(folder: str) -> Dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, f), folder): hashlib.sha256(
            open(os.path.join(root, f), "rb").read()
        ).hexdigest()
        for root, _, files in os.walk(folder)
        for f in files
    }


def _unchanged(folder: str):
    """Yield ``folder``, then fail if a test changed it (a shared fixture: tests must copy it to write)."""
    before = _folder_digest(folder)
    yield folder
    if _folder_digest(folder) != before:
        pytest.fail(f"a test wrote into the shared ladder folder {folder}: copy it first (shutil.copytree)")


@pytest.fixture(scope="session")
def tiny_ladder(tmp_path_factory):
    """The folder of a calibrated 2-level image ladder (widths 4, 8) trained for 4 iterations. Read-only."""
    pytest.importorskip("diffusers")
    yield from _unchanged(train_tiny_ladder(str(tmp_path_factory.mktemp("tiny") / "ladder")))


@pytest.fixture(scope="session")
def nan_ladder(tiny_ladder, tmp_path_factory):
    """A copy of ``tiny_ladder`` whose top UNet (level 2, width 8) has NaN weights. Read-only."""
    from safetensors.torch import load_file, save_file

    from multilevel_em.images.ladder import WEIGHTS

    out = str(tmp_path_factory.mktemp("nan") / "ladder")
    shutil.copytree(tiny_ladder, out)
    path = os.path.join(out, "level_2", WEIGHTS)
    state = load_file(path)
    save_file(
        {k: torch.full_like(v, float("nan")) if v.dtype.is_floating_point else v for k, v in state.items()},
        path,
        metadata={"format": "pt"},
    )
    yield from _unchanged(out)


__all__ = [
    "F64",
    "fit_slope",
    "rms",
    "assert_moments",
    "Counting",
    "wiggle_levels",
    "three_level_ladder",
    "tiny_unet",
    "tiny_unet2d_condition",
    "tiny_dit",
    "train_tiny_ladder",
    "write_idx",
    "write_fashion_files",
]
