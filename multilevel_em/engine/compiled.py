"""Levels run through ``torch.compile`` with one graph per batch size and no recompilation after warm-up.

:class:`CompiledLevel` wraps a level (any callable on tensors) so that

* each wrapper has its own compiled code object: dynamo keeps its cache (and its recompile limit, 8 graphs
  by default) per code object, and the levels of a ladder usually share one ``forward``; a shared cache
  would hold K levels x B batch sizes and overflow, falling back to eager;
* it compiles with ``dynamic=False``: one graph per input shape, which ``draws="static"`` bounds to the
  bucket sizes (:func:`~multilevel_em.engine.bucket_sizes`, at most 8 by default), so a run compiles each
  (level, bucket) once and never again;
* on CUDA it uses ``mode="reduce-overhead"`` (CUDA graphs) and returns a copy of the output (a CUDA graph
  reuses its output buffers at its next replay); elsewhere the default mode.

Python numbers passed to a compiled function are specialised into its graph (a new graph per value), so
callers pass times as tensors.  Written for CUDA, tested on the CPU only (no GPU was available).
"""

from __future__ import annotations

import itertools
import types
from typing import Optional

import torch

__all__ = ["CompiledLevel", "compile_mode", "check_compile_buckets"]

_ids = itertools.count()


def _run(level, *args, **kwargs):
    return level(*args, **kwargs)


def compile_mode(device: torch.device) -> Optional[str]:
    """The ``torch.compile`` mode for a level on ``device``: ``"reduce-overhead"`` (CUDA graphs) on CUDA, else None."""
    return "reduce-overhead" if device.type == "cuda" else None


def _device_of(args, kwargs) -> torch.device:
    for v in itertools.chain(args, kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def check_compile_buckets(sizes) -> None:
    """ValueError when a compiled level would see more batch sizes (``sizes``) than dynamo keeps graphs for."""
    limit = int(getattr(torch._dynamo.config, "recompile_limit", 8))
    if len(sizes) > limit:
        raise ValueError(
            f"buckets: compile=True keeps one graph per level and batch size, at most {limit} "
            f"(torch._dynamo.config.recompile_limit), but this batch's level calls take {len(sizes)} sizes "
            f"{list(sizes)}; pass fewer buckets= (the default set has at most 8)"
        )


class CompiledLevel:
    """``level(*args, **kwargs)`` run through ``torch.compile(dynamic=False)`` (module docstring).

    Args:
        level: the callable to compile (a ``torch.nn.Module`` or function of tensors).
        name: a label for the compiled code object (shown in dynamo's logs), e.g. ``"level_2"``.

    The compiled function is made on the first call, for that call's device (``compile_mode``).
    """

    def __init__(self, level, name: str = "level"):
        if not callable(level):
            raise TypeError(f"level: expected a callable, got {type(level).__name__}")
        self.level, self.name = level, str(name)
        self._compiled = {}  # mode -> compiled function

    def _function(self, mode: Optional[str]):
        f = self._compiled.get(mode)
        if f is None:
            # a code object of its own (module docstring): the same body, another name and identity
            label = "".join(c if c.isalnum() else "_" for c in self.name)
            code = _run.__code__.replace(co_name=f"compiled_{label}_{next(_ids)}")
            fn = types.FunctionType(code, _run.__globals__, code.co_name)
            f = self._compiled[mode] = torch.compile(fn, dynamic=False, mode=mode)
        return f

    def __call__(self, *args, **kwargs):
        mode = compile_mode(_device_of(args, kwargs))
        f = self._function(mode)
        if mode != "reduce-overhead":
            return f(self.level, *args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        out = f(self.level, *args, **kwargs)
        return _copied(out)

    def __repr__(self) -> str:
        return f"CompiledLevel({self.level!r})"


def _copied(out):
    """Tensors in ``out`` (a tensor, tuple, list, dict or dataclass-like output with ``.sample``) cloned."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(getattr(out, "sample", None), torch.Tensor):  # a diffusers output (a dict too)
        out.sample = out.sample.clone()
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_copied(v) for v in out)
    if isinstance(out, dict):
        return type(out)({k: _copied(v) for k, v in out.items()})
    return out
