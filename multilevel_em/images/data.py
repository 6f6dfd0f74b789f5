"""Image data sets as tensors in [-1, 1]: scikit-learn's digits, or any folder of PNG/JPEG files.

Both return an :class:`ImageData` whose ``x`` has shape ``(n, channels, size, size)``, float32,
scaled to [-1, 1] (the range the noise-prediction networks are trained on).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch

from .._text import plural

__all__ = ["ImageData", "load_digits", "load_image_folder", "load_dataset", "IMAGE_SUFFIXES"]

#: File suffixes read by :func:`load_image_folder` (case-insensitive); other files are skipped and reported.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageData:
    """Images as a tensor plus what was left out.

    Attributes:
        x: float32 tensor ``(n, channels, size, size)`` in [-1, 1].
        name: ``"digits"`` or the folder's absolute path (so ``./imgs`` and ``/abs/imgs`` name the same data
            when a run is resumed).
        skipped: ``(file, reason)`` for every file that was not used (unreadable, not an image).
    """

    x: torch.Tensor
    name: str
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def size(self) -> int:
        return int(self.x.shape[-1])

    def report(self) -> str:
        """One line for humans: how many images were used and how many files skipped (with the first few)."""
        line = f"{self.name}: {plural(self.x.shape[0], 'image')} of {self.channels}x{self.size}x{self.size}"
        if self.skipped:
            shown = "; ".join(f"{os.path.basename(f)} ({why})" for f, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            line += f", {len(self.skipped)} file(s) skipped: {shown}{more}"
        return line


def load_digits(size: int = 16) -> ImageData:
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16), bilinearly upsampled to size x size, in [-1, 1]."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the digits data set needs scikit-learn: pip install 'multilevel-em[diffusion]'") from e
    _check_size(size)
    images = torch.as_tensor(_sk_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return ImageData(x=(images.clamp(0, 1) * 2 - 1).contiguous(), name="digits")


def load_image_folder(path: str, size: int = 16, channels: int = 3) -> ImageData:
    """Every PNG/JPEG file under ``path`` (recursively, sorted), resized to size x size, in [-1, 1].

    Args:
        path: a folder.
        size: output side in pixels (images are resized, not cropped).
        channels: 1 (grayscale) or 3 (RGB).

    Files that are not PNG/JPEG by suffix, or that PIL cannot decode, are skipped and listed in
    ``ImageData.skipped`` with the reason. Raises ValueError if no image is left.
    """
    from PIL import Image, UnidentifiedImageError

    _check_size(size)
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not os.path.isdir(path):
        raise ValueError(f"dataset: {path!r} is not a folder")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    arrays, skipped = [], []
    for f in files:
        if not f.lower().endswith(IMAGE_SUFFIXES):
            skipped.append((f, "not a PNG/JPEG file"))
            continue
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            skipped.append((f, f"unreadable: {type(e).__name__}: {e}"))
            continue
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    if not arrays:
        raise ValueError(f"dataset: no readable PNG/JPEG image in {path!r} ({len(skipped)} file(s) skipped)")
    x = torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0
    return ImageData(x=x.clamp(-1, 1).contiguous(), name=os.path.abspath(os.fspath(path)), skipped=skipped)


def load_dataset(name: str, size: int = 16, channels: int = None) -> ImageData:
    """``"digits"`` or a folder path (``channels`` default: 1 for digits, 3 for a folder)."""
    if name == "digits":
        if channels not in (None, 1):
            raise ValueError(f"channels: the digits are grayscale (1 channel), got {channels}")
        return load_digits(size)
    return load_image_folder(name, size=size, channels=3 if channels is None else channels)


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ValueError(f"size: expected an int >= 4 (pixels), got {size!r}")
