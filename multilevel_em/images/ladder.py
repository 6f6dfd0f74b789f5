"""A ladder of diffusers ``UNet2DModel`` (or ``UNet2DConditionModel``) noise predictors of increasing width.

Folder layout (like a diffusers pipeline: one sub-folder per model, config as JSON next to
safetensors weights)::

    DIR/model_index.json                                 the ladder: levels, schedule, costs, training settings
    DIR/level_1/config.json                              UNet2DModel config (+ "_mlem": width, schedule, FLOPs)
    DIR/level_1/diffusion_pytorch_model.safetensors      weights used for sampling (EMA when trained with EMA)
    DIR/level_1/training_state.safetensors               optional: raw weights + AdamW state, to resume training
    DIR/level_1/training_state.json                      optional: iteration count, losses, settings
    DIR/level_2/...                                      (cheapest level first)
    DIR/calibration.json                                 optional: a multilevel_em.Calibration of the ladder

Each ``level_k`` folder loads with ``diffusers.UNet2DModel.from_pretrained(DIR/level_k)`` (the class
named by its ``_class_name``). Level costs are FLOPs per sample of one forward pass, counted by
``torch.utils.flop_counter``; for a conditional ladder (``UNet2DConditionModel`` levels, from
``mlem distill``) on zero conditioning of the shapes in ``model_index.json``'s ``"conditioning"``
(``{"encoder_hidden_states": [seq, dim], "class_labels": bool}``). Conditional ladders are sampled
with :class:`~multilevel_em.diffusion.MultilevelModel` (:mod:`.conditioning`).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import torch

from .._io import atomic_write, write_json
from ..diffusion import DiffusersUNetAdapter, VPSchedule
from ..engine import Ladder

__all__ = [
    "CheckpointError",
    "UNetLadder",
    "build_unet",
    "unet_flops",
    "load_ladder",
    "schedule_to_dict",
    "schedule_from_dict",
    "INDEX",
    "WEIGHTS",
    "SHIPPED_LADDERS",
    "resolve_ladder",
    "ladder_dataset",
]

#: The ladders that ship with the package, by the name ``--ladder NAME`` accepts.
SHIPPED_LADDERS = {name: os.path.join(os.path.dirname(__file__), "pretrained", name) for name in ("digits", "fashion")}


def resolve_ladder(name_or_path: str) -> str:
    """The folder of a shipped ladder's name (:data:`SHIPPED_LADDERS`), else ``name_or_path`` itself.

    A folder of that name in the working directory wins over a shipped ladder only when written as a path
    (``./digits``). Raises ValueError naming ``ladder`` when the result is not a folder."""
    path = SHIPPED_LADDERS.get(name_or_path, name_or_path)
    if not os.path.isdir(path):
        names = ", ".join(SHIPPED_LADDERS)
        raise ValueError(
            f"ladder: expected a ladder folder or one of the shipped ladders ({names}), got {name_or_path!r}"
        )
    return os.path.normpath(path)


def ladder_dataset(ladder: "UNetLadder") -> Optional[str]:
    """The data set a ladder was trained (or distilled) on, as ``load_dataset`` names it, or None when its
    ``model_index.json`` does not say (``training.dataset``; a distilled ladder's ``training.x0``)."""
    training = ladder.info.get("training") or {}
    name = training.get("dataset") or training.get("x0")
    return name if isinstance(name, str) else None


INDEX = "model_index.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
UNET_CONFIG = "config.json"
FORMAT = "multilevel_em.images.UNetLadder"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or inconsistent; the message names the file."""


def schedule_to_dict(s: VPSchedule) -> Dict:
    """``s.to_dict()`` (:meth:`VPSchedule.to_dict`, the one schedule format of the ladder files)."""
    return s.to_dict()


def schedule_from_dict(d: Dict, where: str = "schedule") -> VPSchedule:
    """:meth:`VPSchedule.from_dict`, raising CheckpointError (naming ``where``) on a malformed dict."""
    try:
        return VPSchedule.from_dict(d, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def build_unet(
    width: int, *, sample_size: int = 16, channels: int = 1, layers_per_block: int = 1, norm_groups: int = 4
):
    """A ``UNet2DModel`` with ``block_out_channels = (width, 2 width, 2 width)``, no attention.

    Three resolutions (size, size/2, size/4); FLOPs grow about as width^2.
    """
    from diffusers import UNet2DModel

    if isinstance(width, bool) or not isinstance(width, int) or width < norm_groups or width % norm_groups:
        raise ValueError(f"width: expected an int multiple of norm_groups={norm_groups}, got {width!r}")
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=norm_groups,
    )


def unet_flops(unet, sample_size: int, channels: int, conditioning: Optional[Dict] = None) -> float:
    """FLOPs of one forward pass on one sample (``torch.utils.flop_counter``: convolutions and matmuls).

    ``conditioning``: for a ``UNet2DConditionModel``, the shapes of one row
    (:attr:`~multilevel_em.images.conditioning.Conditioning.spec`); FLOPs are counted on zeros of them.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .conditioning import dummy_conditioning

    counter = FlopCounterMode(display=False)
    x = torch.zeros(1, channels, sample_size, sample_size)
    with counter, torch.no_grad():
        unet(x, torch.zeros(1, dtype=torch.int64), **dummy_conditioning(conditioning))
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- atomic files


def save_tensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json(path: str) -> Dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON (truncated or corrupt?): {e}") from None


def load_tensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file; CheckpointError naming the file if it is missing or corrupt."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError on bad headers and sizes
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


# ----------------------------------------------------------------------------- the ladder


class UNetLadder:
    """K UNet noise predictors sharing one sample size, channel count and VP schedule, cheapest first.

    Attributes:
        unets: the ``UNet2DModel`` s, in eval mode.
        widths: their base widths.
        costs: FLOPs per sample of one forward pass, nondecreasing.
        schedule: the :class:`VPSchedule` all were trained with.
        sample_size, channels: the image shape ``(channels, sample_size, sample_size)``.
        info: the rest of ``model_index.json`` (dataset, training settings).
    """

    def __init__(
        self,
        unets: Sequence,
        widths: Sequence[int],
        costs: Sequence[float],
        schedule: VPSchedule,
        info: Optional[Dict] = None,
    ):
        if len(unets) < 1 or not (len(unets) == len(widths) == len(costs)):
            raise ValueError("unets, widths, costs: expected the same nonzero number of each")
        self.unets = list(unets)
        self.widths = [int(w) for w in widths]
        self.costs = [float(c) for c in costs]
        self.schedule = schedule
        first = self.unets[0].config
        self.sample_size, self.channels = int(first.sample_size), int(first.in_channels)
        for k, u in enumerate(self.unets):
            c = u.config
            if (int(c.sample_size), int(c.in_channels), int(c.out_channels)) != (
                self.sample_size,
                self.channels,
                self.channels,
            ):
                raise ValueError(
                    f"level {k + 1}: UNet for {c.in_channels}->{c.out_channels} channels at {c.sample_size}px, but level 1 is "
                    f"{self.channels}->{self.channels} channels at {self.sample_size}px; a ladder's levels must agree"
                )
            u.eval()
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.unets)

    @property
    def conditioning(self) -> Optional[Dict]:
        """The conditioning shapes of a conditional ladder (``info["conditioning"]``), None if unconditional."""
        return self.info.get("conditioning") or None

    @property
    def conditional(self) -> bool:
        """Whether the levels are ``UNet2DConditionModel`` s (sampled with MultilevelModel, not MultilevelPipeline)."""
        return self.conditioning is not None

    @property
    def names(self) -> List[str]:
        return [f"width {w}" for w in self.widths]

    @property
    def shape(self):
        return (self.channels, self.sample_size, self.sample_size)

    def eps_models(self, trace: bool = False, compile: bool = False) -> List[DiffusersUNetAdapter]:
        """The UNets as eps models of continuous time ``(x, t) -> eps``.

        ``trace=True``: TorchScript-traced adapters (:class:`DiffusersUNetAdapter`), kept on the
        ladder so that each UNet is traced once (per dtype/device) however often they are asked for.
        ``compile=True``: adapters running their UNet through ``torch.compile``, kept on the ladder likewise, so
        that each (UNet, batch size) compiles once across pipeline calls.
        """
        if compile:
            cached = getattr(self, "_compiled_models", None)
            if cached is None or [m.unet for m in cached] != self.unets:
                cached = self._compiled_models = [
                    DiffusersUNetAdapter(u, self.schedule, compile=True) for u in self.unets
                ]
            return list(cached)
        if not trace:
            return [DiffusersUNetAdapter(u, self.schedule) for u in self.unets]
        cached = getattr(self, "_traced_models", None)
        if cached is None or [m.unet for m in cached] != self.unets:
            cached = self._traced_models = [DiffusersUNetAdapter(u, self.schedule, trace=True) for u in self.unets]
        return list(cached)

    def ladder(self, trace: bool = False) -> Ladder:
        """An engine :class:`~multilevel_em.Ladder` of eps models, costs in FLOPs per sample."""
        return Ladder(self.eps_models(trace), self.costs, self.names)

    def index(self) -> Dict:
        return {
            "_class_name": "MultilevelPipeline",
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "levels": [f"level_{k + 1}" for k in range(len(self))],
            "widths": self.widths,
            "costs": self.costs,
            "cost_unit": "FLOPs per sample",
            "sample_size": self.sample_size,
            "channels": self.channels,
            "schedule": schedule_to_dict(self.schedule),
            **{k: v for k, v in self.info.items() if k not in _INDEX_KEYS},
        }

    def save(self, directory: str) -> None:
        """Write the folder layout of the module docstring (weights and configs only; no training state)."""
        for k, u in enumerate(self.unets):
            save_level(os.path.join(directory, f"level_{k + 1}"), u, self.widths[k], self.costs[k], self.schedule)
        write_json(os.path.join(directory, INDEX), self.index())

    def __repr__(self) -> str:
        return f"UNetLadder(widths={self.widths}, {self.channels}x{self.sample_size}x{self.sample_size})"


