"""`caikit eval judge --pairs FILE --out DIR [backend options]`: how often the AI judge agrees with humans.

Every human-labelled pair (hh-rlhf `chosen`/`rejected` transcripts, prompt/chosen/rejected rows, a
labels.jsonl from `caikit label`) is judged with response_a = the human-chosen response, so
p_a = P(judge agrees with the human). Writes, in --out: judgments.jsonl, failures.jsonl, requests.jsonl
(resumable like `caikit judge`), usage.json, report.json (accuracy with its 95 % interval, Cohen's kappa,
position consistency, calibration), calibration.png (reliability diagram), config.yaml, run.json.
"""

from __future__ import annotations

import asyncio
import dataclasses

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


def run_agreement(cfg: AgreementConfig) -> int:
    pairs = human_pairs(cfg.pairs, cfg.limit or None)
    jr = open_judge(cfg, cfg.out, "eval-judge", {})

    gate = None

    async def main() -> None:
        nonlocal gate
        try:  # the gate's sample of these human pairs measures accuracy before the rest is paid for
            gate = await run_gate(jr, cfg, pairs, concurrency=jr.cached.inner_limit(), human_are_pairs=True)
            if gate is None or gate["status"] != "failed":
                await judge_pairs(jr, pairs, concurrency=jr.cached.inner_limit(), confirm=gate is None)
        finally:
            await jr.cached.aclose()

    try:
        asyncio.run(main())
    finally:
        judgments, outstanding = planned(jr, pairs)
        write_jsonl_atomic(jr.run.file(RunDir.FAILURES), outstanding)
        jr.run.write_json(RunDir.USAGE, {**jr.meter.summary(), "pairs": len(pairs), "judged": len(judgments)})
        jr.close()
    if gate is not None and gate["status"] == "failed":
        raise QualityGateFailed(gate["verdict"])
    setup = jr.setup
    report = {"pairs_file": str(cfg.pairs), "judge": jr.cached.describe(), "method": setup.method.name,
              "swap": cfg.swap, "principles": cfg.principles, "constitution": jr.constitution.name,
              "constitution_hash": jr.constitution.hash, "failures": len(outstanding),
              **agreement_report(judgments, cfg.bins), "gate": gate, "usage": jr.meter.summary()}
    jr.run.write_json(RunDir.REPORT, report)
    plot_reliability(report["calibration"], jr.run.file("calibration.png"),
                     f"{jr.cached.describe().get('model')} judge ({setup.method.name}), n={report['n']}")
    print(format_report(report))
    note("eval judge", f"-> {cfg.out}/report.json, {cfg.out}/calibration.png")
    return 0
