"""What the commands share: the command line written into results files, and list-valued options."""

from __future__ import annotations

import shlex
from typing import List, Optional

import click

#: The plot formats ``--plot`` accepts where matplotlib picks the format from the suffix.
PLOT_SUFFIXES = (".png", ".pdf", ".svg")

_UNSET = (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def command_line(ctx: Optional[click.Context] = None) -> str:
    """The command as typed, for results files: ``mlem``, the subcommands, then the options given on the command
    line (not those left at their defaults) in the order the command declares them, then its arguments.

    Rebuilt from the parsed parameters rather than read from ``sys.argv``, so that it is the same under
    ``CliRunner`` and ``python -m`` as under ``mlem``."""
    ctx = ctx or click.get_current_context()
    names = []
    c = ctx
    while c.parent is not None:
        names.append(c.info_name)
        c = c.parent
    parts = ["mlem", *reversed(names)]
    arguments = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            values = value if param.nargs != 1 else (value,)
            arguments.extend(shlex.quote(str(v)) for v in values if v is not None)
            continue
        if not isinstance(param, click.Option) or value is None or ctx.get_parameter_source(param.name) in _UNSET:
            continue
        if param.is_flag:
            if value:
                parts.append(param.opts[0])
            elif param.secondary_opts:
                parts.append(param.secondary_opts[0])
        else:
            parts.append(f"{param.opts[0]} {shlex.quote(str(value))}")
    return " ".join(parts + arguments)


def given_options(names, ctx: Optional[click.Context] = None) -> List[str]:
    """The options among the parameters ``names`` (Python names) that were given on the command line rather than
    left at their defaults, by their option spelling, in the order the command declares them: what a command
    refuses, naming each, when they do not apply to what it was asked to do."""
    ctx = ctx or click.get_current_context()
    return [
        p.opts[0]
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name in names and ctx.get_parameter_source(p.name) not in _UNSET
    ]


def parse_floats(name: str, text: str) -> List[float]:
    """``text`` as comma-separated numbers (at least one), else a BadParameter for option ``name``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not values:
        raise click.BadParameter("expected at least one number", param_hint=name)
    return values


def parse_ints(name: str, text: str) -> List[int]:
    """``text`` as comma-separated positive integers (at least one), else a BadParameter for option ``name``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=name) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
    return values
