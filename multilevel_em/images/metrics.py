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

from ..diffusion.metrics import sliced_wasserstein
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


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh; negative rounding clipped to 0)."""
    w, v = torch.linalg.eigh((a + a.transpose(-1, -2)) / 2)
    return (v * w.clamp(min=0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def frechet_gaussian(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``, the square roots by
    eigh (so exact for any symmetric PSD matrices, no complex parts as with ``scipy.linalg.sqrtm``).

    Args:
        mu1, mu2: means, shape (d,) or batched (B, d).
        cov1, cov2: covariances, shape (d, d) or batched (B, d, d); symmetric PSD.

    Returns: a float64 tensor, shape () or (B,), in squared feature units. Raises ValueError on shape
    mismatch and FloatingPointError if the inputs are not finite.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    d = mu1.shape[-1]
    if mu2.shape[-1] != d or cov1.shape[-2:] != (d, d) or cov2.shape[-2:] != (d, d):
        raise ValueError(
            f"frechet: expected means (..., d) and covariances (..., d, d) with one d, got "
            f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    if not all(bool(torch.isfinite(t).all()) for t in (mu1, mu2, cov1, cov2)):
        raise FloatingPointError("frechet: the means or covariances are NaN or Inf")
    r = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(r @ cov2 @ r).clamp(min=0).sqrt().sum(-1)
    diag = lambda c: c.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return (mu1 - mu2).pow(2).sum(-1) + diag(cov1) + diag(cov2) - 2 * cross


def frechet_distance(fx: torch.Tensor, fy: torch.Tensor) -> float:
    """Fréchet distance of two feature sets (n, d), (m, d): Gaussians fitted by the sample mean and the
    unbiased (n - 1) covariance, then :func:`frechet_gaussian`. Biased upward at finite n (the fitted
    covariances are noisy), so compare values at equal sample sizes. Needs n, m >= 2."""
    fx, fy = fx.double(), fy.double()
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(
            f"frechet_distance: expected (n, d) and (m, d) features, got {tuple(fx.shape)} and {tuple(fy.shape)}"
        )
    if fx.shape[0] < 2 or fy.shape[0] < 2:
        raise ValueError(
            f"frechet_distance: expected at least 2 samples in each set, got {fx.shape[0]} and {fy.shape[0]}"
        )
    out = float(frechet_gaussian(fx.mean(0), torch.cov(fx.T), fy.mean(0), torch.cov(fy.T)))
    if out != out:
        raise FloatingPointError("frechet_distance: NaN (are the features finite?)")
    return out


# ---------------------------------------------------------------------------- bootstrap over samples


def bootstrap_counts(n: int, replicates: int, seed: int = 0) -> torch.Tensor:
    """Multiplicities of ``replicates`` bootstrap resamples of ``n`` samples, float64 (replicates, n), each
    row summing to n (row b: how often sample i was drawn, with replacement). One seeded draw, so runs
    that share their samples' noise can share the resamples: differences of their replicates are
    paired bootstrap replicates of the difference."""
    if n < 2 or replicates < 1:
        raise ValueError(f"bootstrap: expected n >= 2 samples and >= 1 replicate, got n={n}, replicates={replicates}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (replicates, n), generator=g)
    counts = torch.zeros(replicates, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(replicates, n, dtype=torch.float64))
    return counts


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


def frechet_bootstrap(fx: torch.Tensor, fy: torch.Tensor, counts: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """:func:`frechet_distance` of each bootstrap resample of ``fx`` (rows of ``counts``, (B, n)) against
    the whole of ``fy`` (fixed). Returns float64 (B,); ``chunk`` resamples at a time bound the memory
    (chunk x n x d doubles)."""
    fx, fy = fx.double(), fy.double()
    n = fx.shape[0]
    if counts.shape[-1] != n:
        raise ValueError(f"frechet_bootstrap: counts are for {counts.shape[-1]} samples, the features have {n}")
    mu_y, cov_y = fy.mean(0), torch.cov(fy.T)
    out = []
    for c in torch.split(counts.double(), chunk):
        mu = c @ fx / n  # (b, d)
        xw = c.sqrt().unsqueeze(-1) * fx  # (b, n, d)
        second = xw.transpose(1, 2) @ xw / n
        cov = (second - mu.unsqueeze(2) * mu.unsqueeze(1)) * (n / (n - 1))
        out.append(frechet_gaussian(mu, cov, mu_y.expand_as(mu), cov_y.expand_as(cov)))
    return torch.cat(out)


def percentile_ci(replicates: torch.Tensor, level: float = 0.95, center: Optional[float] = None) -> Tuple[float, float]:
    """The percentile-method interval of bootstrap ``replicates`` (B,): their (1 - level)/2 and
    (1 + level)/2 quantiles (linear interpolation). With ``center`` (the point estimate), the replicates
    are first shifted so that their mean is ``center``: the bootstrap's bias estimate
    ``mean(replicates) - center`` is removed (FD's replicates sit above the point estimate, since a
    resample repeats samples and the plug-in FD's finite-n bias grows). FloatingPointError if any
    replicate is NaN."""
    r = torch.as_tensor(replicates, dtype=torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise FloatingPointError("bootstrap: a replicate is NaN or Inf")
    if center is not None:
        r = r - (r.mean() - float(center))
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


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
