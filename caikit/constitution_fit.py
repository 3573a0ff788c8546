"""Fitting a constitution's judge weights to human labels: a regularised logistic model, cross-validated.

The data are labelled pairs, each judged under every judge principle separately (both orders, averaged):
x[i, k] = 2 p[i, k] - 1, where p[i, k] is principle k's P(response a is better) on pair i, and y[i] = 1 when
the person chose response a. The model of the human choice is

    P(y = 1 | x) = sigmoid(w . x),    w >= 0,    loss = mean log(1 + exp(-s w . x)) + lam/2 |w|^2,  s = 2y - 1

(L2-regularised logistic regression; Hastie, Tibshirani & Friedman, ESL 2nd ed., Sec. 4.4.4). Why this shape:

- no intercept: swapping a and b negates x and flips y, so the model must be odd in x; an intercept would
  be a position bias, which the swap-averaged probabilities have already removed;
- features are centred probabilities (not log-odds) because the judge pools its principles as the weighted
  mean of their probabilities (stages/judge.py): the sign of w . x is then exactly the side the judge takes
  with the fitted weights, so the held-out agreement reported here is the agreement the judge will have;
- w >= 0 because a weight is a share of the verdict (`judge_weight` in the constitution): a principle that
  people contradict gets 0 and is named, rather than a negative weight no judge can apply.

The fit is projected accelerated gradient descent (FISTA; Beck & Teboulle 2009, Sec. 4) on the non-negative
orthant; the penalty `lam` is chosen by k-fold cross-validated log-loss, and the held-out agreement comes
from nested cross-validation (the penalty re-chosen inside each outer training fold), so the "after" figure
is not flattered by the choice of the penalty. Pure numpy; no model calls here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caikit.stats import wilson_interval

LAMBDAS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # the penalty grid searched by cross-validation
ZERO_SHARE = 0.02  # a weight below this share of the total is "about 0": the principle adds nothing


def features(p: np.ndarray) -> np.ndarray:
    """(n, k) probabilities P(a better) -> (n, k) centred features 2p - 1 in [-1, 1]."""
    return 2.0 * np.asarray(p, dtype=float) - 1.0


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float, *, iters: int = 800, tol: float = 1e-7) -> np.ndarray:
    """Non-negative L2 logistic regression without intercept. x: (n, k), y: (n,) in {0, 1} -> w: (k,) >= 0."""
    z = x * (2.0 * np.asarray(y, dtype=float) - 1.0)[:, None]  # (n, k): each row signed by its label
    n, k = z.shape
    if n == 0:
        return np.zeros(k)
    # Lipschitz constant of the gradient: |Z|_2^2 / (4n) + lam (the logistic loss has curvature <= 1/4)
    step = 1.0 / (np.linalg.norm(z, 2) ** 2 / (4 * n) + lam + 1e-12)
    w = w_prev = np.zeros(k)
    t = 1.0
    for _ in range(iters):
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        v = w + ((t - 1) / t_next) * (w - w_prev)  # Nesterov momentum (FISTA, Beck & Teboulle 2009, Eq. 4.2)
        margin = z @ v
        grad = -(z.T @ _sigmoid(-margin)) / n + lam * v
        w_prev, w, t = w, np.maximum(v - step * grad, 0.0), t_next  # projection onto w >= 0
        if np.max(np.abs(w - w_prev)) < tol:
            break
    return w


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * m))  # overflow-free


def log_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    margin = (x @ w) * (2.0 * np.asarray(y, dtype=float) - 1.0)
    return float(np.mean(np.logaddexp(0.0, -margin)))


def agreement_of(scores: np.ndarray, y: np.ndarray) -> float:
    """Share of pairs where sign(score) is the person's side; a score of exactly 0 (no side) counts half."""
    s = np.sign(np.asarray(scores, dtype=float)) * (2.0 * np.asarray(y, dtype=float) - 1.0)
    return float(np.mean((s > 0) + 0.5 * (s == 0))) if len(s) else float("nan")


def folds_of(n: int, k: int, seed: int) -> list[np.ndarray]:
    """`k` (at most n) disjoint test index sets covering range(n), shuffled by `seed`."""
    order = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(order, max(2, min(k, n))) if len(f)]


