"""A synthetic "Harder than Monte Carlo" (HTMC) problem family with a known true drift.

The true drift is a series of random smooth blocks with halving amplitudes,

    f(x, t) = -x + sum_{l >= 1} 2^-l a(t) psi_l(x, t),
    psi_l(x, t)_i = sqrt(2) sin(<omega_{l,i}, x> + nu_{l,i} t + phi_{l,i}),

and level l of the ladder is the truncation after block l.  So
``delta_l = RMS(f^l - f^{l-1}) ~ 2^-l`` and ``RMS(f^l - f) ~ 2^-l / sqrt(3)``.

Cost model (read this): level l is *declared* to cost ``2^(gamma (l - 1))`` units, the
cost of the 2^(gamma l)-term random-feature expansion it stands for, and every
evaluation is counted in those units, exactly.  The closed form above computes it with
l sine blocks, so benchmarks over costs spanning 2^(4*6) units run on a laptop.  With
error 2^-l at cost 2^(gamma l), accuracy eps costs eps^-gamma: the HTMC regime for
gamma > 2.  The frequencies grow like 2^(l/2), so the drift stays Lipschitz (EM has
strong order 1 for every level) while the fine blocks vary faster in x and t.

``time_profile = kappa`` multiplies every block by ``a(t) ~ exp(kappa (t - t0))``
(normalised to unit mean square over [t0, t1]), so that delta_l(t) varies with time:
the case where time-dependent rates beat uniform ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..engine import Ladder

__all__ = ["HTMCProblem", "htmc"]


@dataclass
class HTMCProblem:
    """A ladder with a known true drift, for benchmarks and tests.

    Attributes:
        ladder: levels 1..K, costs ``2^(gamma (l - 1))``.
        true_drift: ``f(x, t)``, the series truncated ``extra`` blocks above the ladder
            (RMS error about 2^-(K + extra) / sqrt(3)).
        diffusion: the constant noise scale g.
        t0, t1: the time interval.
        gamma: the cost exponent.
        dim: the state dimension.
    """

    ladder: Ladder
    true_drift: Callable
    diffusion: float
    t0: float
    t1: float
    gamma: float
    dim: int
    seed: int
    dtype: torch.dtype

    def initial_state(self, n: int, *, seed: int = 0, device=None) -> torch.Tensor:
        """n standard normal initial states, shape ``(n, dim)``."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n, self.dim), generator=g, dtype=self.dtype).to(device or "cpu")

    def true_ladder(self) -> Ladder:
        """The ladder with the true drift appended as a top level (for reference runs)."""
        levels = list(self.ladder) + [self.true_drift]
        return Ladder(levels, list(self.ladder.costs) + [self.ladder.costs[-1] * 2**self.gamma])


