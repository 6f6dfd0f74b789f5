"""Checks of the fields of a calibration file, one value at a time, each error naming its field.

:meth:`Calibration.from_dict <multilevel_em.Calibration.from_dict>` and :meth:`SamplerFit.from_dict
<multilevel_em.calibration.SamplerFit.from_dict>` read hand-editable JSON through these: a value of the
wrong type, shape or range raises :class:`FieldError` (a ValueError) whose message starts with the field's
path (``samplers.em.gain_points[1].steps: expected ...``), so that the file's reader can put the file's
name in front.  Numbers are ints or floats (not bools, not strings); integers may be written as integral
floats (``16.0``).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "FieldError",
    "check_keys",
    "integer",
    "integers",
    "join",
    "optional_real",
    "real",
    "real_array",
    "text",
]


class FieldError(ValueError):
    """A field of a calibration file is wrong; ``str(e)`` is ``"field: what is wrong"``."""

    def __init__(self, field: str, what: str):
        self.field, self.what = field, what
        super().__init__(f"{field}: {what}" if field else what)

    def within(self, where: str) -> "FieldError":
        """The same error with its field inside ``where`` (``within("samplers.em")``)."""
        if not where:
            return self
        if not self.field:
            return FieldError(where, self.what)
        sep = "" if self.field.startswith("[") else "."
        return FieldError(f"{where}{sep}{self.field}", self.what)


def join(where: str, key) -> str:
    """The path of ``key`` inside ``where``: ``join("samplers", "em") == "samplers.em"``, ``join("p", 1) == "p[1]"``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _range_words(lo, hi, lo_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts)


def real(
    v, field: str, *, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, what: str = ""
) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), as a float."""
    rng = _range_words(lo, hi, lo_open)
    want = what or ("a finite number" + (f" {rng}" if rng else ""))
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise FieldError(field, f"expected {want}, got {_show(v)}")
    x = float(v)
    if not math.isfinite(x) or (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi):
        raise FieldError(field, f"expected {want}, got {x!r}")
    return x


def optional_real(v, field: str, **kw) -> Optional[float]:
    """None, or :func:`real`."""
    return None if v is None else real(v, field, **kw)


def integer(v, field: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An integer in ``[lo, hi]`` (an int or an integral float), as an int."""
    rng = _range_words(lo, hi, False)
    want = "an integer" + (f" {rng}" if rng else "")
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise FieldError(field, f"expected {want}, got {_show(v)}")
    if not isinstance(v, numbers.Integral) and not (math.isfinite(float(v)) and float(v).is_integer()):
        raise FieldError(field, f"expected {want}, got {v!r}")
    n = int(v)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise FieldError(field, f"expected {want}, got {n}")
    return n


def integers(v, field: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> Tuple[int, ...]:
    """A list of :func:`integer` values."""
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray)):
        raise FieldError(field, f"expected a list of integers, got {_show(v)}")
    return tuple(integer(x, join(field, i), lo=lo, hi=hi) for i, x in enumerate(v))


def text(v, field: str, choices: Optional[Iterable[str]] = None) -> str:
    """A string (one of ``choices`` when given)."""
    choices = None if choices is None else tuple(choices)
    if not isinstance(v, str):
        want = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
        raise FieldError(field, f"expected {want}, got {_show(v)}")
    if choices is not None and v not in choices:
        raise FieldError(field, f"expected one of {', '.join(repr(c) for c in choices)}, got {v!r}")
    return v


def real_array(v, field: str, shape: Tuple[int, ...], dims: str, *, lo: Optional[float] = None) -> np.ndarray:
    """A (nested) list of finite numbers of ``shape`` (``dims`` names its axes, for the message), each >= ``lo``,
    as a float64 array."""
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray)):
        raise FieldError(field, f"expected a list of numbers shaped {dims}, got {_show(v)}")
    try:
        arr = np.asarray(v)
    except ValueError:  # a ragged nesting
        raise FieldError(
            field, f"expected a list of numbers shaped {dims} = {shape}, got rows of unequal length"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise FieldError(field, f"expected numbers, got {_show(v)}")
    arr = arr.astype(np.float64)
    if arr.shape != shape:
        raise FieldError(field, f"expected shape {dims} = {shape}, got {arr.shape}")
    bad = ~np.isfinite(arr)
    if lo is not None:
        bad |= arr < lo
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        idx = "".join(f"[{i}]" for i in at)
        want = "finite numbers" + (f" >= {lo:g}" if lo is not None else "")
        raise FieldError(f"{field}{idx}", f"expected {want}, got {float(arr[at])!r}")
    return arr


def check_keys(d, field: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """``d`` is a dict with every key of ``required`` and no key outside ``required`` and ``optional``."""
    if not isinstance(d, Mapping):
        raise FieldError(field, f"expected an object {{...}}, got {_show(d)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise FieldError(field, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    known = set(required) | set(optional)
    unknown = [k for k in d if k not in known]
    if unknown:
        raise FieldError(
            join(field, unknown[0]) if isinstance(unknown[0], str) else field,
            f"unknown field (expected only {', '.join(list(required) + list(optional))}); a typo?",
        )
