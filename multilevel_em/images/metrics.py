"""Offline image quality: KID and Fréchet distance on the features of a small classifier, and pixel-space
sliced Wasserstein.

KID (Binkowski et al. 2018) is the squared MMD between feature sets under the cubic
polynomial kernel k(a, b) = (a.b / d + 1)^3, estimated without bias (the diagonal terms are
dropped), so it is meaningful at small sample sizes and can be slightly negative. The Fréchet
distance (FD; FID with these features instead of Inception's) fits a Gaussian to each feature set
and is biased upward at finite sample sizes (by about tr(cov)/n terms), so compare FDs at equal n. Inception
features need weights from the internet; here the features are the 64-d penultimate layer of
:class:`DigitClassifier`, a small CNN trained on scikit-learn's digits at 16x16 (weights
shipped in ``pretrained/digit_classifier.safetensors``, a ~150 KB file, retrainable with
:func:`train_digit_classifier` / ``mlem train-classifier``). For Fashion-MNIST the features are the
128-d penultimate layer of :class:`FashionClassifier` (``pretrained/fashion_classifier.safetensors``,
trained on the 60,000 training images, accuracy measured on the 10,000 test images;
:func:`train_fashion_classifier` / ``mlem train-classifier --dataset fashion-mnist``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..diffusion.metrics import (
    bootstrap_counts,
    frechet_bootstrap,
    frechet_distance,
    frechet_gaussian,
    percentile_ci,
    sliced_wasserstein,
)
from .data import load_digits, load_fashion_mnist
from .ladder import load_tensors, save_tensors

__all__ = [
    "DigitClassifier",
    "train_digit_classifier",
    "load_digit_classifier",
    "kid_unbiased",
    "image_metrics",
    "DEFAULT_CLASSIFIER",
    "frechet_gaussian",
    "frechet_distance",
    "bootstrap_counts",
    "kid_bootstrap",
    "frechet_bootstrap",
    "percentile_ci",
    "FashionClassifier",
    "train_fashion_classifier",
    "load_fashion_classifier",
    "FASHION_CLASSIFIER",
    "QualityReference",
    "quality_reference",
]

DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(__file__), "pretrained", "digit_classifier.safetensors")
#: The shipped Fashion-MNIST feature extractor (``mlem train-classifier --dataset fashion-mnist``).
FASHION_CLASSIFIER = os.path.join(os.path.dirname(__file__), "pretrained", "fashion_classifier.safetensors")


class DigitClassifier(torch.nn.Module):
    """A small CNN for 1x16x16 digits in [-1, 1]: two conv blocks, a 64-d feature layer, 10 logits."""

    def __init__(self, features: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 4 * 4, features),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, 16, 16) -> (n, 64) penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_digit_classifier(
    out: Optional[str] = None, *, epochs: int = 30, seed: int = 0, holdout: float = 0.2
) -> Tuple[DigitClassifier, Dict]:
    """Train :class:`DigitClassifier` on the digits (random shifts of up to 1 pixel); save it to
    ``out`` when given (the shipped file is ``DEFAULT_CLASSIFIER``).

    Returns the model (eval mode) and ``{"train_accuracy", "holdout_accuracy", "epochs", "seed"}``,
    the held-out accuracy measured on the ``holdout`` fraction of the images, never trained on.
    """
    data = load_digits(16)
    from sklearn.datasets import load_digits as _sk

    y = torch.as_tensor(_sk().target, dtype=torch.int64)
    x = data.x
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_hold = int(len(x) * holdout)
    hold, train = perm[:n_hold], perm[n_hold:]
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            xb = x[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc_train = float((model(x[train]).argmax(1) == y[train]).float().mean())
        acc_hold = float((model(x[hold]).argmax(1) == y[hold]).float().mean())
    info = {
        "train_accuracy": acc_train,
        "holdout_accuracy": acc_hold,
        "epochs": epochs,
        "seed": seed,
        "holdout": holdout,
    }
    if out:
        save_tensors(out, model.state_dict(), metadata={k: str(v) for k, v in info.items()})
    return model, info


def load_digit_classifier(path: str = DEFAULT_CLASSIFIER) -> DigitClassifier:
    """The shipped (or a retrained) classifier; CheckpointError naming the file if it is unreadable."""
    model = DigitClassifier()
    model.load_state_dict(load_tensors(path))
    return model.eval()


class FashionClassifier(torch.nn.Module):
    """A small CNN for 1x32x32 Fashion-MNIST images in [-1, 1]: three conv blocks, a 128-d feature layer, 10 logits."""

    def __init__(self, features: int = 128):
        super().__init__()
        c = torch.nn.Conv2d
        self.body = torch.nn.Sequential(
            c(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            c(32, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            c(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            c(64, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            c(64, 128, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(128 * 4 * 4, features),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(features, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, 32, 32) -> (n, 128) penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    with torch.no_grad():
        hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def train_fashion_classifier(
    out: Optional[str] = None,
    *,
    epochs: int = 8,
    seed: int = 0,
    data_dir: Optional[str] = None,
    batch: int = 128,
    lr: float = 2e-3,
    progress=None,
) -> Tuple[FashionClassifier, Dict]:
    """Train :class:`FashionClassifier` on the 60,000 Fashion-MNIST training images (random horizontal flips
    and shifts of up to 2 pixels; Adam, learning rate halved every 3 epochs); save it to ``out`` when given.

    Returns the model (eval mode) and ``{"train_accuracy", "test_accuracy", "epochs", "seed", ...}``, the test
    accuracy measured on the 10,000 test images, never trained on. ``progress`` is called with 1 per batch.
    """
    train, y = load_fashion_mnist("train", size=32, data_dir=data_dir, labels=True)
    test, y_test = load_fashion_mnist("test", size=32, data_dir=data_dir, labels=True)
    x = train.x
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seed the initial weights (and dropout) without touching the caller's RNG
        torch.manual_seed(seed)
        model = FashionClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                xb = x[idx]
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
                loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if progress:
                    progress(1)
            sched.step()
    model.eval()
    info = {
        "train_accuracy": _accuracy(model, x, y),
        "test_accuracy": _accuracy(model, test.x, y_test),
        "epochs": epochs,
        "seed": seed,
        "batch": batch,
        "lr": lr,
        "dataset": "fashion-mnist",
    }
    if out:
        save_tensors(out, model.state_dict(), metadata={k: str(v) for k, v in info.items()})
    return model, info


def load_fashion_classifier(path: str = FASHION_CLASSIFIER) -> FashionClassifier:
    """The shipped (or a retrained) Fashion-MNIST classifier; CheckpointError naming the file if it is unreadable."""
    model = FashionClassifier()
    model.load_state_dict(load_tensors(path))
    return model.eval()


def kid_unbiased(fx: torch.Tensor, fy: torch.Tensor) -> float:
    """Unbiased MMD^2 of two feature sets (n, d), (m, d) under k(a, b) = (a.b / d + 1)^3."""
    fx, fy = fx.double(), fy.double()
    n, m, d = fx.shape[0], fy.shape[0], fx.shape[1]
    if n < 2 or m < 2:
        raise ValueError(f"kid: expected at least 2 samples in each set, got {n} and {m}")
    kxx = (fx @ fx.T / d + 1) ** 3
    kyy = (fy @ fy.T / d + 1) ** 3
    kxy = (fx @ fy.T / d + 1) ** 3
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def image_metrics(
    x: torch.Tensor, reference: torch.Tensor, classifier: Optional[DigitClassifier] = None, seed: int = 0
) -> Dict[str, float]:
    """KID (digit-classifier features) and pixel sliced Wasserstein of samples ``x`` vs ``reference``.

    Both are (n, 1, 16, 16) in [-1, 1]; samples are clipped to [-1, 1] first (as images are).
    """
    classifier = classifier or load_digit_classifier()
    x = x.detach().float().clamp(-1, 1)
    with torch.no_grad():
        fx, fr = classifier.features(x), classifier.features(reference)
    return {
        "kid": kid_unbiased(fx, fr),
        "sliced_wasserstein": sliced_wasserstein(
            x, reference, projections=256, generator=torch.Generator().manual_seed(seed)
        ),
    }


# ---------------------------------------------------------------------------- Fréchet distance


def kid_bootstrap(fx: torch.Tensor, fy: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """:func:`kid_unbiased` of each bootstrap resample of ``fx`` (rows of ``counts``, (B, n)) against the
    whole of ``fy`` (held fixed: it is the reference set). Within a resample, only pairs of two different
    original samples count (weight ``c_a c_b``, a != b): a sample drawn twice is not paired with itself,
    whose large ``k(x, x)`` would bias the replicates upward by O(1/n). Returns float64 (B,). With
    ``counts`` all ones this is :func:`kid_unbiased` exactly."""
    fx, fy = fx.double(), fy.double()
    n, m, d = fx.shape[0], fy.shape[0], fx.shape[1]
    if counts.shape[-1] != n:
        raise ValueError(f"kid_bootstrap: counts are for {counts.shape[-1]} samples, the features have {n}")
    kxx = (fx @ fx.T / d + 1) ** 3
    kyy = (fy @ fy.T / d + 1) ** 3
    kxy_rows = ((fx @ fy.T / d + 1) ** 3).mean(1)  # (n,)
    yy = float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))
    c = counts.double()
    quad = ((c @ kxx) * c).sum(1) - (c * c) @ kxx.diagonal()
    pairs = n * n - (c * c).sum(1)
    return quad / pairs + yy - 2 * (c @ kxy_rows) / n


@dataclass
class QualityReference:
    """What generated images of one data set are scored against: the protocol stated beside every number.

    Attributes:
        dataset: ``"digits"`` or ``"fashion-mnist"``.
        classifier: the feature extractor (its ``features(x)`` are scored).
        extractor: one line naming it (layer, dimension, weights file).
        reference: the fixed reference images ``(m, 1, H, W)`` in [-1, 1].
        reference_name: one line naming them (split, count).
        floor_pool: held-out real images the floor draws ``n`` from (the training split), or None when the
            reference set is the training set itself (digits: all 1797 images are the reference).
    """

    dataset: str
    classifier: torch.nn.Module
    extractor: str
    reference: torch.Tensor
    reference_name: str
    floor_pool: Optional[torch.Tensor] = None

    def features(self, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """float64 features of images ``x`` ``(n, 1, H, W)`` (clipped to [-1, 1]), in batches."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.classifier.features(x[i : i + batch].float().clamp(-1, 1)).double()
                    for i in range(0, len(x), batch)
                ]
            )


