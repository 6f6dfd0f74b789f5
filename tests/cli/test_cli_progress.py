"""Progress output when it is not a terminal (issue 20, 'also noticed'): `make demo > log` got hundreds of
carriage-return frames per bar; now every bar (one helper, :func:`multilevel_em._progress.progress_bar`) prints
one line per run there, and a live tqdm bar only on a terminal."""

import io
import os
import re

from click.testing import CliRunner

import multilevel_em
from multilevel_em._progress import LineBar, progress_bar
from multilevel_em.cli.main import main


def test_a_command_writes_one_progress_line_into_a_log(tmp_path):
    """Through the entry point: CliRunner's output is not a terminal, like a log file."""
    r = CliRunner().invoke(
        main,
        ["train-mlp", "--problem", "gaussian", "--dim", "2", "--steps", "5", "--widths", "4,8", "--out", str(tmp_path)],
    )
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("train gaussian d=2")]
    assert len(lines) == 1 and re.fullmatch(r"train gaussian d=2: 10/10 step in \d+\.\d s", lines[0]), r.output


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_live_bar_and_a_log_one_line():
    from tqdm import tqdm

    live = progress_bar(total=3, desc="x", file=_Terminal())
    assert isinstance(live, tqdm)
    live.close()
    log = io.StringIO()
    with progress_bar(total=3, desc="sample", unit="img", file=log) as bar:
        assert isinstance(bar, LineBar)
        bar.update(2)
        bar.update()
        assert log.getvalue() == ""  # nothing while it runs
    assert re.fullmatch(r"sample: 3/3 img in \d+\.\d s\n", log.getvalue())


def test_line_bar_details():
    log = io.StringIO()
    assert list(progress_bar(range(4), desc="steps", leave=False, file=log)) == [0, 1, 2, 3]
    assert log.getvalue() == ""  # a transient bar (erased on a terminal) leaves nothing in a log
    with progress_bar(desc="run", unit="step", initial=2, file=log) as bar:
        bar.total = 5  # what the image pipeline does on its first step
        bar.refresh()
        bar.update(3)
    assert re.fullmatch(r"run: 5/5 step in \d+\.\d s \(2 done before\)\n", log.getvalue())
    log = io.StringIO()
    try:
        with progress_bar(total=10, desc="train", file=log) as bar:
            bar.update(4)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert log.getvalue().startswith("train: 4/10 it in") and log.getvalue().endswith("(stopped)\n")
    log = io.StringIO()
    with progress_bar(total=2, desc="quiet", disable=True, file=log) as bar:
        bar.update(2)
    assert log.getvalue() == ""


def test_every_bar_of_the_package_comes_from_the_helper():
    """No module makes its own tqdm bar (tqdm.write, which prints above a bar, is fine)."""
    root = os.path.dirname(multilevel_em.__file__)
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path == os.path.join(root, "_progress.py"):
                continue
            if re.search(r"\b(tqdm|trange)\s*\(", open(path).read()):  # a bar made here
                offenders.append(os.path.relpath(path, root))
    assert offenders == []
