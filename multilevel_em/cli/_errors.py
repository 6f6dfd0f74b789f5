"""Library errors in the command line's words: one translation for every command.

The library's messages name Python arguments (``budget=4.0 and steps=8 disagree``, ``rates: ...``,
``method='em'``), which is right for a Python caller and wrong on a terminal.  :func:`user_error`
turns such an error into a :class:`click.ClickException` whose text names the running command's
options instead (``--budget 4.0 and --steps 8 disagree``, ``--method em``), taking the names from
the command itself, so no command keeps a table of its own.  A message that starts with
``name: `` (the library's way of naming the argument at fault) becomes a
:class:`click.BadParameter` for that option.  Advice that only a Python caller can follow is
replaced by the command line's equivalent (:data:`_PYTHON_ONLY`).
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from typing import Callable, Dict, Iterator, Optional

import click

#: Advice in library messages that has no command-line equivalent, or another one: (pattern, replacement).
_PYTHON_ONLY = (
    (re.compile(r"[;,]? ?pass check_finite=False to continue( anyway)?"), ""),
    (
        re.compile(
            r"run pipe\.calibrate\(\)( \(and save_pretrained\))?(, or `mlem calibrate --ladder DIR` on the "
            r"command line)?"
        ),
        "run `mlem calibrate --ladder DIR`",
    ),
    # "pipe.calibrate_samplers() (`mlem calibrate ...`)": a Python call followed by its command: the command
    (re.compile(r"\bpipe\.\w+\(\) \((`mlem [^`]*`)\)"), r"\1"),
)

#: ``name=value``, ``name=``, ``(name)`` or a bare ``snake_name``: a Python argument, with the value as
#: written by repr().
_ARGUMENT = re.compile(
    r"(?<![\w.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|True|False|None|[-+]?[0-9][0-9.e+-]*"
    r"|\[[^\]]*\])?|(?<=\()([a-z][a-z0-9_]*)(?=\))|(?<![\w./-])([a-z][a-z0-9]*_[a-z0-9_]*)\b(?![/.]\w)"
)


def _option_names(ctx: Optional[click.Context]) -> Dict[str, str]:
    """{Python name: option} for the running command: both the parameter's name (``batch_size``,
    ``ladder_path``) and the option's own spelling (``--ray`` -> ``ray``) map to the option."""
    names: Dict[str, str] = {}
    if ctx is None:
        return names
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.opts:
            opt = max(param.opts, key=len)  # the long form
            names[param.name] = opt
            for o in param.opts:
                names.setdefault(o.lstrip("-").replace("-", "_"), opt)
    return names


def cli_text(text: str, ctx: Optional[click.Context] = None) -> str:
    """``text`` with the running command's option names in place of the library's argument names."""
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)
    options = _option_names(ctx)
    for pattern, replacement in _PYTHON_ONLY:
        text = pattern.sub(replacement, text)

    def option(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        opt = options.get(name)
        if opt is None:
            return m.group(0)
        value = m.group(2)
        if m.group(1) is None or value in (None, "True", "None"):
            return opt
        if value == "False":
            return f"without {opt}"
        return f"{opt} {value.strip(chr(39) + chr(34))}"

    return _ARGUMENT.sub(option, text)


def user_error(error: object, hint: Optional[str] = None) -> click.ClickException:
    """The click exception to raise for a library error caused by the user's input (``raise user_error(e)
    from None``; ``error``: the exception or its text).

    A :class:`click.BadParameter` for the option that the message starts with (``rates: ...``), or for
    ``hint`` if given (the message's own leading ``argument: `` is then dropped: the hint names it),
    else a plain :class:`click.ClickException`; the text as :func:`cli_text`."""
    ctx = click.get_current_context(silent=True)
    text = str(error)
    options = _option_names(ctx)
    head, sep, rest = text.partition(": ")
    if sep and head in options:
        return click.BadParameter(cli_text(rest, ctx), param_hint=options[head])
    if hint is not None:
        if sep and head.isidentifier():
            text = rest
        return click.BadParameter(cli_text(text, ctx), param_hint=hint)
    return click.ClickException(cli_text(text, ctx))


@contextlib.contextmanager
def resume_on_interrupt(kept: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C inside a resumable command (a job, training): instead of click's bare "Aborted!", say what
    was kept (``kept()``, e.g. "3 of 8 shards complete in out/") and that rerunning the same command
    resumes; exit with status 130 (the shell's code for SIGINT)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {kept()}; run the same command again to resume", err=True)
        raise SystemExit(130) from None


@contextlib.contextmanager
def cli_warnings() -> Iterator[None]:
    """Show the library's warnings as ``warning: ...`` lines on stderr in the CLI's words (:func:`cli_text`),
    each text once, instead of Python's ``file.py:123: UserWarning: ...`` with a line of source."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = cli_text(str(message))
        if text not in seen:
            from tqdm import tqdm

            seen.add(text)
            tqdm.write(f"warning: {text}", file=sys.stderr)  # on its own line, above any bar

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