def choose_lambda(x: np.ndarray, y: np.ndarray, *, folds: int, seed: int,
                  lambdas: tuple[float, ...] = LAMBDAS) -> tuple[float, dict[float, float]]:
    """The penalty with the lowest k-fold cross-validated log-loss (ties: the larger penalty), and each
    penalty's CV log-loss."""
    tests = folds_of(len(y), folds, seed)
    losses = {}
    for lam in lambdas:
        total = 0.0
        for test in tests:
            train = np.setdiff1d(np.arange(len(y)), test)
            total += log_loss(fit_logistic(x[train], y[train], lam), x[test], y[test]) * len(test)
        losses[lam] = total / len(y)
    best = min(losses.values())
    return max(lam for lam, loss in losses.items() if loss <= best + 1e-9), losses


@dataclass
class FitResult:
    """What `fit_weights` found; `weights` are in principle order, scaled to sum to the number of principles."""

    weights: list[float]
    raw_weights: list[float]  # the fitted w (log-odds per unit of 2p - 1)
    lam: float
    cv_log_loss: dict[float, float]
    solo: list[float]  # each principle alone: agreement of its own side with the people
    before: float  # held-out agreement of the ensemble with the given weights (it has no fitted part)
    after: float  # nested cross-validated agreement of the fitted ensemble
    n: int
    folds: int
    zero: list[int] = field(default_factory=list)  # principles whose weight is about 0

    def interval(self, rate: float) -> list[float] | None:
        got = wilson_interval(rate * self.n, self.n)
        return [round(v, 4) for v in got] if got else None


def fit_weights(p: np.ndarray, y: np.ndarray, prior: np.ndarray, *, folds: int = 5, seed: int = 0) -> FitResult:
    """Fit judge weights to human choices. p: (n, k) per-principle P(a better); y: (n,) 1 when the person chose
    a; prior: (k,) the constitution's weights now (the "before" ensemble)."""
    x, y, prior = features(p), np.asarray(y, dtype=float), np.asarray(prior, dtype=float)
    n, k = x.shape
    lam, losses = choose_lambda(x, y, folds=folds, seed=seed)
    w = fit_logistic(x, y, lam)
    held_out = np.zeros(n)
    for i, test in enumerate(folds_of(n, folds, seed + 1)):  # nested: the penalty is chosen on the training part
        train = np.setdiff1d(np.arange(n), test)
        inner_lam, _ = choose_lambda(x[train], y[train], folds=folds, seed=seed + 2 + i)
        held_out[test] = x[test] @ fit_logistic(x[train], y[train], inner_lam)
    total = float(w.sum())
    weights = (w * k / total) if total > 0 else np.zeros(k)
    zero = [j for j in range(k) if total <= 0 or w[j] < ZERO_SHARE * total]
    return FitResult(weights=[round(float(v), 4) for v in weights], raw_weights=[float(v) for v in w], lam=lam,
                     cv_log_loss={str(key): round(v, 5) for key, v in losses.items()},
                     solo=[agreement_of(x[:, j], y) for j in range(k)], before=agreement_of(x @ prior, y),
                     after=agreement_of(held_out, y), n=n, folds=len(folds_of(n, folds, seed + 1)), zero=zero)


def format_table(ids: list[str], result: FitResult, before_weights: list[float]) -> str:
    """The printed table: each principle's weight before and after, its solo agreement with the people."""
    width = max([len("principle"), *map(len, ids)])
    lines = [f"{'principle'.ljust(width)}  weight before  fitted weight  solo agreement"]
    for j, pid in enumerate(ids):
        mark = "  (about 0)" if j in result.zero else ""
        lines.append(f"{pid.ljust(width)}  {before_weights[j]:>13.3g}  {result.weights[j]:>13.3f}  "
                     f"{result.solo[j]:>14.1%}{mark}")
    before, after = result.interval(result.before), result.interval(result.after)
    lines.append(f"ensemble agreement with the people on {result.n} pairs ({result.folds}-fold held out): "
                 f"before {result.before:.1%} [{before[0]:.1%}, {before[1]:.1%}], "
                 f"after {result.after:.1%} [{after[0]:.1%}, {after[1]:.1%}]")
    if result.zero:
        lines.append("weight about 0 (adds nothing the others do not, or people disagree with it): "
                     + ", ".join(ids[j] for j in result.zero))
    return "\n".join(lines)
