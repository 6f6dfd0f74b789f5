"""Fashion-MNIST reference scores: the floor and "clearly worse", in the shipped classifier's features.

Every image table on Fashion-MNIST states its scores next to two references measured here with the
same protocol (extractor, n, reference split):

* the floor: ``n`` training images (a random subset, never generated) against the 10,000 test
  images; no sampler can be expected to score below it at the same n;
* blurred training images (a Gaussian blur of 1 and 2 pixels): a reference for "clearly worse",
  images a reader still recognises but that lost their detail.

Scores: the Fréchet distance (FD) and KID of the 128-d penultimate features of
:class:`~multilevel_em.images.metrics.FashionClassifier` (``pretrained/fashion_classifier.safetensors``),
each with a 95% bootstrap interval over the ``n`` samples (the reference set held fixed; FD's
replicates centred on the point estimate, see :func:`~multilevel_em.images.metrics.percentile_ci`).

    mlem bench fashion-reference                 # n = 2000: results/fashion_reference.json
    mlem bench fashion-reference --n 10000       # at another sample size (FD is biased upward at small n)
    mlem bench fashion-reference --quick         # n = 200 (results/fashion_reference_quick.json)
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from typing import Dict, Optional

import torch

from .._io import write_json
from ..images.data import load_fashion_mnist
from ..images.metrics import (
    FASHION_CLASSIFIER,
    bootstrap_counts,
    frechet_bootstrap,
    frechet_distance,
    kid_bootstrap,
    kid_unbiased,
    load_fashion_classifier,
    percentile_ci,
)
from .outputs import add_overwrite_argument, check_outputs, default_outputs

__all__ = ["gaussian_blur", "fashion_reference", "main", "BLURS"]

#: The blurs of the "clearly worse" references: standard deviations in pixels (of the 32x32 images).
BLURS = (1.0, 2.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of images ``x`` ``(n, C, H, W)`` with standard deviation ``sigma`` pixels
    (kernel radius ceil(3 sigma), reflected borders); same shape and dtype."""
    if not sigma > 0:
        raise ValueError(f"sigma: expected a positive number of pixels, got {sigma!r}")
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _features(classifier, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([classifier.features(x[i : i + batch]) for i in range(0, len(x), batch)])


def fashion_reference(
    *,
    n: int = 2000,
    boot: int = 1000,
    seed: int = 0,
    data_dir: Optional[str] = None,
    classifier: str = FASHION_CLASSIFIER,
) -> Dict:
    """FD and KID (with 95% bootstrap intervals) of ``n`` training images, plain and blurred, against the
    10,000 test images, in the features of the classifier at ``classifier``. Returns the results dict."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2, got {n!r}")
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 20:
        raise ValueError(f"boot: expected an int >= 20 bootstrap resamples, got {boot!r}")
    start = time.perf_counter()
    train = load_fashion_mnist("train", size=32, data_dir=data_dir)
    test = load_fashion_mnist("test", size=32, data_dir=data_dir)
    if n > len(train.x):
        raise ValueError(f"n: the training split has {len(train.x)} images, fewer than n = {n}")
    model = load_fashion_classifier(classifier)
    idx = torch.randperm(len(train.x), generator=torch.Generator().manual_seed(seed))[:n]
    x = train.x[idx]
    candidates = {"training images (the floor)": x}
    for s in BLURS:
        candidates[f"training images blurred, sigma {s:g} px"] = gaussian_blur(x, s)
    ref = _features(model, test.x)
    counts = bootstrap_counts(n, boot, seed)
    rows = []
    for name, images in candidates.items():
        f = _features(model, images)
        fd, kid = frechet_distance(f, ref), kid_unbiased(f, ref)
        rows.append(
            {
                "images": name,
                "fd": fd,
                "fd_ci": list(percentile_ci(frechet_bootstrap(f, ref, counts), center=fd)),
                "kid": kid,
                "kid_ci": list(percentile_ci(kid_bootstrap(f, ref, counts))),
            }
        )
    return {
        "protocol": {
            "extractor": "FashionClassifier penultimate layer (128-d), " + classifier.rsplit("/", 1)[-1],
            "n": n,
            "reference": f"the {len(test.x)} Fashion-MNIST test images (fixed)",
            "samples": f"{n} training images drawn without replacement with torch.randperm (seed {seed})",
            "intervals": f"95% percentile bootstrap over the n samples, {boot} resamples (FD replicates centred)",
            "blurs_px": list(BLURS),
        },
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def main(argv=None, *, command: Optional[str] = None) -> Dict:
    """``mlem bench fashion-reference [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the
    command line recorded in the results (default: ``mlem bench fashion-reference`` and the arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="mlem bench fashion-reference", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="training images per score (default 2000)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--classifier", default=FASHION_CLASSIFIER, help="the feature extractor's weights")
    ap.add_argument("--quick", action="store_true", help="n = 200, 100 resamples (for tests)")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default results/fashion_reference.json; results/fashion_reference_quick.json with --quick)",
    )
    add_overwrite_argument(ap)
    args = ap.parse_args(argv)
    out = args.out or default_outputs("fashion-reference", args.quick)[0]
    check_outputs(ap, [out], args.overwrite)
    if args.quick:
        args.n, args.boot = min(args.n, 200), min(args.boot, 100)
    torch.set_num_threads(1)
    try:
        result = fashion_reference(
            n=args.n, boot=args.boot, seed=args.seed, data_dir=args.data_dir, classifier=args.classifier
        )
    except ValueError as e:
        ap.exit(2, f"mlem bench fashion-reference: error: {e}\n")
    result["command"] = command or " ".join(["mlem bench fashion-reference"] + [shlex.quote(a) for a in argv])
    write_json(out, result)
    for r in result["rows"]:
        print(
            f"{r['images']:<40} FD {r['fd']:8.3f} [{r['fd_ci'][0]:.3f}, {r['fd_ci'][1]:.3f}]   "
            f"KID {r['kid']:.4f} [{r['kid_ci'][0]:.4f}, {r['kid_ci'][1]:.4f}]"
        )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
