"""A picture of a calibration: delta_l(t) over time, and error against cost with the gamma fit."""

from __future__ import annotations

import numpy as np


def plot_calibration(cal, path: str) -> None:
    """Write a two-panel PNG of the :class:`~multilevel_em.Calibration` ``cal``: left, delta_l(t) = RMS(f^l - f^{l-1}) at the calibration times
    (what the time-dependent rates follow); right, each level's RMS error against its cost
    (log-log), with the fitted line error ~ cost^(-1/gamma)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    deltas = cal.deltas
    for l in range(deltas.shape[1]):
        ax1.semilogy(cal.times, deltas[:, l], "o-", ms=3, label=f"delta_{l + 2} ({cal.names[l + 1]})")
    ax1.set_xlabel("t")
    ax1.set_ylabel("RMS |f^l - f^(l-1)|")
    ax1.set_title("level differences along trajectories")
    ax1.legend(fontsize=7)
    ax1.grid(True, which="both", alpha=0.3)

    costs, errors = np.asarray(cal.costs, dtype=float), np.asarray(cal.errors, dtype=float)
    shown = errors > 0
    ax2.loglog(costs[shown], errors[shown], "o", label="levels")
    for c, e, n in zip(costs[shown], errors[shown], np.asarray(cal.names)[shown]):
        ax2.annotate(n, (c, e), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fit = list(cal.fit_levels)
    if cal.gamma is not None and len(fit) >= 2:
        # log(cost) = gamma log(1/error) + b, fitted on ``fit``; draw it through their mean.
        lc, le = np.log(costs[fit]), np.log(errors[fit])
        b = float(np.mean(lc + cal.gamma * le))
        c_line = np.geomspace(costs[fit].min(), costs[fit].max(), 20)
        se = "" if cal.gamma_se is None or not np.isfinite(cal.gamma_se) else f" ± {cal.gamma_se:.2f}"
        ax2.loglog(c_line, np.exp((b - np.log(c_line)) / cal.gamma), "--", label=f"fit: gamma = {cal.gamma:.2f}{se}")
    ax2.set_xlabel(f"cost per sample ({cal.cost_unit})")
    ax2.set_ylabel("RMS error vs " + ("the reference drift" if cal.reference == "given" else "the top level"))
    ax2.set_title("accuracy against cost")
    ax2.legend(fontsize=7)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
