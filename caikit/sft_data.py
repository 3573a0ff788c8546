"""From SL-CAI traces to the SFT dataset, and the derived files of a generate run (shared with `caikit merge`).

A trace makes an SFT example unless its final revision was cut at --max-tokens (`truncated`) or is no
improvement to learn from (`degenerate`: unchanged, the critique or the revision request again, a note about
the rewrite instead of one, a contradicting yes/no, empty once markers are stripped: stages/revise.py);
those are counted in stats.json and kept only with --keep-truncated / --keep-degenerate.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from caikit.records import SFTExample, Trace
from caikit.rundir import RunDir
from caikit.store import latest_by_id, write_jsonl_atomic


def usable_for_sft(trace: dict[str, Any], *, keep_truncated: bool, keep_degenerate: bool) -> bool:
    return (keep_truncated or not trace.get("truncated")) and (keep_degenerate or not trace.get("degenerate"))


def finalize_generate(run: RunDir, prompt_order: list[str], *, keep_truncated: bool = False,
                      keep_degenerate: bool = False, meter=None, extra_stats: dict[str, Any] | None = None,
                      screen=None) -> dict[str, int]:
    """Rebuild sft.jsonl, failures.jsonl, stats.json (and usage.json, given a meter) from the append-only logs."""
    traces = latest_by_id(run.jsonl(RunDir.TRACES).iter())
    order = {pid: i for i, pid in enumerate(prompt_order)}
    ordered = sorted(traces.values(), key=lambda t: order.get(t.get("prompt_id"), len(order)))
    sft = [SFTExample.from_trace(Trace.from_dict(t)).to_dict() for t in ordered
           if usable_for_sft(t, keep_truncated=keep_truncated, keep_degenerate=keep_degenerate)]
    if screen is not None:  # --guard (caikit/classifier/screen.py): counts, and with --guard-action drop, a filter
        sft = screen.revisions(sft)
        extra_stats = {**(extra_stats or {}), "guard": screen.stats}
    write_jsonl_atomic(run.file(RunDir.SFT), sft)
    failures = latest_by_id(run.jsonl(RunDir.FAILURE_LOG).iter())
    outstanding = [f for k, f in failures.items() if k not in traces]
    write_jsonl_atomic(run.file(RunDir.FAILURES), outstanding)
    degenerate = Counter(t["degenerate"] for t in traces.values() if t.get("degenerate"))
    counts = {"prompts": len(prompt_order), "traces": len(traces), "failures": len(outstanding),
              "sft_examples": len(sft), "truncated": sum(bool(t.get("truncated")) for t in traces.values()),
              "degenerate": sum(degenerate.values())}
    run.write_json(RunDir.STATS, {**counts, "degenerate_by_reason": dict(sorted(degenerate.items())),
                                  "keep_truncated": keep_truncated, "keep_degenerate": keep_degenerate,
                                  **(extra_stats or {})})
    if meter is not None:
        run.write_json(RunDir.USAGE, {**meter.summary(), **counts})
    return counts
