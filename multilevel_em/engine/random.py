"""Random numbers per batch or per sample.

The diffusion samplers (:func:`multilevel_em.diffusion.sample`), ``MultilevelDenoiser``,
:func:`~multilevel_em.engine.telescoping_estimate` and ``MultilevelPipeline`` take as ``generator=``

* ``None``: torch's global generator;
* one ``torch.Generator``: the whole batch is drawn from it, so a sample's random numbers
  depend on its position in the batch and on the batch size;
* a sequence of ``torch.Generator``, one per row of the batch (diffusers' convention for
  per-sample generators): row b is drawn from ``generator[b]`` alone, so a sample's random
  numbers depend only on its own generator, whatever batch it is computed in.

:func:`sample_generators` keys such generators by ``(seed, sample index)``: sample i of a
job gets the same random numbers whatever the batch size, the number of workers or the
order in which batches complete.  (:func:`~multilevel_em.engine.solve` takes one generator: its
Brownian path is seeded for the whole batch.)
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union

import torch

from .brownian import _mix

__all__ = ["Generators", "check_generators", "is_per_sample", "rand", "randn", "sample_generators"]

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]

_TAG_SAMPLE = 0x5A17


def sample_generators(seed: int, indices: Iterable[int]) -> List[torch.Generator]:
    """One CPU ``torch.Generator`` per sample, seeded by a 63-bit hash of ``(seed, index)``.

    Args:
        seed: the job's seed (any int).
        indices: the samples' indices in the job (ints >= 0).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"indices: expected ints >= 0, got {i!r}")
        out.append(torch.Generator().manual_seed(_mix(_TAG_SAMPLE, seed, i)))
    return out


def is_per_sample(generator: Generators) -> bool:
    """True for a sequence of generators (one per row)."""
    return isinstance(generator, (list, tuple))


def check_generators(generator: Generators, batch: Optional[int] = None, name: str = "generator") -> None:
    """Raise a clear error unless ``generator`` is None, a Generator, or ``batch`` Generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not is_per_sample(generator):
        raise TypeError(
            f"{name}: expected a torch.Generator or a list of them (one per sample), got {type(generator).__name__}"
        )
    bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
    if bad:
        raise TypeError(f"{name}: expected a list of torch.Generator, found {bad[0]}")
    if batch is not None and len(generator) != batch:
        raise ValueError(f"{name}: expected one generator per sample ({batch}), got {len(generator)}")


def _draw(fn, shape, generator: Generators, dtype, device) -> torch.Tensor:
    shape = tuple(shape)
    if not is_per_sample(generator):
        gen_device = generator.device if generator is not None else device
        return fn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)
    check_generators(generator, shape[0] if shape else None)
    if not shape:
        raise ValueError("shape: per-sample generators need a shape (batch, ...)")
    rows = [fn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]
    return torch.stack(rows).to(device) if rows else torch.empty(shape, dtype=dtype, device=device)


def randn(shape: Sequence[int], generator: Generators = None, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normals of ``shape`` = (batch, ...); row b from ``generator[b]`` when it is a list."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape: Sequence[int], generator: Generators = None, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Uniforms on [0, 1) of ``shape`` = (batch, ...); row b from ``generator[b]`` when it is a list."""
    return _draw(torch.rand, shape, generator, dtype, device)
