"""Progress bars: every bar of the package and of the command line is made by :func:`progress_bar`.

On a terminal (or in a Jupyter notebook) it is a tqdm bar. Elsewhere (output redirected into a log,
``make demo > log``, a CI job, a pipe) a live bar would write one carriage-return frame per refresh,
hundreds of them per run; there a bar prints nothing while it runs and one line when it ends
(``train: 4800/4800 it in 93.1 s``), or nothing at all if it was transient (``leave=False``, which a
terminal erases too).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Optional

__all__ = ["progress_bar", "LineBar"]


def _interactive(stream) -> bool:
    """``stream`` shows a live bar: a terminal, or a notebook's output (tqdm.auto draws a widget there)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules and stream in (sys.stderr, sys.stdout)


def progress_bar(
    iterable: Optional[Iterable] = None,
    *,
    total: Optional[float] = None,
    desc: Optional[str] = None,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
    initial: float = 0,
    file: Optional[IO[str]] = None,
):
    """A progress bar with tqdm's interface (``update``, ``total``, ``set_postfix_str``, ``close``, a context
    manager, iteration over ``iterable``): a tqdm bar when ``file`` (default stderr) is a terminal or a
    notebook, else a :class:`LineBar` (one line when it ends). ``disable``: no output at all."""
    stream = sys.stderr if file is None else file
    if not disable and _interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=stream)
    return LineBar(iterable, total=total, desc=desc, unit=unit, leave=leave and not disable, initial=initial, file=file)


class LineBar:
    """A bar for output that is not a terminal: counts like tqdm, prints nothing until :meth:`close`, then
    (when ``leave``) one line: what it counted, of what total, in how many seconds."""

    def __init__(
        self,
        iterable: Optional[Iterable] = None,
        *,
        total: Optional[float] = None,
        desc: Optional[str] = None,
        unit: str = "it",
        leave: bool = True,
        initial: float = 0,
        file: Optional[IO[str]] = None,
    ):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                pass
        self.iterable = iterable
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.leave = leave
        self.initial = self.n = initial
        self.postfix = ""
        self.file = file
        self.start = time.perf_counter()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: the line is written once, at the end."""

    def line(self, stopped: bool = False) -> str:
        """The line :meth:`close` prints."""
        count = f"{self.n:g}" if self.total is None else f"{self.n:g}/{self.total:g}"
        text = f"{count} {self.unit} in {time.perf_counter() - self.start:.1f} s"
        if self.initial:
            text += f" ({self.initial:g} done before)"
        if stopped:
            text += " (stopped)"
        return f"{self.desc.strip()}: {text}" if self.desc.strip() else text

    def close(self, stopped: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave:
            stream = sys.stderr if self.file is None else self.file
            print(self.line(stopped), file=stream, flush=True)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close(stopped=self.total is not None and self.n < self.total)

    def __enter__(self) -> "LineBar":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(stopped=exc_type is not None)
        return False

    def __repr__(self) -> str:
        return f"LineBar({self.line()!r})"