def quality_reference(dataset: str, size: int, data_dir: Optional[str] = None) -> QualityReference:
    """The shipped extractor and reference set of ``dataset`` for images of ``size`` pixels.

    ``"digits"``: the 64-d :class:`DigitClassifier` features against all 1797 scikit-learn digits;
    ``"fashion-mnist"``: the 128-d :class:`FashionClassifier` features against the 10,000 test images,
    the floor drawn from the 60,000 training images (IDX files in ``data_dir``, default the Debian package's
    folder). Raises ValueError naming ``dataset`` for any other data set or a size the extractor was not
    trained at."""
    if dataset == "digits":
        ref = load_digits(size).x
        return QualityReference(
            "digits",
            load_digit_classifier(),
            "DigitClassifier penultimate layer (64-d), digit_classifier.safetensors",
            ref,
            f"all {len(ref)} scikit-learn digits at {size}x{size} (fixed; also the training set)",
        )
    if dataset in ("fashion-mnist", "fashion-mnist-test"):
        if size != 32:
            raise ValueError(f"dataset: the Fashion-MNIST classifier scores 32x32 images, got {size}x{size}")
        test = load_fashion_mnist("test", size=32, data_dir=data_dir).x
        train = load_fashion_mnist("train", size=32, data_dir=data_dir).x
        return QualityReference(
            "fashion-mnist",
            load_fashion_classifier(),
            "FashionClassifier penultimate layer (128-d), fashion_classifier.safetensors",
            test,
            f"the {len(test)} Fashion-MNIST test images (fixed)",
            floor_pool=train,
        )
    raise ValueError(f"dataset: no shipped quality reference for {dataset!r} (expected 'digits' or 'fashion-mnist')")
