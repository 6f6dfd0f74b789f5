"""Conditioning of ``UNet2DConditionModel`` ladders: a file of rows, and sampling a conditional ladder.

The conditioning file is safetensors with (at least one of)

    encoder_hidden_states          (N, seq, dim) float   prompt embeddings (dim = the UNet's cross_attention_dim)
    class_labels                   (N,) int              class labels (the UNet has a class embedding)

and, for teachers trained with classifier-free guidance, optionally one unconditional row:

    uncond_encoder_hidden_states   (seq, dim) or (1, seq, dim)
    uncond_class_labels            () or (1,) int

Distillation (:mod:`.distill`) draws one row per training example (the same row for teacher and
student); with ``uncond_prob > 0`` an example takes the unconditional row instead with that
probability, so that the students also imitate the teacher's unconditional branch that guidance uses.

A conditional ladder folder (``mlem distill`` on a conditional teacher) is sampled with
:class:`~multilevel_em.diffusion.MultilevelModel` and a diffusers scheduler (:func:`sample_ladder`),
not with the unconditional :class:`~multilevel_em.images.MultilevelPipeline`::

    ladder = load_ladder("my-ladder")
    cond = load_conditioning("prompts.safetensors")
    x = sample_ladder(ladder, cond.rows(torch.arange(4)), probabilities=[0.3, 0.6], steps=25,
                      generator=torch.Generator().manual_seed(0)).x
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

__all__ = [
    "Conditioning",
    "load_conditioning",
    "dummy_conditioning",
    "is_conditional",
    "ladder_model",
    "sample_ladder",
    "ConditionalSamples",
    "KEYS",
]

KEYS = ("encoder_hidden_states", "class_labels", "uncond_encoder_hidden_states", "uncond_class_labels")
CONDITIONAL_CLASS = "UNet2DConditionModel"


def is_conditional(unet) -> bool:
    """Whether a diffusers model is a ``UNet2DConditionModel`` (takes ``encoder_hidden_states``)."""
    return type(unet).__name__ == CONDITIONAL_CLASS


def _has_class_embedding(config) -> bool:
    return config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None


def dummy_conditioning(spec: Optional[Dict], batch: int = 1) -> Dict[str, torch.Tensor]:
    """Zero conditioning of ``spec``'s shapes (:attr:`Conditioning.spec`) for ``batch`` rows: what FLOPs are counted on."""
    if not spec:
        return {}
    out = {}
    if spec.get("encoder_hidden_states"):
        seq, dim = spec["encoder_hidden_states"]
        out["encoder_hidden_states"] = torch.zeros(batch, int(seq), int(dim))
    if spec.get("class_labels"):
        out["class_labels"] = torch.zeros(batch, dtype=torch.int64)
    return out


