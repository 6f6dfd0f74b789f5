"""Variance-preserving (VP) noise schedules in continuous time, compatible with diffusers.

Forward process on t in [0, 1]:  x_t = alpha(t) x_0 + sigma(t) eps,  eps ~ N(0, I),
with alpha(t)^2 = alpha_bar(t), sigma(t)^2 = 1 - alpha_bar(t), and the SDE

    dX = -1/2 beta(t) X dt + sqrt(beta(t)) dW,     beta(t) = -d/dt log alpha_bar(t).

Time convention shared with diffusers (T = ``num_train_timesteps``, 1000 by default):
the integer timestep k = 0..T-1 of a diffusers scheduler sits at continuous time

    t_k = (k + 1) / T          (``time(k)``),   and   k = round(t T) - 1, clipped to [0, T-1]   (``timestep(t)``),

so that ``alpha_bar(t_k)`` is the continuum limit of ``DDPMScheduler.alphas_cumprod[k]``:

* ``VPSchedule.linear(beta_min, beta_max)`` is the VP-SDE of Song et al. (2021),
  log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2); it matches diffusers'
  ``beta_schedule="linear"`` with ``beta_start = beta_min / T``, ``beta_end = beta_max / T``
  to |alpha_bar(t_k) - alphas_cumprod[k]| < 1e-3 and |sigma(t_k) - sqrt(1 - alphas_cumprod[k])| < 2e-3
  for the default (0.1, 20) (the gap is the O(beta^2 / T) term of log(1 - beta_k));
* ``VPSchedule.cosine()`` is the schedule of Nichol & Dhariwal (2021),
  alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(pi/2 (t + s) / (1 + s)), up to t = 1 - 1/T; on the
  last interval log alpha_bar falls linearly to alpha_bar(1 - 1/T) (1 - 0.999), diffusers' cap
  of the last beta (f(1) = 0 would give alpha_bar(1) = 0). It matches
  ``beta_schedule="squaredcos_cap_v2"`` at every k to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Union

import torch

__all__ = ["VPSchedule", "Time", "as_time"]

_MAX_BETA = 0.999  # diffusers' cap on a discrete beta (betas_for_alpha_bar)

#: A continuous time: a number or a tensor of shape () or (batch,).
Time = Union[float, torch.Tensor]


def as_time(t: Time) -> torch.Tensor:
    """A continuous time ``t`` (a number, or a tensor of shape () or (batch,)) as a float64 tensor of
    that shape, clipped to [0, 1]; TypeError for a bool, ValueError for a tensor of more dimensions."""
    if isinstance(t, bool):
        raise TypeError("t: expected a number or a tensor, got a bool")
    tt = torch.as_tensor(t, dtype=torch.float64)
    if tt.ndim > 1:
        raise ValueError(f"t: expected a number or a (batch,) tensor, got shape {tuple(tt.shape)}")
    return tt.clamp(0.0, 1.0)


def _per_row(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A () or (batch,) coefficient shaped to broadcast against x (batch, ...) in x's dtype."""
    v = v.to(dtype=x.dtype, device=x.device)
    if v.ndim == 1:
        v = v.reshape(-1, *([1] * (x.ndim - 1)))
    return v


