"""multilevel-em: the Multilevel Euler-Maruyama method (ML-EM) for SDEs, ODEs and diffusion models.

The public API::

    from multilevel_em import Ladder, BrownianPath, solve, calibrate

    ladder = Ladder([f_small, f_medium, f_big], costs=[1, 8, 64])
    sol = solve(ladder, x0, t0=0.0, t1=1.0, steps=256, diffusion=0.5,
                method="mlem", rates=[20.0, 5.0])
    sol.x, sol.cost_per_sample, sol.top_equivalents

    cal = calibrate(ladder, x0, t0=0.0, t1=1.0, diffusion=0.5, timing="given")
    sol = solve(ladder, x0, t0=0.0, t1=1.0, steps=256, diffusion=0.5, rates=cal.rates(mu=50.0))
    plan = cal.plan(target=0.01)    # levels, mu, steps, predicted cost and speedup over EM
"""

import importlib

__version__ = "0.1.0"

__all__ = ["BrownianPath", "Calibration", "Ladder", "Solution", "calibrate", "solve", "__version__"]

# Imported on first use (PEP 562), so that `mlem --help` and `import multilevel_em` do not load torch.
_LAZY = {
    "BrownianPath": ".engine",
    "Ladder": ".engine",
    "Solution": ".engine",
    "solve": ".engine",
    "Calibration": ".calibration",
    "calibrate": ".calibration",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