@dataclass
class Conditioning:
    """N rows of conditioning (and optionally one unconditional row), as read from a conditioning file.

    Attributes:
        encoder_hidden_states: ``(N, seq, dim)`` float32 or None.
        class_labels: ``(N,)`` int64 or None.
        uncond_encoder_hidden_states: ``(1, seq, dim)`` or None.
        uncond_class_labels: ``(1,)`` int64 or None.
        source: the file it came from; fingerprint: sha256 of that file ("" for one built in memory).
    """

    encoder_hidden_states: Optional[torch.Tensor] = None
    class_labels: Optional[torch.Tensor] = None
    uncond_encoder_hidden_states: Optional[torch.Tensor] = None
    uncond_class_labels: Optional[torch.Tensor] = None
    source: str = "conditioning"
    fingerprint: str = ""

    def __post_init__(self):
        _check_rows(self, self.source)

    @property
    def n(self) -> int:
        """Number of (conditional) rows N."""
        t = self.encoder_hidden_states if self.encoder_hidden_states is not None else self.class_labels
        return int(t.shape[0])

    @property
    def has_uncond(self) -> bool:
        """Whether the unconditional row is given for every kind of conditioning present."""
        return (self.encoder_hidden_states is None) == (self.uncond_encoder_hidden_states is None) and (
            self.class_labels is None
        ) == (self.uncond_class_labels is None)

    @property
    def spec(self) -> Dict:
        """The shapes one row needs, JSON-able: ``{"encoder_hidden_states": [seq, dim] or None, "class_labels": bool}``."""
        e = self.encoder_hidden_states
        return {
            "encoder_hidden_states": None if e is None else [int(e.shape[1]), int(e.shape[2])],
            "class_labels": self.class_labels is not None,
        }

    def rows(self, idx: torch.Tensor, uncond: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The UNet keyword arguments for rows ``idx`` ``(batch,)`` int64; where the bool mask ``uncond``
        ``(batch,)`` is True, the unconditional row instead."""
        out = {}
        for key in ("encoder_hidden_states", "class_labels"):
            v = getattr(self, key)
            if v is None:
                continue
            v = v[idx]
            if uncond is not None and bool(uncond.any()):
                u = getattr(self, "uncond_" + key)
                mask = uncond.view(-1, *([1] * (v.ndim - 1)))
                v = torch.where(mask, u.expand_as(v), v)
            out[key] = v
        return out

    def check_for(self, unet, where: str = "conditioning") -> None:
        """ValueError (starting with ``where``) unless a row fits ``unet``'s config: ``dim`` = its
        ``cross_attention_dim``, class labels iff it has a class embedding, labels in its range."""
        config = dict(unet.config)
        src = self.source
        if self.encoder_hidden_states is None:
            raise ValueError(
                f"{where}: {src} has no 'encoder_hidden_states'; a UNet2DConditionModel needs prompt "
                "embeddings of shape (N, seq, cross_attention_dim)"
            )
        dim = config.get("cross_attention_dim")
        if isinstance(dim, (list, tuple)):
            dim = dim[0] if len(set(dim)) == 1 else None
        if dim is not None and int(self.encoder_hidden_states.shape[2]) != int(dim):
            raise ValueError(
                f"{where}: {src}: 'encoder_hidden_states' has shape "
                f"{tuple(self.encoder_hidden_states.shape)}, expected (N, seq, {dim}) (the teacher's "
                "cross_attention_dim)"
            )
        wants = _has_class_embedding(config)
        if wants and self.class_labels is None:
            raise ValueError(
                f"{where}: {src} has no 'class_labels', but the teacher has a class embedding "
                f"(num_class_embeds={config.get('num_class_embeds')}); expected a (N,) int tensor"
            )
        if not wants and self.class_labels is not None:
            raise ValueError(
                f"{where}: {src} has 'class_labels', but the teacher has no class embedding "
                "(num_class_embeds and class_embed_type are null); remove them"
            )
        k = config.get("num_class_embeds")
        if self.class_labels is not None and k is not None:
            for name in ("class_labels", "uncond_class_labels"):
                v = getattr(self, name)
                if v is not None and (int(v.min()) < 0 or int(v.max()) >= int(k)):
                    raise ValueError(
                        f"{where}: {src}: '{name}' has labels in [{int(v.min())}, {int(v.max())}], "
                        f"expected labels in [0, {int(k) - 1}] (num_class_embeds={k})"
                    )


def _bad(src: str, key: str, shape, expected: str) -> ValueError:
    return ValueError(f"conditioning: {src}: '{key}' has shape {tuple(shape)}, expected {expected}")


def _check_rows(c: Conditioning, src: str) -> None:
    e, y = c.encoder_hidden_states, c.class_labels
    if e is None and y is None:
        raise ValueError(
            f"conditioning: {src} holds neither 'encoder_hidden_states' (N, seq, dim) nor 'class_labels' (N,)"
        )
    if e is not None:
        if e.ndim != 3 or min(e.shape) < 1:
            raise _bad(src, "encoder_hidden_states", e.shape, "(N, seq, dim) with N, seq, dim >= 1")
        if not e.dtype.is_floating_point or not bool(torch.isfinite(e).all()):
            raise ValueError(
                f"conditioning: {src}: 'encoder_hidden_states' must be finite floats, got {e.dtype}"
                + ("" if not e.dtype.is_floating_point else " with NaN or Inf")
            )
        c.encoder_hidden_states = e.float().contiguous()
    if y is not None:
        if y.ndim != 1 or y.shape[0] < 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise _bad(src, "class_labels", y.shape, f"(N,) integers (got dtype {y.dtype})")
        if e is not None and y.shape[0] != e.shape[0]:
            raise _bad(src, "class_labels", y.shape, f"({e.shape[0]},): one label per row of 'encoder_hidden_states'")
        c.class_labels = y.long()
    u = c.uncond_encoder_hidden_states
    if u is not None:
        if e is None:
            raise ValueError(f"conditioning: {src}: 'uncond_encoder_hidden_states' without 'encoder_hidden_states'")
        if not u.dtype.is_floating_point or not bool(torch.isfinite(u).all()):  # the rule of the main rows
            raise ValueError(
                f"conditioning: {src}: 'uncond_encoder_hidden_states' must be finite floats, got {u.dtype}"
                + ("" if not u.dtype.is_floating_point else " with NaN or Inf")
            )
        u = u.reshape(1, *u.shape) if u.ndim == 2 else u
        if tuple(u.shape) != (1, *e.shape[1:]):
            raise _bad(
                src,
                "uncond_encoder_hidden_states",
                c.uncond_encoder_hidden_states.shape,
                f"({e.shape[1]}, {e.shape[2]}) or (1, {e.shape[1]}, {e.shape[2]})",
            )
        c.uncond_encoder_hidden_states = u.float().contiguous()
    v = c.uncond_class_labels
    if v is not None:
        if y is None:
            raise ValueError(f"conditioning: {src}: 'uncond_class_labels' without 'class_labels'")
        if v.numel() != 1 or v.ndim > 1 or v.dtype.is_floating_point or v.dtype == torch.bool:
            raise _bad(src, "uncond_class_labels", v.shape, f"() or (1,), an integer (got dtype {v.dtype})")
        c.uncond_class_labels = v.reshape(1).long()


def load_conditioning(path: str) -> Conditioning:
    """Read a conditioning file (module docstring); ValueError starting with ``conditioning:`` and naming the
    file and key on anything else (missing file, unknown keys, wrong shapes or dtypes)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"conditioning: {path} does not exist (expected a safetensors file with "
            "'encoder_hidden_states' (N, seq, dim) and/or 'class_labels' (N,))"
        )
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises SafetensorError / OSError on bad headers
        raise ValueError(f"conditioning: {path} is not a readable safetensors file: {e}") from None
    unknown = sorted(set(tensors) - set(KEYS))
    if unknown:
        raise ValueError(f"conditioning: {path}: unknown keys {unknown}; expected some of {list(KEYS)}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return Conditioning(**{k: tensors.get(k) for k in KEYS}, source=path, fingerprint=h.hexdigest())


# ----------------------------------------------------------------------------- sampling a conditional ladder


def ladder_model(ladder, scheduler=None, **kwargs):
    """A conditional :class:`~multilevel_em.images.UNetLadder` as one
    :class:`~multilevel_em.diffusion.MultilevelModel` (its UNets, its FLOP costs); ``kwargs``
    (``probabilities``, ``rates``, ``generator``, ...) go to MultilevelModel."""
    from ..diffusion import MultilevelModel

    return MultilevelModel(ladder.unets, costs=ladder.costs, scheduler=scheduler, names=ladder.names, **kwargs)


@dataclass
class ConditionalSamples:
    """What :func:`sample_ladder` returns: ``x`` ``(n, C, H, W)`` (unclipped) and the model's cost report."""

    x: torch.Tensor
    report: Dict


def sample_ladder(
    ladder,
    conditioning: Dict[str, torch.Tensor],
    *,
    steps: int = 25,
    sampler: str = "ddim",
    probabilities: Optional[Sequence] = None,
    rates: Optional[Sequence] = None,
    generator=None,
    level_generator: Optional[torch.Generator] = None,
) -> ConditionalSamples:
    """ML-EM sampling of a (conditional) eps-prediction ladder: a diffusers scheduler loop over :func:`ladder_model`.

    A stock diffusers pipeline works the same way (``pipe.unet = ladder_model(ladder, pipe.scheduler, ...)``);
    this loop is the minimal one, for ladders without a VAE or text encoder.

    Args:
        ladder: a :class:`~multilevel_em.images.UNetLadder`.
        conditioning: the UNet keyword arguments, one row per sample (:meth:`Conditioning.rows`);
            ``n`` is their first dimension (unconditional ladders: use MultilevelPipeline).
        steps, sampler: scheduler steps; ``"ddim"`` (eta 0), ``"ddpm"`` or ``"dpmpp_2m"``
            (:func:`~multilevel_em.diffusion.samplers.make_scheduler` on the ladder's schedule).
        probabilities / rates: MultilevelModel's (``probabilities=[1] * (K - 1)`` gives every
            level at every call, whose estimate equals the top model's output).
        generator: the initial noise and the scheduler's noise; a list gives one per sample.
        level_generator: MultilevelModel's level draws.
    """
    from ..diffusion.registry import sampler_spec
    from ..diffusion.samplers import make_scheduler, scheduler_loop
    from ..engine import randn

    T = int(ladder.schedule.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(
            f"steps: expected an int in [1, {T}] (scheduler steps; the ladder's schedule has {T} timesteps), "
            f"got {steps!r}"
        )
    if not conditioning:
        raise ValueError(
            "conditioning: expected the UNet keyword arguments of n rows (Conditioning.rows); "
            "sample unconditional ladders with MultilevelPipeline"
        )
    spec = sampler_spec(sampler)
    n = int(next(iter(conditioning.values())).shape[0])
    scheduler = make_scheduler(sampler, ladder.schedule)  # eps prediction, the ladder's betas
    if len(ladder) == 1 and probabilities is None and rates is None:
        probabilities = []  # one model: nothing to draw
    model = ladder_model(
        ladder, scheduler=scheduler, probabilities=probabilities, rates=rates, generator=level_generator
    )
    x = randn((n, *ladder.shape), generator)
    with torch.no_grad():
        # the one scheduler loop of diffusion.samplers; MultilevelModel reads its step from the scheduler
        x, _ = scheduler_loop(
            model,
            x,
            ladder.schedule,
            steps,
            spec=spec,
            generator=generator,
            scheduler=scheduler,
            model_kwargs=conditioning,
        )
    return ConditionalSamples(x=x, report=model.report())


def teacher_rows(n: int, conditioning: Conditioning) -> List[int]:
    """Which conditioning row data-free teacher sample i is generated with: i mod N."""
    return [i % conditioning.n for i in range(n)]
