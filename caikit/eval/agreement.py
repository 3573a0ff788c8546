"""Judge-vs-human agreement, the numbers: accuracy against human labels, position consistency, calibration.

Every human-labelled pair is judged with response_a = the human-chosen response, so p_a = P(judge agrees
with the human). The command is caikit/commands/eval_judge.py.

Calibration is top-label: confidence = max(p, 1 - p) in [0.5, 1], a prediction is correct when it
picks the human-chosen response (an exact tie counts half), ECE = sum_b n_b / N * |acc_b - conf_b|
(Guo et al. 2017, Eq. 3) over `bins` equal-width confidence bins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from caikit.soft_labels import mean
from caikit.stats import cohens_kappa, wilson_interval


def correctness(p_chosen: float) -> float:
    """1 when the judge prefers the human-chosen response, 0 when the rejected one, 1/2 for a tie."""
    return 1.0 if p_chosen > 0.5 else 0.0 if p_chosen < 0.5 else 0.5


def calibration_table(p_chosen: Sequence[float], bins: int = 10) -> tuple[list[dict[str, Any]], float | None]:
    """Top-label reliability table over confidence max(p, 1-p) in [0.5, 1], and the ECE."""
    rows = [{"low": 0.5 + 0.5 * b / bins, "high": 0.5 + 0.5 * (b + 1) / bins, "n": 0, "confidence": [], "correct": []}
            for b in range(bins)]
    for p in p_chosen:
        confidence = max(p, 1.0 - p)
        b = min(int((confidence - 0.5) * 2 * bins + 1e-9), bins - 1)  # 1e-9: 0.6 is in [0.6, 0.7), not below
        rows[b]["confidence"].append(confidence)
        rows[b]["correct"].append(correctness(p))
    total = len(p_chosen)
    ece = 0.0
    for row in rows:
        row["n"] = len(row["correct"])
        row["confidence"], row["accuracy"] = mean(row["confidence"]), mean(row.pop("correct"))
        if row["n"]:
            ece += row["n"] / total * abs(row["accuracy"] - row["confidence"])  # Eq. 3, Guo et al. 2017
    return rows, (ece if total else None)


def accuracy_interval(p_chosen: Sequence[float]) -> list[float] | None:
    """95 % Wilson interval of the accuracy against the human labels (a tie counts half)."""
    interval = wilson_interval(sum(map(correctness, p_chosen)), len(p_chosen))
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


def agreement_kappa(p_chosen: Sequence[float]) -> float | None:
    """Cohen's kappa of judge vs humans over which response is better. Both raters see each pair once in
    both orders of its responses (chosen first, then chosen second), so the human's labels are balanced and
    a judge that always says "the first" scores 0, not its accuracy."""
    human = ["first"] * len(p_chosen) + ["second"] * len(p_chosen)
    judge = [("first" if p > 0.5 else "second" if p < 0.5 else "tie") for p in p_chosen]
    judge += [("second" if p > 0.5 else "first" if p < 0.5 else "tie") for p in p_chosen]
    return cohens_kappa(human, judge)


def agreement_report(judgments: list[dict[str, Any]], bins: int = 10) -> dict[str, Any]:
    """Accuracy vs the human label, position consistency, confidence and calibration of judgments."""
    p_chosen = [j["p_a"] for j in judgments]
    table, ece = calibration_table(p_chosen, bins)
    orders = [r for j in judgments for r in j.get("raw", []) if "p_shown_a" in r]

    def order_accuracy(key: str) -> float | None:
        return mean(correctness(j[key]) for j in judgments if j.get(key) is not None)

    return {
        "n": len(judgments),
        "accuracy": mean(map(correctness, p_chosen)),
        "ties": sum(p == 0.5 for p in p_chosen),
        "accuracy_interval": accuracy_interval(p_chosen),
        "kappa": agreement_kappa(p_chosen),
        "position_consistency_rate": mean(float(j["position_consistent"]) for j in judgments
                                          if j.get("position_consistent") is not None),
        "accuracy_first_order": order_accuracy("p_a_first"),  # human-chosen shown as (A)
        "accuracy_swapped_order": order_accuracy("p_a_swapped"),  # human-chosen shown as (B)
        "share_choosing_shown_a": mean(float(r["p_shown_a"] > 0.5) for r in orders),  # position bias: 0.5 is none
        "mean_confidence": mean(max(p, 1.0 - p) for p in p_chosen),
        "mean_p_chosen": mean(p_chosen),
        "ece": ece,
        "calibration": table,
    }


def plot_reliability(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    filled = [r for r in table if r["n"]]
    width = table[0]["high"] - table[0]["low"]
    ax.bar([r["low"] for r in filled], [r["accuracy"] for r in filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", label="perfect calibration")
    ax.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled], "o-", color="tab:red",
            label="mean confidence")
    for r in filled:
        ax.annotate(str(r["n"]), (r["low"] + width / 2, r["accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0.5, 1.0), ylim=(0.0, 1.0), xlabel="judge confidence max(p, 1-p)",
           ylabel="agreement with human label", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    interval = report.get("accuracy_interval")
    lines = [f"judge agreement on {report['n']} human-labelled pairs ({report['failures']} failed)",
             f"  accuracy vs human       {pct(report['accuracy'])}  (ties: {report['ties']})"
             + (f", 95% interval {interval[0]:.1%}-{interval[1]:.1%}" if interval else ""),
             f"  Cohen's kappa           {'n/a' if report.get('kappa') is None else format(report['kappa'], '.3f')}",
             f"  accuracy, human shown A {pct(report['accuracy_first_order'])}",
             f"  accuracy, human shown B {pct(report['accuracy_swapped_order'])}",
             f"  position consistency    {pct(report['position_consistency_rate'])}",
             f"  picks option (A)        {pct(report['share_choosing_shown_a'])}",
             f"  mean confidence         {pct(report['mean_confidence'])}",
             f"  ECE                     {'n/a' if report['ece'] is None else format(report['ece'], '.3f')}",
             "  confidence bin      n   mean conf  accuracy"]
    inter = report.get("inter_annotator") or {}
    if inter.get("labelers", 0) >= 2:
        lines.insert(2, f"  labellers among themselves  {inter['labelers']} people, {inter['overlapping_pairs']} shared "
                        f"pairs, mean kappa {'n/a' if inter.get('mean_kappa') is None else format(inter['mean_kappa'], '.3f')}")
    for r in report["calibration"]:
        conf = "" if r["confidence"] is None else f"{r['confidence']:.3f}"
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"  [{r['low']:.2f}, {r['high']:.2f})  {r['n']:5d}  {conf:>9}  {acc:>8}")
    return "\n".join(lines)
