"""Image data sets as tensors in [-1, 1]: scikit-learn's digits, Fashion-MNIST, or any folder of PNG/JPEG files.

Each returns an :class:`ImageData` whose ``x`` has shape ``(n, channels, size, size)``, float32,
scaled to [-1, 1] (the range the noise-prediction networks are trained on).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch

from .._text import plural

__all__ = [
    "ImageData",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_dataset",
    "read_idx",
    "IMAGE_SUFFIXES",
    "FASHION_MNIST_DIR",
    "DATASETS",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the four IDX files (``apt-get install dataset-fashion-mnist``).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: The named data sets :func:`load_dataset` knows (anything else is taken as a folder of images).
DATASETS = ("digits", "fashion-mnist")

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


def read_idx(path: str) -> np.ndarray:
    """One IDX file (the MNIST format, gzipped or not) as a numpy array of its own dtype and shape.

    Raises ValueError naming the file if it is not a well-formed IDX file of unsigned bytes.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not readable ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape} ({int(np.prod(shape))} bytes), the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ValueError(
        f"data_dir: no Fashion-MNIST file {stem}[.gz] in {folder!r}. Install the data set with "
        "'apt-get install dataset-fashion-mnist' (it puts the IDX files in "
        f"{FASHION_MNIST_DIR}) or name the folder that holds them with --data-dir"
    )


def load_fashion_mnist(split: str = "train", size: int = 32, data_dir: str = None, labels: bool = False):
    """Fashion-MNIST (60,000 training / 10,000 test images, 28x28 grayscale), padded to 32x32, in [-1, 1].

    Args:
        split: ``"train"`` or ``"test"``.
        size: output side in pixels: 32 pads the 28x28 images with 2 pixels of background on each side;
            another size resizes the padded image bilinearly.
        data_dir: the folder holding the IDX files (``train-images-idx3-ubyte[.gz]``, ...); default
            :data:`FASHION_MNIST_DIR` (Debian's ``dataset-fashion-mnist``).
        labels: also return the class labels, an int64 tensor ``(n,)``.

    Returns:
        :class:`ImageData` with ``x`` of shape ``(n, 1, size, size)``, or ``(ImageData, labels)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    _check_size(size)
    folder = FASHION_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    if not os.path.isdir(folder):
        raise ValueError(
            f"data_dir: {folder!r} is not a folder. Install Fashion-MNIST with 'apt-get install dataset-fashion-mnist' "
            "or name the folder that holds its IDX files with --data-dir"
        )
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    if images.ndim != 3:
        raise ValueError(f"{folder}: {prefix} images: expected a (n, rows, cols) IDX file, got shape {images.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    pad = max(0, (32 - x.shape[-1]) // 2)
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # background is 0 (black) in [0, 1]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    data = ImageData(
        x=(x.clamp(0, 1) * 2 - 1).contiguous(), name="fashion-mnist" if split == "train" else "fashion-mnist-test"
    )
    if not labels:
        return data
    y = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if y.shape != (images.shape[0],):
        raise ValueError(f"{folder}: {prefix} labels: expected {images.shape[0]} labels, got shape {y.shape}")
    return data, torch.from_numpy(y.astype(np.int64))


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


def load_dataset(name: str, size: int = 16, channels: int = None, data_dir: str = None) -> ImageData:
    """``"digits"``, ``"fashion-mnist"`` (training split; IDX files in ``data_dir``) or a folder path.

    ``channels`` default: 1 for the named (grayscale) data sets, 3 for a folder.
    """
    if name in DATASETS:
        if channels not in (None, 1):
            raise ValueError(f"channels: {name} is grayscale (1 channel), got {channels}")
        if name == "digits":
            return load_digits(size)
        return load_fashion_mnist("train", size=size, data_dir=data_dir)
    return load_image_folder(name, size=size, channels=3 if channels is None else channels)


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ValueError(f"size: expected an int >= 4 (pixels), got {size!r}")