class _SeriesDrift:
    """-x + the rough blocks + the first ``n_blocks`` ladder blocks; a picklable callable.

    Evaluated as two matrix products: ``waves = sin(x @ Omega^T + nu t + phi)`` with all
    blocks' frequency vectors stacked in ``Omega`` ((n dim, dim)), then a block-diagonal
    weighting that sums each output coordinate's blocks.
    """

    def __init__(self, params: dict, n_blocks: int, name: str):
        self.p = params
        self.n = params["n_rough"] + n_blocks
        self.__name__ = name
        self._cache: dict = {}

    def _tensors(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            p, n = self.p, self.n
            dim = p["omega"].shape[-1]
            eye = torch.eye(dim, dtype=torch.float64)
            # weights[(l, i), j] = sqrt(2) amp_l [i == j]: sums block l's coordinate i into output i.
            weights = math.sqrt(2.0) * (p["amp"][:n].view(n, 1, 1) * eye).reshape(n * dim, dim)
            r = p["n_rough"] * dim
            self._cache[key] = tuple(
                a.to(dtype=like.dtype, device=like.device)
                for a in (
                    p["omega"][:n].reshape(n * dim, dim).T.contiguous(),
                    p["nu"][:n].reshape(-1),
                    p["phi"][:n].reshape(-1),
                    weights[:r],
                    weights[r:],
                )
            )
        return self._cache[key]

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        omega_t, nu, phi, w_rough, w_series = self._tensors(x)
        r = w_rough.shape[0]
        t_ = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        shift = nu * t_.reshape(-1, 1) + phi if t_.ndim else nu * t_ + phi
        waves = torch.sin(x @ omega_t + shift)  # (batch, n dim)
        envelope = self.p["envelope"](t_)
        if envelope.ndim:
            envelope = envelope.reshape(-1, 1)
        return -x + waves[:, :r] @ w_rough + envelope * (waves[:, r:] @ w_series)

    def __getstate__(self):
        return {"p": self.p, "n": self.n, "__name__": self.__name__, "_cache": {}}


def htmc(
    gamma: float,
    dim: int = 4,
    levels: int = 5,
    seed: int = 0,
    *,
    diffusion: float = 0.5,
    t0: float = 0.0,
    t1: float = 1.0,
    frequency: float = 1.0,
    roughness: float = 0.5,
    rough_frequency: float = 8.0,
    time_profile: float = 0.0,
    extra: int = 12,
    dtype: torch.dtype = torch.float64,
) -> HTMCProblem:
    """Build the synthetic HTMC problem.

    Args:
        gamma: cost exponent: level l costs 2^(gamma (l - 1)) and has error ~2^-l.
        dim: state dimension.
        levels: number of ladder levels K.
        seed: seed of the random frequencies and phases.
        diffusion: constant noise scale g (0 gives an ODE).
        t0, t1: time interval.
        frequency: frequency scale of the ladder blocks (block l: ~ frequency * 2^(l/4)).
        roughness: RMS amplitude of the rough part shared by all levels (0: none).
        rough_frequency: its frequency scale in x (and twice that in t).
        time_profile: kappa; block amplitudes vary like exp(kappa t) (0: constant in time).
        extra: how many blocks beyond the ladder the true drift keeps.
        dtype: dtype of the parameters and of ``initial_state``.
    """
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma: expected a positive number, got {gamma!r}")
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
    if not (isinstance(levels, int) and levels >= 1):
        raise ValueError(f"levels: expected an int >= 1, got {levels!r}")
    if not t1 > t0:
        raise ValueError(f"t1: expected t1 > t0, got t0={t0}, t1={t1}")
    n_total = levels + extra
    n_rough = 2 if roughness > 0 else 0
    g = torch.Generator().manual_seed(seed)
    # Ladder blocks: smooth (frequencies ~ frequency * 2^(l/4)), so a level's drift error
    # is felt by the path instead of averaging out. Rough blocks: fast in x and t, shared by
    # every level, so EM needs many steps whichever level it uses.
    scale = torch.cat(
        [
            torch.full((n_rough,), rough_frequency, dtype=torch.float64),
            frequency * 2.0 ** (0.25 * torch.arange(1, n_total + 1, dtype=torch.float64)),
        ]
    )
    # omega_{l,i} ~ N(0, I) * scale_l / sqrt(dim): |<omega, x>| ~ scale_l for |x| ~ sqrt(dim).
    omega = torch.randn((n_rough + n_total, dim, dim), generator=g, dtype=torch.float64)
    omega = omega * (scale / math.sqrt(dim)).view(-1, 1, 1)
    nu = torch.randn((n_rough + n_total, dim), generator=g, dtype=torch.float64) * scale.view(-1, 1) * 2.0
    phi = 2 * math.pi * torch.rand((n_rough + n_total, dim), generator=g, dtype=torch.float64)
    amp = torch.cat(
        [
            torch.full((n_rough,), roughness / math.sqrt(max(n_rough, 1)), dtype=torch.float64),
            2.0 ** -torch.arange(1, n_total + 1, dtype=torch.float64),
        ]
    )
    if time_profile == 0.0:
        envelope: Callable = lambda t: torch.ones_like(t)  # noqa: E731
    else:
        k, span = float(time_profile), t1 - t0
        # a(t) = exp(k (t - t0)) / sqrt(mean of exp(2 k (t - t0)) over [t0, t1])
        norm = math.sqrt((math.exp(2 * k * span) - 1) / (2 * k * span))
        envelope = lambda t: torch.exp(k * (t - t0)) / norm  # noqa: E731
    params = dict(
        omega=omega.to(dtype), nu=nu.to(dtype), phi=phi.to(dtype), amp=amp.to(dtype), envelope=envelope, n_rough=n_rough
    )
    drifts = [_SeriesDrift(params, l, f"f{l}") for l in range(1, levels + 1)]
    costs = [2.0 ** (gamma * (l - 1)) for l in range(1, levels + 1)]
    return HTMCProblem(
        ladder=Ladder(drifts, costs, names=[f"level {l}" for l in range(1, levels + 1)]),
        true_drift=_SeriesDrift(params, n_total, "true"),
        diffusion=diffusion,
        t0=t0,
        t1=t1,
        gamma=float(gamma),
        dim=dim,
        seed=seed,
        dtype=dtype,
    )
