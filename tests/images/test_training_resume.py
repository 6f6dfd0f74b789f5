"""Resumed training removes the temporaries a killed write left, and its progress reaches the total."""

import glob

import pytest

pytest.importorskip("diffusers")

from multilevel_em.images import load_digits, train_ladder


def test_resumed_training_cleans_temporaries_and_its_bar_reaches_the_total(tmp_path):
    """Item 10: the .tmp files a killed atomic write leaves are removed on resume; a resumed run's
    progress counts the iterations done before, so its bar ends at widths x iters."""
    digits = load_digits(size=8)
    out = tmp_path / "t"
    kw = dict(widths=[4], iters=4, batch=4, save_every=2, loss_plot=False)

    class Interrupt(Exception):
        pass

    done = [0]

    def stop_at_three(n):
        done[0] += n
        if done[0] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_ladder(digits, str(out), progress=stop_at_three, **kw)
    leftover = out / "level_1" / ".training_state.safetensors.abc.tmp"
    leftover.write_bytes(b"partial")
    ticks = []
    train_ladder(digits, str(out), progress=ticks.append, **kw)
    assert not leftover.exists() and not glob.glob(str(out / "**" / ".*.tmp"), recursive=True)
    assert sum(ticks) == 4
    ticks.clear()
    train_ladder(digits, str(out), progress=ticks.append, **kw)  # already finished: the bar still ends full
    assert sum(ticks) == 4
