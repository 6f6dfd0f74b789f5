"""Images: UNet ladders trained on small image data sets, a multilevel pipeline, and image metrics.

    from multilevel_em.images import MultilevelPipeline
    pipe = MultilevelPipeline.from_pretrained("multilevel_em/images/pretrained/digits")
    out = pipe(16, method="mlem", steps=200, generator=torch.Generator().manual_seed(0))
    out.images (numpy, (n, H, W, C) in [0, 1]), out.pil, out.report

Imports :mod:`multilevel_em.diffusion` and the engine; neither imports this package.
"""

from .conditioning import Conditioning, load_conditioning, sample_ladder
from .data import ImageData, load_dataset, load_digits, load_image_folder
from .distill import distill_ladder, load_teacher
from .ladder import CheckpointError, UNetLadder, build_unet, load_ladder, unet_flops
from .pipeline import MultilevelPipeline, PipelineOutput, image_grid
from .train import plot_losses, train_ladder

__all__ = [
    "CheckpointError",
    "Conditioning",
    "load_conditioning",
    "sample_ladder",
    "distill_ladder",
    "load_teacher",
    "ImageData",
    "MultilevelPipeline",
    "PipelineOutput",
    "image_grid",
    "UNetLadder",
    "build_unet",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_ladder",
    "plot_losses",
    "train_ladder",
    "unet_flops",
]
