"""`caikit constitution fit C --labels L --judge SPEC --out DIR`: fit the judge's principle weights to human labels.

Every labelled pair is judged under every judge principle of C separately, both orders
(caikit/principle_matrix.py: resumable, nothing paid twice, estimate and --max-cost before sending); a
regularised logistic model of the person's choice on the principles' probabilities is fitted and
cross-validated (caikit/constitution_fit.py); DIR/constitution.yaml is C with each principle's fitted
`judge_weight` and its figures as comments (valid for `caikit constitution validate`); DIR/report.json and
a printed table give each principle's weight, its agreement with the people on its own, and the ensemble's
held-out agreement before and after fitting. The judge applies the fitted weights when every principle judges
every pair (`caikit judge --constitution DIR/constitution.yaml --principles N`, N = the number of principles).

Also here, for `fit`, `infer` and `diff`: the judge options (--judge SPEC) and the reading of preference
pairs from any file the row reader reads (`caikit label` rows, prompt/chosen/rejected, hh-rlhf transcripts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from caikit.commands.constitution_test import JudgeSpecOptions
from caikit.config import option
from caikit.constitution_checks import read_preferences
from caikit.errors import UserError
from caikit.rundir import RunDir, note

MIN_LABELLED = 10  # fewer labelled pairs than this cannot be split into folds worth fitting on


@dataclasses.dataclass
class ConstitutionJudgeOptions(JudgeSpecOptions):
    """The judge options of `constitution test` (--judge SPEC), and what fit, infer and diff add to them."""

    max_failure_rate: float = option(0.5, low=0, high=1, help="exit 1 when more than this share of the judgments "
                                                              "failed (rerun to retry them)")

    def judge_label(self) -> str:
        """provider:model of the judge, without any URL (which may carry a key)."""
        opts = self.judge_options()
        return f"{opts.backend}:{opts.model_name()}"


# --- fit ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitConfig(ConstitutionJudgeOptions):
    constitution: str = option("", help="the constitution whose judge principles are weighted (a YAML file or a "
                                        "bundled name such as hhh)")
    labels: str = option("", help="human preference labels: caikit label rows, prompt/chosen/rejected rows, hh-rlhf "
                                  "chosen/rejected transcripts (any file the row reader reads)")
    limit: int = option(32, low=0, help="use only the first N distinct labelled pairs (0: all); each costs "
                                        "principles x 2 judgments (32 x 3 principles: about 3 min on the embedded "
                                        "model on 2 CPU cores)")
    folds: int = option(5, low=2, high=50, help="cross-validation folds (the penalty is chosen by CV, and the "
                                                "held-out agreement is nested CV)")
    out: str = option("outputs/constitution-fit", help="output directory: constitution.yaml, report.json and the "
                                                       "judge's run files")

    def validate(self) -> None:
        if not self.constitution:
            raise UserError("give the constitution to fit: caikit constitution fit C --labels L --judge SPEC")
        if not self.labels:
            raise UserError("--labels FILE is required (caikit label rows or any labelled pairs file)")
        ConstitutionJudgeOptions.validate(self)


def cell_probability(cell) -> tuple[float, bool]:
    """(P(a better), read?) of a principle_matrix Cell; an unread cell counts as no evidence (0.5)."""
    return (cell.p_a, True) if cell.readable and cell.p_a is not None else (0.5, False)


def failure_share(matrix) -> float:
    counts = matrix.counts()
    total = sum(counts.values())
    return (total - counts["ok"]) / total if total else 0.0


def run_fit(cfg: FitConfig) -> int:
    import numpy as np

    from caikit.constitution import load_constitution
    from caikit.constitution_fit import fit_weights, format_table
    from caikit.constitution_write import with_judge_weights, write_valid
    from caikit.principle_matrix import judge_matrix

    constitution = load_constitution(cfg.constitution)
    principles = [p for p in constitution.principles if p.has_judge]  # judge_weight 0 too: a refit may revive it
    if not principles:
        raise UserError("has no judge principles to weight", path=str(constitution.path))
    prefs = read_preferences(cfg.labels, cfg.limit, cfg.seed)
    if len(prefs.choices) < MIN_LABELLED:
        raise UserError(f"{len(prefs.choices)} labelled pairs: at least {MIN_LABELLED} are needed to fit and "
                        "cross-validate weights", path=cfg.labels)
    matrix = judge_matrix(cfg.judge_options(), prefs.pairs, principles, cfg.out, stage="constitution-fit",
                          demos=constitution.judge_few_shot)
    ids = [p.id for p in principles]
    read = [[cell_probability(matrix.cell(pair.id, pid)) for pid in ids] for pair in prefs.pairs]
    usable = [(i, chose_a) for i, chose_a in prefs.choices if any(ok for _, ok in read[i])]
    p = np.array([[value for value, _ in read[i]] for i, _ in usable]).reshape(len(usable), len(ids))
    y = np.array([1.0 if chose_a else 0.0 for _, chose_a in usable])
    failed = failure_share(matrix)
    report: dict[str, Any] = {"constitution": constitution.name, "constitution_path": str(constitution.path),
                              "constitution_hash": constitution.hash, "labels": prefs.source,
                              "judge": cfg.judge_label(), "method": matrix.method, "pairs": len(prefs.pairs),
                              "labels_used": len(usable), "labels_left_out": len(prefs.choices) - len(usable),
                              "judgments": matrix.counts(), "failure_share": round(failed, 4), "usage": matrix.usage}
    run = RunDir(cfg.out)
    if failed > cfg.max_failure_rate or len(usable) < MIN_LABELLED:
        report["verdict"] = (f"{failed:.0%} of the judgments failed (--max-failure-rate {cfg.max_failure_rate:.0%}): "
                             "no weights fitted; rerun to retry them")
        run.write_json(RunDir.REPORT, report)
        note("constitution fit", report["verdict"] + ": exit 1")
        return 1
    before = [p.judge_share for p in principles]
    result = fit_weights(p, y, np.array(before), folds=cfg.folds, seed=cfg.seed)
    after_low = result.interval(result.after)[0]
    if after_low <= 0.5:
        verdict = (f"the judge is too weak to tell on these pairs: the fitted ensemble agrees with the people on "
                   f"{result.after:.1%} of held-out pairs, an interval that includes chance (50 %); the weights "
                   "below are not evidence of what people prefer")
    else:
        verdict = (f"fitted: held-out agreement with the people {result.after:.1%} (before {result.before:.1%})")
    rows = [{"id": pid, "weight_before": before[j], "judge_weight": result.weights[j],
             "coefficient": round(result.raw_weights[j], 5), "solo_agreement": round(result.solo[j], 4),
             "solo_interval": result.interval(result.solo[j]), "about_zero": j in result.zero,
             "unread": sum(not read[i][j][1] for i, _ in usable)} for j, pid in enumerate(ids)]
    report |= {"verdict": verdict, "penalty": result.lam, "cv_log_loss": result.cv_log_loss, "folds": result.folds,
               "before": {"agreement": round(result.before, 4), "interval": result.interval(result.before)},
               "after": {"agreement": round(result.after, 4), "interval": result.interval(result.after)},
               "principles": rows, "about_zero": [ids[j] for j in result.zero],
               "apply_with": f"--principles {len(ids)} (every principle judges every pair, averaged by judge_weight)"}
    written = any(w > 0 for w in result.weights)
    if written:
        header = [f"judge_weight fitted by `caikit constitution fit` to {len(usable)} human labels ({cfg.labels}),",
                  f"judge {cfg.judge_label()} ({matrix.method}); held-out agreement with the people: before "
                  f"{result.before:.1%}, after {result.after:.1%} ({result.folds}-fold).",
                  f"Apply it with --principles {len(ids)}: every principle judges every pair.", ""]
        notes = {row["id"]: [f"judge_weight {row['judge_weight']:.3g} (was {row['weight_before']:.3g}); alone it "
                             f"agrees with the people on {row['solo_agreement']:.0%} of {len(usable)} pairs"
                             + ("; weight about 0" if row["about_zero"] else "")] for row in rows}
        write_valid(run.file("constitution.yaml"), with_judge_weights(constitution.path, dict(zip(ids, result.weights)),
                                                                      header=header, notes=notes))
    else:
        report["verdict"] = ("no principle helps predict the people's choices (every fitted weight is 0): on these "
                             "pairs the judge is too weak to tell, or the principles go against what people chose")
    report["constitution_written"] = written
    run.write_json(RunDir.REPORT, report)
    print(format_table(ids, result, before))
    print(report["verdict"])
    if not written:
        note("constitution fit", "no constitution.yaml written: exit 1")
        return 1
    note("constitution fit", f"-> {cfg.out}/constitution.yaml, {cfg.out}/report.json")
    return 0
