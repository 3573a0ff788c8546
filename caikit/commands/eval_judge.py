"""`caikit eval judge --pairs FILE --out DIR [backend options]`: how often the AI judge agrees with humans.

Every human-labelled pair (hh-rlhf `chosen`/`rejected` transcripts, prompt/chosen/rejected rows, a
labels.jsonl from `caikit label`) is judged with response_a = the human-chosen response, so
p_a = P(judge agrees with the human). Writes, in --out: judgments.jsonl, failures.jsonl, requests.jsonl
(resumable like `caikit judge`), usage.json, report.json (accuracy with its 95 % interval, Cohen's kappa,
position consistency, calibration), calibration.png (reliability diagram), config.yaml, run.json.
A judge below the quality gate is still measured on every pair (that is the point); the run then exits 3.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from caikit.backends.registry import BackendOptions
from caikit.config import option
from caikit.errors import UserError
from caikit.eval.agreement import agreement_report, format_report, plot_reliability
from caikit.gate import GateOptions, QualityGateFailed
from caikit.judge_run import judge_pairs, open_judge, planned, run_gate
from caikit.rundir import RunDir, note
from caikit.stages.judge import JudgeOptions, Pair, pair_id
from caikit.store import write_jsonl_atomic


@dataclasses.dataclass
class AgreementConfig(GateOptions, JudgeOptions, BackendOptions):
    pairs: str = option("", help="human-labelled pairs: hh-rlhf JSONL(.gz) with chosen/rejected transcripts, "
                                 "prompt/chosen/rejected rows, or a labels.jsonl from caikit label")
    out: str = option("outputs/eval-judge", help="output directory")
    limit: int = option(0, low=0, help="use only the first N pairs (0: all)")
    bins: int = option(10, low=1, high=100, help="confidence bins of the calibration table and reliability diagram")
    workers: int = option(1, low=1, high=256, help="worker processes sending judge requests (online APIs), sharing "
                                                   "--out; the gate's calibration pairs are sent by the command's "
                                                   "own process")

    def validate(self) -> None:
        BackendOptions.validate(self)
        if not self.pairs:
            raise UserError("--pairs FILE is required (e.g. hh-rlhf harmless-base-test.jsonl.gz)")
        if self.on_weak_judge != "stop":
            raise UserError("--on-weak-judge applies to caikit judge (eval judge only measures the judge)")


def human_pairs(path: str, limit: int | None) -> list[Pair]:
    """Human-labelled pairs as judge pairs with the human-chosen response as response_a."""
    from caikit.prompts import load_labelled_pairs

    return [Pair(pair_id(r.id, 0, 1), r.messages, r.chosen, r.rejected) for r in load_labelled_pairs(path, limit=limit)]


def label_rows(path: str) -> list[dict] | None:
    """The rows of a `caikit label` file (several people, ties, skips), or None for other pair files."""
    from caikit.label.rows import is_label_row, read_labels
    from caikit.store import JsonlFile

    if not str(path).endswith(".jsonl") or not Path(path).is_file():
        return None
    first = next(JsonlFile(path).iter(), None)
    return read_labels(path) if is_label_row(first) else None


def label_pairs(rows: list[dict], limit: int | None) -> list[Pair]:
    """Each pair someone answered, once, with response_a / response_b as labelled (not "the human's choice
    first": people may disagree, or call it a tie)."""
    from caikit.label.rows import answered_items

    items = answered_items(rows)[:limit] if limit else answered_items(rows)
    return [Pair(pair_id(item.pair_id, 0, 1), item.prompt, item.response_a, item.response_b) for item in items]


def run_agreement(cfg: AgreementConfig) -> int:
    from caikit.workers import check_workers

    check_workers(cfg.workers, cfg)
    labels = label_rows(cfg.pairs)
    pairs = label_pairs(labels, cfg.limit or None) if labels is not None else human_pairs(cfg.pairs, cfg.limit or None)
    if labels is not None and cfg.calibration_pairs:
        raise UserError("--calibration-pairs: give the human pairs as --pairs here (they are measured anyway)")
    jr = open_judge(cfg, cfg.out, "eval-judge", {})

    gate = None

    async def main() -> None:
        nonlocal gate
        try:  # the gate's sample measures accuracy too where response_a is the human's choice (not in label files)
            gate = await run_gate(jr, cfg, pairs, concurrency=jr.cached.inner_limit(), human_are_pairs=labels is None)
            # measuring the judge is this command's purpose: every pair is judged whatever the gate found, and
            # the gate's verdict is the exit code once report.json is written
            await judge_pairs(jr, pairs, concurrency=jr.cached.inner_limit(), confirm=gate is None,
                              workers=cfg.workers)
        finally:
            await jr.cached.aclose()

    try:
        asyncio.run(main())
    finally:
        judgments, outstanding = planned(jr, pairs)
        write_jsonl_atomic(jr.run.file(RunDir.FAILURES), outstanding)
        jr.run.write_json(RunDir.USAGE, {**jr.meter.summary(), "pairs": len(pairs), "judged": len(judgments)})
        jr.close()
    setup = jr.setup
    report = {"pairs_file": str(cfg.pairs), "judge": jr.cached.describe(), "method": setup.method.name,
              "swap": cfg.swap, "principles": cfg.principles, "constitution": jr.constitution.name,
              "constitution_hash": jr.constitution.hash, "failures": len(outstanding),
              **agreement_report(judgments, cfg.bins), "gate": gate, "usage": jr.meter.summary()}
    if labels is not None:  # people's answers, as labelled: the judge against each of them, and they against each other
        from caikit.label.stats import inter_annotator_agreement, judge_vs_humans

        from caikit.stages.judge import split_pair_id

        from caikit.eval.agreement import calibration_table
        from caikit.label.rows import latest_answers

        p_a = {split_pair_id(j["pair_id"])[0]: j["p_a"] for j in judgments}
        humans = judge_vs_humans(labels, p_a)
        # P(the person's pick is better), per answer that picked a side: the calibration of the judge against them
        picked = [p_a[r["pair_id"]] if r["choice"] == "a" else 1 - p_a[r["pair_id"]]
                  for r in latest_answers(labels, ("a", "b")) if r["pair_id"] in p_a]
        table, ece = calibration_table(picked, cfg.bins)
        report |= {"labels": True, "humans": humans, "inter_annotator": inter_annotator_agreement(labels),
                   "n": humans["decided"], "accuracy": humans["accuracy"],
                   "accuracy_interval": list(humans["interval"]) if humans["interval"] else None,
                   "kappa": humans["kappa"], "accuracy_first_order": None, "accuracy_swapped_order": None,
                   "calibration": table, "ece": ece}
    jr.run.write_json(RunDir.REPORT, report)
    plot_reliability(report["calibration"], jr.run.file("calibration.png"),
                     f"{jr.cached.describe().get('model')} judge ({setup.method.name}), n={report['n']}")
    print(format_report(report))
    note("eval judge", f"-> {cfg.out}/report.json, {cfg.out}/calibration.png")
    if gate is not None and gate["status"] == "failed":  # the report is whole; the exit code carries the verdict
        raise QualityGateFailed(gate["verdict"])
    return 1 if jr.died else 0  # a worker died: its pairs are left for the rerun (report.json says how many)
