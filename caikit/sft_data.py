"""From SL-CAI traces to the SFT dataset, and the derived files of a generate run (shared with `caikit merge`).

A trace makes an SFT example unless its final revision was cut at --max-tokens (`truncated`) or is no
improvement to learn from (`degenerate`: unchanged, the critique or the revision request again, a note about
the rewrite instead of one, a contradicting yes/no, empty once markers are stripped: stages/revise.py);
those are counted in stats.json and kept only with --keep-truncated / --keep-degenerate.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from caikit.index import RecordIndex
from caikit.records import SFTExample, Trace
from caikit.rundir import RunDir
from caikit.store import write_jsonl_atomic


def usable_for_sft(trace: dict[str, Any], *, keep_truncated: bool, keep_degenerate: bool) -> bool:
    return (keep_truncated or not trace.get("truncated")) and (keep_degenerate or not trace.get("degenerate"))


def finalize_generate(run: RunDir, prompt_order: list[str], *, keep_truncated: bool = False,
                      keep_degenerate: bool = False, meter=None, extra_stats: dict[str, Any] | None = None,
                      screen=None) -> dict[str, int]:
    """Rebuild sft.jsonl, failures.jsonl, stats.json (and usage.json, given a meter) from the append-only logs.

    Streamed through the logs' indexes (caikit.index): counts come from the index, each usable trace is read
    at its offset and written out, so no more than one record is held at a time. When nothing changed since
    the last rebuild (same logs, prompts and flags: a rerun of a finished run), the derived files stand. With
    `screen` (--guard, caikit/classifier/screen.py) the SFT examples are scored together and always rebuilt."""
    trace_log, failure_log = run.jsonl(RunDir.TRACES), run.jsonl(RunDir.FAILURE_LOG)
    traces, failures = trace_log.indexed(RecordIndex), failure_log.indexed(RecordIndex)
    try:
        signature = _signature(trace_log, failure_log, prompt_order, keep_truncated, keep_degenerate, extra_stats)
        stats = run.read_json(RunDir.STATS) if traces.finalized() == signature and screen is None else None
        if isinstance(stats, dict) and all(run.file(name).exists() for name in (RunDir.SFT, RunDir.FAILURES)):
            counts = {k: stats[k] for k in COUNTS}
        else:
            counts = _rebuild(run, prompt_order, trace_log, traces, failure_log, failures,
                              keep_truncated=keep_truncated, keep_degenerate=keep_degenerate, extra_stats=extra_stats,
                              screen=screen)
            traces.set_finalized(signature)
    finally:
        trace_log.close()
        failure_log.close()
    if meter is not None:
        run.write_json(RunDir.USAGE, {**meter.summary(), **counts})
    return counts


COUNTS = ("prompts", "traces", "failures", "sft_examples", "truncated", "degenerate")


def _signature(trace_log, failure_log, prompt_order, *flags) -> str:
    """What the derived files are a function of: both logs as they are now, the prompts and the flags."""
    sizes = [p.stat().st_size if p.exists() else 0 for p in (trace_log.path, failure_log.path)]
    digest = hashlib.sha256("\n".join(prompt_order).encode("utf-8")).hexdigest()
    return json.dumps([sizes, digest, *flags], sort_keys=True, default=str)


def _rebuild(run: RunDir, prompt_order, trace_log, traces, failure_log, failures, *, keep_truncated, keep_degenerate,
             extra_stats, screen=None) -> dict[str, int]:
    # (position in the prompt file, offset, length): three ints a trace, sorted like the prompt file
    order = {pid: i for i, pid in enumerate(prompt_order)}
    entries = sorted((order.get(label, len(order)), offset, length) for _, offset, length, label in traces.entries())
    del order

    def sft_rows():
        for _, offset, length in entries:
            trace = trace_log.read_at(offset, length)
            if usable_for_sft(trace, keep_truncated=keep_truncated, keep_degenerate=keep_degenerate):
                yield SFTExample.from_trace(Trace.from_dict(trace)).to_dict()

    rows = sft_rows()
    if screen is not None:  # --guard: counts, and with --guard-action drop, a filter (the guard scores them together)
        rows = screen.revisions(list(rows))
        extra_stats = {**(extra_stats or {}), "guard": screen.stats}
    sft_examples = write_jsonl_atomic(run.file(RunDir.SFT), rows)
    outstanding = write_jsonl_atomic(run.file(RunDir.FAILURES), (
        failure_log.read_at(offset, length) for key, offset, length, _ in list(failures.entries()) if key not in traces))
    facts = traces.counts()
    degenerate = facts["degenerate_by_reason"]
    counts = {"prompts": len(prompt_order), "traces": facts["rows"], "failures": outstanding,
              "sft_examples": sft_examples, "truncated": facts["truncated"], "degenerate": sum(degenerate.values())}
    run.write_json(RunDir.STATS, {**counts, "degenerate_by_reason": degenerate, "keep_truncated": keep_truncated,
                                  "keep_degenerate": keep_degenerate, **(extra_stats or {})})
    return counts