@dataclass(frozen=True)
class VPSchedule:
    """A VP noise schedule over continuous time t in [0, 1]; build it with :meth:`linear` or :meth:`cosine`.

    All coefficient methods accept t as a float or a (batch,) tensor and return float64
    tensors of t's shape; methods that also take ``x`` (shape ``(batch, ...)``) return x's
    dtype and broadcast a (batch,) t over rows.

    Attributes:
        kind: ``"linear"`` or ``"cosine"``.
        beta_min, beta_max: the linear schedule's beta(0) and beta(1) (per unit time).
        s: the cosine schedule's offset.
        num_train_timesteps: T of the matching diffusers schedulers.
        t_max: where the continuous-time samplers ("em", "euler_ode") start. 1 for the
            linear schedule; 0.9946 for the cosine one, whose beta(t) grows like 2 / (1 - t)
            near t = 1 (the cut-off of DPM-Solver's NoiseScheduleVP; alpha_bar(0.9946) ~ 7e-5).
    """

    kind: str
    beta_min: float = 0.1
    beta_max: float = 20.0
    s: float = 0.008
    num_train_timesteps: int = 1000
    t_max: float = 1.0

    def __post_init__(self):
        if self.kind not in ("linear", "cosine"):
            raise ValueError(
                f"kind: expected 'linear' or 'cosine' (use VPSchedule.linear() / .cosine()), got {self.kind!r}"
            )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0, num_train_timesteps: int = 1000) -> "VPSchedule":
        """beta(t) = beta_min + t (beta_max - beta_min); diffusers ``"linear"`` with beta_start = beta_min / T."""
        beta_min, beta_max = float(beta_min), float(beta_max)
        if not (math.isfinite(beta_min) and math.isfinite(beta_max) and 0 <= beta_min <= beta_max and beta_max > 0):
            raise ValueError(
                f"beta_min, beta_max: expected 0 <= beta_min <= beta_max and beta_max > 0, got {beta_min}, {beta_max}"
            )
        return cls("linear", beta_min=beta_min, beta_max=beta_max, num_train_timesteps=_check_T(num_train_timesteps))

    @classmethod
    def cosine(cls, s: float = 0.008, num_train_timesteps: int = 1000, t_max: float = 0.9946) -> "VPSchedule":
        """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t + s) / (1 + s)); diffusers ``"squaredcos_cap_v2"``."""
        s, t_max = float(s), float(t_max)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"s: expected a positive offset, got {s}")
        if not 0 < t_max <= 1:
            raise ValueError(f"t_max: expected a time in (0, 1], got {t_max}")
        return cls("cosine", s=s, num_train_timesteps=_check_T(num_train_timesteps), t_max=t_max)

    @classmethod
    def from_diffusers(cls, config) -> "VPSchedule":
        """The schedule of a diffusers scheduler (or its ``config``): "linear" or "squaredcos_cap_v2" betas only."""
        config = getattr(config, "config", config)
        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        T = int(get("num_train_timesteps", 1000))
        if get("trained_betas", None) is not None or get("rescale_betas_zero_snr", False):
            raise ValueError("config: trained_betas / rescale_betas_zero_snr have no continuous VP schedule here")
        kind = get("beta_schedule", "linear")
        if kind == "linear":
            return cls.linear(float(get("beta_start", 1e-4)) * T, float(get("beta_end", 0.02)) * T, T)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(num_train_timesteps=T)
        raise ValueError(
            f"config: beta_schedule {kind!r} is not a VP schedule we model; expected 'linear' or 'squaredcos_cap_v2'"
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        """A JSON-able dict of every field (kind, beta_min, beta_max, s, num_train_timesteps, t_max);
        :meth:`from_dict` reads it back. The one format of the MLP and UNet ladder files."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d, where: str = "schedule") -> "VPSchedule":
        """The schedule of a :meth:`to_dict` dict, checked as :meth:`linear` / :meth:`cosine` check their arguments.

        ``kind`` and the keys that kind uses (linear: beta_min, beta_max, num_train_timesteps;
        cosine: s, num_train_timesteps, t_max) are required; the others fall back to the defaults.
        Other keys are ignored. ``where`` (a file name, a key) starts the message of the ValueError
        raised on bad input.
        """
        if not isinstance(d, dict):
            raise ValueError(f'{where}: expected a schedule dict with a "kind" key, got {d!r}')
        kind = d.get("kind")
        if not isinstance(kind, str) or kind not in _REQUIRED:
            raise ValueError(f"{where}: \"kind\": expected 'linear' or 'cosine', got {kind!r}")
        missing = [k for k in _REQUIRED[kind] if k not in d]
        if missing:
            raise ValueError(f"{where}: {kind} schedule without {missing}: {d!r}")
        values = {}
        for k in _FIELDS:
            if k == "kind" or k not in d:
                continue
            v = d[k]
            if k == "num_train_timesteps":
                ok = isinstance(v, int) and not isinstance(v, bool)
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok:
                expected = "an int" if k == "num_train_timesteps" else "a finite number"
                raise ValueError(f'{where}: "{k}": expected {expected}, got {v!r}')
            values[k] = v if k == "num_train_timesteps" else float(v)
        try:
            if kind == "linear":
                base = cls.linear(values["beta_min"], values["beta_max"], values["num_train_timesteps"])
            else:
                base = cls.cosine(values["s"], values["num_train_timesteps"], values["t_max"])
            t_max = values.get("t_max", base.t_max)
            if not 0 < t_max <= 1:
                raise ValueError(f"t_max: expected a time in (0, 1], got {t_max}")
        except ValueError as e:
            raise ValueError(f"{where}: malformed {kind} schedule {d!r}: {e}") from None
        # keep the stored values of the keys this kind does not use too, so that to_dict / from_dict round-trips
        return cls(**{**base.to_dict(), **values, "kind": kind})

    def diffusers_config(self) -> dict:
        """The diffusers scheduler arguments that give the same betas (and nothing else)."""
        T = self.num_train_timesteps
        if self.kind == "linear":
            return dict(
                num_train_timesteps=T, beta_schedule="linear", beta_start=self.beta_min / T, beta_end=self.beta_max / T
            )
        return dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")

    # ------------------------------------------------------------------ coefficients

    def _cos_arg(self, t: torch.Tensor) -> torch.Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    @property
    def _cos_cap(self):
        """(t_c, slope): beyond t_c = 1 - 1/T, log alpha_bar falls at rate -T log(1 - 0.999) (diffusers' beta cap)."""
        T = self.num_train_timesteps
        return 1.0 - 1.0 / T, -T * math.log1p(-_MAX_BETA)

    def log_alpha_bar(self, t: Time) -> torch.Tensor:
        """log alpha_bar(t)."""
        t = as_time(t)
        if self.kind == "linear":
            return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)
        t_c, slope = self._cos_cap
        log_f0 = 2 * math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))
        return 2 * torch.log(torch.cos(self._cos_arg(t.clamp_max(t_c)))) - log_f0 - slope * (t - t_c).clamp_min(0.0)

    def alpha_bar(self, t: Time) -> torch.Tensor:
        """alpha_bar(t) = alpha(t)^2, the signal variance fraction."""
        return self.log_alpha_bar(t).exp()

    def alpha(self, t: Time) -> torch.Tensor:
        """alpha(t) = sqrt(alpha_bar(t)), the signal coefficient."""
        return (0.5 * self.log_alpha_bar(t)).exp()

    def sigma(self, t: Time) -> torch.Tensor:
        """sigma(t) = sqrt(1 - alpha_bar(t)), the noise standard deviation."""
        return (-torch.expm1(self.log_alpha_bar(t))).clamp_min(0.0).sqrt()

    def beta(self, t: Time) -> torch.Tensor:
        """beta(t) = -d/dt log alpha_bar(t), per unit time (about 2000 at t = 1 - 1/T for the cosine schedule)."""
        t = as_time(t)
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        t_c, slope = self._cos_cap
        return torch.where(t <= t_c, math.pi / (1 + self.s) * torch.tan(self._cos_arg(t.clamp_max(t_c))), slope)

    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t) = sqrt(beta(t)), the forward SDE's noise scale."""
        return self.beta(t).sqrt()

    def log_snr(self, t: Time) -> torch.Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        la = self.log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la))

    # ------------------------------------------------------------------ conversions

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: Time) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps (the forward marginal)."""
        return _per_row(self.alpha(t), x0) * x0 + _per_row(self.sigma(t), x0) * eps

    def eps_to_score(self, eps: torch.Tensor, t: Time) -> torch.Tensor:
        """score = grad log p_t = -eps / sigma(t)."""
        return -eps / _per_row(self.sigma(t), eps)

    def score_to_eps(self, score: torch.Tensor, t: Time) -> torch.Tensor:
        """eps = -sigma(t) score."""
        return -_per_row(self.sigma(t), score) * score

    def eps_to_x0(self, eps: torch.Tensor, x: torch.Tensor, t: Time) -> torch.Tensor:
        """Predicted clean sample x0 = (x - sigma eps) / alpha (Tweedie's estimate when eps is exact)."""
        return (x - _per_row(self.sigma(t), x) * eps) / _per_row(self.alpha(t), x)

    def x0_to_eps(self, x0: torch.Tensor, x: torch.Tensor, t: Time) -> torch.Tensor:
        """eps = (x - alpha x0) / sigma."""
        return (x - _per_row(self.alpha(t), x) * x0) / _per_row(self.sigma(t), x)

    # ------------------------------------------------------------------ drifts

    def _coefficients(self, x: torch.Tensor, t: Time):
        """(beta(t), sigma(t)) as Python floats for a scalar t, else as (batch, 1, ...) tensors in x's dtype.

        Python floats keep the samplers' arithmetic what it was when they inlined these drifts:
        the same numbers for the same seed."""
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            return _per_row(self.beta(t), x), _per_row(self.sigma(t), x)
        return float(self.beta(t)), float(self.sigma(t))

    def reverse_sde_drift(
        self, x: torch.Tensor, t: Time, eps: Union[torch.Tensor, Callable], *, dt: float = 1.0
    ) -> torch.Tensor:
        """Drift of the reverse-time SDE, f - g^2 score = -beta/2 x + beta eps / sigma, times ``dt``.

        The reverse SDE runs from t = 1 to 0: dX = (reverse drift) dt + g dW-bar with dt < 0.
        ``x``: the state ``(batch, ...)``; ``t``: a time or a (batch,) tensor of times; ``eps``: the
        network output at (x, t), shaped like x, or an eps model ``eps(x, t)``.  ``dt``: a signed
        time step (``t_next - t``, negative towards the data): the result is then the step's drift
        increment (-dt beta)(x / 2 - eps / sigma), computed in that order (the "em" sampler's
        step is ``x + reverse_sde_drift(x, t, eps, dt=t_next - t) + sqrt(beta) dW``).
        Returns a tensor of x's shape and dtype.
        """
        if callable(eps):
            eps = eps(x, t)
        b, s = self._coefficients(x, t)
        return (-dt * b) * (0.5 * x - eps / s)

    def probability_flow_drift(
        self, x: torch.Tensor, t: Time, eps: Union[torch.Tensor, Callable], *, dt: float = 1.0
    ) -> torch.Tensor:
        """Velocity of the probability-flow ODE, f - g^2/2 score = -beta/2 x + beta eps / (2 sigma), times ``dt``.

        Arguments as :meth:`reverse_sde_drift`; with ``dt = t_next - t`` the result is the Euler
        step's increment (-dt / 2 beta)(x - eps / sigma).  Returns a tensor of x's shape and dtype.
        """
        if callable(eps):
            eps = eps(x, t)
        b, s = self._coefficients(x, t)
        return (-dt * 0.5 * b) * (x - eps / s)

    # ------------------------------------------------------------------ diffusers' integer timesteps

    def timestep(self, t: Time) -> torch.Tensor:
        """The diffusers timestep k = round(t T) - 1, clipped to [0, T - 1] (int64, t's shape)."""
        T = self.num_train_timesteps
        return (torch.round(as_time(t) * T) - 1).clamp(0, T - 1).to(torch.int64)

    def time(self, k) -> torch.Tensor:
        """The continuous time t_k = (k + 1) / T of diffusers timestep k (float64)."""
        return (torch.as_tensor(k, dtype=torch.float64) + 1) / self.num_train_timesteps


_FIELDS = tuple(f.name for f in fields(VPSchedule))
_REQUIRED = {"linear": ("beta_min", "beta_max", "num_train_timesteps"), "cosine": ("s", "num_train_timesteps", "t_max")}


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps: expected an int >= 2, got {T!r}")
    return T