_INDEX_KEYS = {
    "_class_name",
    "format",
    "version",
    "levels",
    "widths",
    "costs",
    "cost_unit",
    "sample_size",
    "channels",
    "schedule",
}


def unet_config(unet, width: int, cost: float, schedule: VPSchedule) -> Dict:
    config = {
        "_class_name": type(unet).__name__,
        **{k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
    }
    config["_mlem"] = {"width": width, "flops": cost, "schedule": schedule_to_dict(schedule)}
    return config


def save_level(directory: str, unet, width: int, cost: float, schedule: VPSchedule, state_dict=None) -> None:
    """Write ``config.json`` and the sampling weights (``state_dict`` or the UNet's own) of one level."""
    write_json(os.path.join(directory, UNET_CONFIG), unet_config(unet, width, cost, schedule))
    save_tensors(
        os.path.join(directory, WEIGHTS),
        state_dict if state_dict is not None else unet.state_dict(),
        metadata={"format": "pt"},
    )


#: The diffusers model classes a ladder level may be (its config's ``_class_name``).
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


def load_unet(directory: str, schedule: Optional[VPSchedule] = None):
    """One level: (unet, width, flops, schedule). CheckpointError naming the file if anything is wrong."""
    import diffusers

    cfg_path = os.path.join(directory, UNET_CONFIG)
    config = read_json(cfg_path)
    cls_name = config.get("_class_name", "UNet2DModel")
    if cls_name not in UNET_CLASSES:
        raise CheckpointError(f'{cfg_path}: "_class_name" {cls_name!r}, expected one of {list(UNET_CLASSES)}')
    UNet = getattr(diffusers, cls_name)
    mlem = config.pop("_mlem", None)
    if not isinstance(mlem, dict) or "schedule" not in mlem:
        raise CheckpointError(f'{cfg_path}: no "_mlem" entry (width, flops, schedule); not written by multilevel_em')
    level_schedule = schedule_from_dict(mlem["schedule"], f'{cfg_path}: "_mlem"."schedule"')
    if schedule is not None and level_schedule != schedule:
        raise CheckpointError(
            f"{cfg_path}: this UNet was trained with schedule {level_schedule}, but the ladder uses {schedule}; "
            "levels with different noise schedules cannot be combined"
        )
    try:
        unet = UNet.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as e:
        raise CheckpointError(f"{cfg_path}: not a valid {cls_name} config: {e}") from None
    weights_path = os.path.join(directory, WEIGHTS)
    state = load_tensors(weights_path)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: weights do not fit the config in {cfg_path}: {e}") from None
    unet.eval()
    return unet, int(mlem["width"]), float(mlem["flops"]), level_schedule


def _check_costs(directory: str, index: Dict, widths: List[int], costs: List[float], unets: List) -> None:
    """The index's widths and costs must be the levels' own, and the costs (FLOPs counted again from the
    loaded UNets) must not fall: a misordered ladder would make its cheapest UNet the "top" level."""
    index_path = os.path.join(directory, INDEX)
    if list(index.get("widths", widths)) != widths:
        raise CheckpointError(
            f'{index_path}: "widths" {index.get("widths")} disagree with the levels\' configs {widths}'
        )
    stated = index.get("costs", costs)
    if (
        not isinstance(stated, list)
        or len(stated) != len(costs)
        or any(not isinstance(a, (int, float)) or abs(a - b) > 1e-6 * b for a, b in zip(stated, costs))
    ):
        raise CheckpointError(f'{index_path}: "costs" {stated} disagree with the levels\' configs {costs}')
    size, channels = int(index["sample_size"]), int(index["channels"])
    spec = index.get("conditioning")
    kinds = {type(u).__name__ for u in unets}
    if len(kinds) > 1 or (spec is None) != (kinds == {"UNet2DModel"}):
        raise CheckpointError(
            f'{index_path}: levels of classes {sorted(kinds)} with "conditioning" {spec!r}; a '
            'ladder\'s levels are all UNet2DModel (no "conditioning") or all UNet2DConditionModel '
            "(with it)"
        )
    measured = [unet_flops(u, size, channels, spec) for u in unets]
    names = index["levels"]
    for k, (a, b) in enumerate(zip(measured, measured[1:])):
        if b < a:
            raise CheckpointError(
                f"{directory}: the levels' costs do not rise: {names[k + 1]} ({b:.4g} FLOPs per sample) is cheaper than "
                f"{names[k]} ({a:.4g}); a ladder's folders go cheapest first (level_1 the smallest UNet)"
            )
    for k, (a, b) in enumerate(zip(measured, costs)):
        if abs(a - b) > 1e-6 * a:
            raise CheckpointError(
                f"{os.path.join(directory, names[k], UNET_CONFIG)}: states {b:.6g} FLOPs per sample, "
                f"but its UNet counts {a:.6g}"
            )


def load_ladder(directory: str) -> UNetLadder:
    """Load a ladder folder; refuses levels that disagree on sample size, channels or schedule."""
    index_path = os.path.join(directory, INDEX)
    index = read_json(index_path)
    if index.get("format") != FORMAT:
        raise CheckpointError(f'{index_path}: not a UNet ladder (expected "format": "{FORMAT}")')
    if index.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{index_path}: unsupported version {index.get('version')!r} (expected {FORMAT_VERSION})")
    if "schedule" not in index:
        raise CheckpointError(f'{index_path}: no "schedule" entry')
    schedule = schedule_from_dict(index["schedule"], f'{index_path}: "schedule"')
    unets, widths, costs = [], [], []
    for _k, name in enumerate(index.get("levels", [])):
        unet, w, c, _ = load_unet(os.path.join(directory, name), schedule)
        c_ = unet.config
        if (int(c_.sample_size), int(c_.in_channels), int(c_.out_channels)) != (
            int(index["sample_size"]),
            int(index["channels"]),
            int(index["channels"]),
        ):
            raise CheckpointError(
                f"{os.path.join(directory, name, UNET_CONFIG)}: UNet for {c_.in_channels} channels at {c_.sample_size}px, "
                f"but {index_path} says {index['channels']} channels at {index['sample_size']}px; levels must agree"
            )
        unets.append(unet)
        widths.append(w)
        costs.append(c)
    if not unets:
        raise CheckpointError(f"{index_path}: no levels")
    _check_costs(directory, index, widths, costs, unets)
    info = {k: v for k, v in index.items() if k not in _INDEX_KEYS}
    return UNetLadder(unets, widths, costs, schedule, info)
