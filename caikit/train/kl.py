"""KL coefficient (β) controllers for PPO: a fixed β, or the adaptive one of Ziegler et al. 2019.

The PPO reward is `score − β·KL(π ‖ π_ref)`. A fixed β says how much drift a unit of score buys; the
adaptive controller instead steers the measured KL toward a target, raising β when the policy drifts
past it and lowering β when it stays close.
"""

from __future__ import annotations


class FixedKLController:
    """β stays at `kl_coef`."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller on log-space β toward a target KL (Ziegler et al. 2019, §2.2).

    `n_steps` is the number of samples (episodes) the KL was measured over, `horizon` the number of
    samples over which an error of +20% would grow β by a factor of e^0.2.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0:
            raise ValueError("target KL must be > 0")
        if horizon <= 0:
            raise ValueError("horizon must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        # e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)           (Ziegler et al. 2019, §2.2)
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        # β_{t+1} = β_t (1 + K_β e_t), K_β = n_steps / horizon  (Ziegler et al. 2019, §2.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def make_kl_controller(kl_coef: float, kl_target: float | None, kl_horizon: int):
    """Adaptive when a target KL is given (> 0), fixed otherwise."""
    if kl_target:
        return AdaptiveKLController(kl_coef, kl_target, kl_horizon)
    return FixedKLController(kl_coef)
