"""Offline image quality: KID on the features of a small digit classifier, and pixel-space sliced Wasserstein.

KID (Binkowski et al. 2018) is the squared MMD between feature sets under the cubic
polynomial kernel k(a, b) = (a.b / d + 1)^3, estimated without bias (the diagonal terms are
dropped), so it is meaningful at small sample sizes and can be slightly negative. Inception
features need weights from the internet; here the features are the 64-d penultimate layer of
:class:`DigitClassifier`, a small CNN trained on scikit-learn's digits at 16x16 (weights
shipped in ``pretrained/digit_classifier.safetensors``, a ~150 KB file, retrainable with
:func:`train_digit_classifier` / ``mlem train-classifier``).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from ..diffusion.metrics import sliced_wasserstein
from .data import load_digits
from .ladder import load_tensors, save_tensors

__all__ = ["DigitClassifier", "train_digit_classifier", "load_digit_classifier", "kid_unbiased", "image_metrics",
           "DEFAULT_CLASSIFIER"]

DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(__file__), "pretrained", "digit_classifier.safetensors")


class DigitClassifier(torch.nn.Module):
    """A small CNN for 1x16x16 digits in [-1, 1]: two conv blocks, a 64-d feature layer, 10 logits."""

    def __init__(self, features: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, features), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, 16, 16) -> (n, 64) penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_digit_classifier(out: Optional[str] = None, *, epochs: int = 30, seed: int = 0,
                           holdout: float = 0.2) -> Tuple[DigitClassifier, Dict]:
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
    for epoch in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
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
    info = {"train_accuracy": acc_train, "holdout_accuracy": acc_hold, "epochs": epochs, "seed": seed,
            "holdout": holdout}
    if out:
        save_tensors(out, model.state_dict(), metadata={k: str(v) for k, v in info.items()})
    return model, info


def load_digit_classifier(path: str = DEFAULT_CLASSIFIER) -> DigitClassifier:
    """The shipped (or a retrained) classifier; CheckpointError naming the file if it is unreadable."""
    model = DigitClassifier()
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
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def image_metrics(x: torch.Tensor, reference: torch.Tensor, classifier: Optional[DigitClassifier] = None,
                  seed: int = 0) -> Dict[str, float]:
    """KID (digit-classifier features) and pixel sliced Wasserstein of samples ``x`` vs ``reference``.

    Both are (n, 1, 16, 16) in [-1, 1]; samples are clipped to [-1, 1] first (as images are).
    """
    classifier = classifier or load_digit_classifier()
    x = x.detach().float().clamp(-1, 1)
    with torch.no_grad():
        fx, fr = classifier.features(x), classifier.features(reference)
    return {
        "kid": kid_unbiased(fx, fr),
        "sliced_wasserstein": sliced_wasserstein(x, reference, projections=256,
                                                 generator=torch.Generator().manual_seed(seed)),
    }
