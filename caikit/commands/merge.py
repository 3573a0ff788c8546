"""`caikit merge DIR [DIR ...] --out OUT`: the run directories of `--shard i/n` runs, put back together.

The inputs are run directories of one `caikit generate` or `caikit judge` run, split with `--shard`:
same stage and same identity in run.json (the settings that make the records; the shard itself is
not one of them, and is read from run.json or config.yaml). OUT becomes an ordinary run directory of
that stage, so `caikit judge --from OUT`, `caikit export OUT` and `caikit train` read it, and the same
stage rerun on OUT (without --shard) requests nothing that is already done:

  append-only logs   traces.jsonl | judgments.jsonl, failures.log.jsonl, requests.jsonl
                     (+ policy_requests.jsonl): their union, one row per id (per request key)
  derived files      rebuilt by the stage's own functions: sft.jsonl + failures.jsonl
                     (pipeline.finalize_generate), or preferences.jsonl + failures.jsonl + stats.json
                     (judging.build_preferences / judge_stats)
  usage.json         summed over the inputs: what the whole run cost, duplicated work included
  run.json, config.yaml   the shared identity; the config of the first input, without --shard
  merge.json         inputs, counts, duplicates, conflicts, missing shards

A shard missing from the inputs (1/3 and 3/3 without 2/3) leaves a merge that does not cover its run: the
merge is still written, its stats.json, usage.json and merge.json name the missing shards and count the
items they held (a generate run's prompts are counted among `prompts` and `failures`, as `missing_prompts`;
a judge run's traces or prompts as `missing_items`), so the card and the report never read "nothing failed";
the command exits 1 unless --allow-partial says a partial merge is what is wanted.

One record id in two inputs is a duplicate: kept once and counted when both copies say the same
(timestamps, backend address and token counts aside), else a conflict: the first input's copy is
kept and both directories are named. batches.jsonl (batch-API job ids) is not carried over: finish
a shard (rerun it) before merging it. OUT is built in a temporary directory beside it and renamed
into place, so it is either the old OUT or the whole new one; a non-empty OUT that is not an
earlier merge is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from caikit.commands.merge_counts import (
    missing_facts,
    missing_items,
    planned_total,
    sum_summaries,
)
from caikit.commands import merge_rows
from caikit.commands.merge_rows import MergedRows
from caikit.config import load_yaml, option, save_config
from caikit.errors import UserError
from caikit.preferences import (
    SOURCES,
    build_preferences,
    planned_order,
    preference_stats,
)
from caikit.rundir import RunDir, lock_directory, run_id_of
from caikit.sft_data import finalize_generate
from caikit.shard import missing_shards, parse_shard
from caikit.store import (
    JsonlFile,
    clear_stale_temporaries,
    read_json,
    write_json_atomic,
    write_jsonl_atomic,
)

STAGES = ("generate", "judge")
RECORD_FILES = {"generate": RunDir.TRACES, "judge": RunDir.JUDGMENTS}
REQUEST_LOGS = (RunDir.REQUESTS, RunDir.POLICY_REQUESTS)
SHOWN_CONFLICTS = 5  # conflict lines printed; merge.json lists them all
_NUMBER = (int, float)
# What the rebuild reads from each record, with its JSON type: anything else is a one-line error.
RECORD_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    RunDir.TRACES: {"prompt_id": str, "prompt": list, "initial_response": str, "final_revision": str},
    RunDir.JUDGMENTS: {"pair_id": str, "prompt": list, "response_a": str, "response_b": str, "p_a": _NUMBER,
                        "principle_ids": list, "position_consistent": (bool, type(None))},
}
# Fields a record may lack (runs before they existed), but of this type when present.
OPTIONAL_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    RunDir.TRACES: {"truncated": bool, "degenerate": str},
}
_PAIR_ID = re.compile(r".+#\d+-\d+")


@dataclasses.dataclass
class MergeConfig:
    dirs: list[str] = option([], help="run directories of one caikit generate or caikit judge run, each made "
                                      "with --shard i/n")
    out: str = option("", help="the merged run directory (built beside it, then renamed into place; an earlier "
                               "merge there is replaced)")
    allow_partial: bool = option(False, help="exit 0 when shards are missing (the merge counts their items as "
                                             "missing either way); default: exit 1")

    def validate(self) -> None:
        if not self.dirs:
            raise UserError("give the shard run directories: caikit merge DIR [DIR ...] --out OUT")
        if not self.out:
            raise UserError("--out is required: the directory the merged run is written to")


@dataclasses.dataclass
class ShardRun:
    """One input run directory: its stage, identity, shard label ('' = unsharded) and config."""

    path: Path
    stage: str
    identity: dict[str, Any]
    shard: str
    config: dict[str, Any]

    def json(self, name: str) -> dict[str, Any]:
        data = read_json(self.path / name)
        return data if isinstance(data, dict) else {}

    def rows(self, name: str, key: str = "id") -> Iterator[dict[str, Any]]:
        """Rows of a JSONL file, each checked for `key` and the fields the merge reads from it."""
        for _, _, row in self.placed_rows(name, key):
            yield row

    def placed_rows(self, name: str, key: str = "id") -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(offset, length, row) of each row of a JSONL file, the row checked as `rows` checks it."""
        path = self.path / name
        fields, optional = RECORD_FIELDS.get(name, {}), OPTIONAL_FIELDS.get(name, {})
        for offset, length, row in JsonlFile(path).iter_placed():
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise UserError(f"a row without a '{key}' (not written by caikit?)", path=str(path))
            checked = {**fields, **{f: kind for f, kind in optional.items() if f in row}}
            for field, kind in checked.items():
                value = row.get(field)
                if not isinstance(value, kind) or (kind is _NUMBER and isinstance(value, bool)):
                    raise UserError(f"record {_short(row[key])}: '{field}' is missing or of the wrong type",
                                    path=str(path))
            if name == RunDir.JUDGMENTS and (not _PAIR_ID.fullmatch(row["pair_id"])
                                              or not all(isinstance(p, str) for p in row["principle_ids"])):
                raise UserError(f"record {_short(row[key])}: malformed pair_id or principle_ids", path=str(path))
            yield offset, length, row

    def count(self, name: str, field: str) -> int:
        value = self.json(name).get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def open_run(path_text: str) -> ShardRun:
    path = Path(path_text)
    if not path.is_dir():
        raise UserError("not a directory", path=path_text)
    run = read_json(path / RunDir.RUN)
    if not isinstance(run, dict) or run.get("stage") not in STAGES:
        raise UserError("not a caikit generate or judge run directory (no run.json naming either)", path=path_text)
    if not isinstance(run.get("identity"), dict):
        raise UserError("run.json has no identity mapping (not written by caikit?)", path=path_text)
    config = load_yaml(path / RunDir.CONFIG) if (path / RunDir.CONFIG).exists() else {}
    shard = str(run.get("shard", config.get("shard", "")) or "")
    try:
        parse_shard(shard)
    except UserError:
        raise UserError(f"unreadable shard {shard!r} in run.json / config.yaml", path=path_text) from None
    return ShardRun(path, run["stage"], run["identity"], shard, config)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_one_run(runs: list[ShardRun]) -> None:
    """Every input holds the same stage with the same identity, and no directory is given twice."""
    first = runs[0]
    seen: dict[Path, Path] = {}
    for run in runs:
        real = run.path.resolve()
        if real in seen:
            raise UserError(f"given twice (also as {seen[real]})", path=str(run.path))
        seen[real] = run.path
        if run.stage != first.stage:
            raise UserError(f"holds a '{run.stage}' run but {first.path} a '{first.stage}' run: "
                            "merge the shards of one run", path=str(run.path))
        changed = [k for k in dict.fromkeys([*first.identity, *run.identity])
                   if first.identity.get(k) != run.identity.get(k)]
        if changed:
            k = changed[0]
            more = f", and {len(changed) - 1} more setting(s)" if len(changed) > 1 else ""
            raise UserError(f"was run with other settings than {first.path}: {k} = {_short(run.identity.get(k))} vs "
                            f"{_short(first.identity.get(k))}{more}; merge the shards of one run", path=str(run.path))


def check_out(out: Path, runs: list[ShardRun]) -> None:
    """OUT may be new, empty or an earlier merge; never an input, inside one or holding one."""
    real = out.resolve()
    for run in runs:
        src = run.path.resolve()
        if real == src or src in real.parents or real in src.parents:
            raise UserError(f"--out overlaps the input {run.path}: choose a directory of its own", path=str(out))
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RunDir.MERGE).exists())):
        raise UserError("exists and is not empty, nor an earlier caikit merge output: choose a new --out",
                        path=str(out))


def union(runs: list[ShardRun], name: str, *, key: str = "id", compare: bool = False) -> MergedRows:
    """The rows of `name` over all inputs, as places (caikit.commands.merge_rows)."""
    return merge_rows.union([(run.path, JsonlFile(run.path / name),
                              lambda run=run: run.placed_rows(name, key)) for run in runs], key=key, compare=compare)


def agreed(runs: list[ShardRun], label: str, value_of) -> Any:
    """A setting outside the identity that must still agree (e.g. judge --min-margin)."""
    first = value_of(runs[0])
    for run in runs[1:]:
        if value_of(run) != first:
            raise UserError(f"was run with other settings than {runs[0].path}: {label} = {value_of(run)!r} vs "
                            f"{first!r}; rerun it with the same {label} (nothing is requested again)",
                            path=str(run.path))
    return first


def min_margin_of(run: ShardRun) -> float:
    """The judge's --min-margin: from stats.json (what was applied), else config.yaml."""
    value = run.json(RunDir.STATS).get("min_margin", run.config.get("min_margin", 0.0))
    if not isinstance(value, _NUMBER) or isinstance(value, bool) or not 0 <= value <= 0.5:
        raise UserError(f"unreadable min_margin {_short(value)} in stats.json / config.yaml", path=str(run.path))
    return float(value)


def write_logs(tmp: Path, runs: list[ShardRun], records: str) -> tuple[MergedRows, MergedRows, int]:
    """The append-only files: records, failure log, policy samples and request logs. Returns (records,
    failures, duplicate requests)."""
    merged = union(runs, records, compare=True)
    write_jsonl_atomic(tmp / records, merged.rows.values())
    failures = union(runs, RunDir.FAILURE_LOG)
    write_jsonl_atomic(tmp / RunDir.FAILURE_LOG, failures.rows.values())
    if any((r.path / RunDir.SAMPLES).exists() for r in runs):
        samples = union(runs, RunDir.SAMPLES)
        write_jsonl_atomic(tmp / RunDir.SAMPLES, samples.rows.values())
        samples.close()
    request_duplicates = 0
    for name in REQUEST_LOGS:
        if any((r.path / name).exists() for r in runs):
            requests = union(runs, name, key="key")
            write_jsonl_atomic(tmp / name, requests.rows.values())
            request_duplicates += requests.duplicates
            requests.close()
    return merged, failures, request_duplicates


def write_generate(tmp: Path, runs: list[ShardRun]) -> tuple[MergedRows, dict[str, int]]:
    traces, _, request_duplicates = write_logs(tmp, runs, RunDir.TRACES)
    stats = runs[0].json(RunDir.STATS)
    lost = missing_items(runs, "planned_prompts", "prompts")
    extra = missing_facts(runs, lost, "missing_prompts")
    counts = finalize_generate(RunDir(tmp), [t.get("prompt_id", "") for t in traces.rows.values()],
                               keep_truncated=bool(stats.get("keep_truncated")),
                               keep_degenerate=bool(stats.get("keep_degenerate")), extra_stats=extra)
    counts["prompts"] = max(planned_total(runs, RunDir.USAGE, "prompts"), counts["traces"] + counts["failures"])
    if lost:  # prompts of the missing shards: never asked, so among the prompts and the failures
        counts["prompts"] += lost
        counts["failures"] += lost
    merged_stats = {**read_json(tmp / RunDir.STATS), **{k: counts[k] for k in ("prompts", "failures")}}
    if isinstance(stats.get("planned_prompts"), int):
        merged_stats["planned_prompts"] = stats["planned_prompts"]
    write_json_atomic(tmp / RunDir.STATS, merged_stats)
    usage = sum_summaries([r.json(RunDir.USAGE) for r in runs])
    write_json_atomic(tmp / RunDir.USAGE, {**usage, **counts, **extra})
    return traces, {**counts, "duplicate_requests": request_duplicates, **extra}


def write_judge(tmp: Path, runs: list[ShardRun]) -> tuple[MergedRows, dict[str, int]]:
    min_margin = agreed(runs, "min_margin", min_margin_of)
    judgments, failures, request_duplicates = write_logs(tmp, runs, RunDir.JUDGMENTS)
    rows = planned_order(list(judgments.rows.values()))
    samples = {s["id"] for r in runs for s in r.rows(RunDir.SAMPLES)} if any(
        (r.path / RunDir.SAMPLES).exists() for r in runs) else set()
    outstanding = [f for k, f in failures.rows.items()
                   if k not in judgments.rows and k not in samples]  # sample failures fixed since are not outstanding
    write_jsonl_atomic(tmp / RunDir.FAILURES, outstanding)

    identity = runs[0].identity
    source = SOURCES.get(identity.get("pairs", "revision"), SOURCES["revision"])
    run_id = next((j["run_id"] for j in rows if j.get("run_id")), run_id_of(identity))
    gates = {(r.json(RunDir.STATS).get("gate") or {}).get("status", "not run") for r in runs}
    provenance = {"method": identity.get("method"), "judge": next((j["backend"] for j in rows if j.get("backend")), {}),
                  "constitution": identity.get("constitution"), "constitution_hash": identity.get("constitution_hash"),
                  "judge_gate": gates.pop() if len(gates) == 1 else "mixed (see each shard's gate.json)"}
    preferences, counts = build_preferences(rows, source=source, min_margin=min_margin, run_id=run_id,
                                            provenance=provenance)
    write_jsonl_atomic(tmp / RunDir.PREFERENCES, (p.to_dict() for p in preferences))
    judged_failures = [f for f in outstanding if f.get("stage") != "sample"]
    pairs = max(planned_total(runs, RunDir.STATS, "pairs"), len(rows) + len(judged_failures))
    stats = preference_stats(source, identity, rows, preferences, counts, pairs=pairs, failures=len(outstanding),
                             min_margin=min_margin,
                             skipped=sum_summaries([r.json(RunDir.STATS).get("skipped") or {} for r in runs]))
    shard_gates = [r.json(RunDir.STATS).get("gate") for r in runs]
    stats["gate"] = shard_gates[0] if all(g == shard_gates[0] for g in shard_gates) else {
        "status": "mixed", "shards": {str(r.path): g for r, g in zip(runs, shard_gates)}}
    lost = missing_items(runs, "planned_items", "items")
    extra = missing_facts(runs, lost, "missing_items")
    if lost:  # each trace / prompt of a missing shard is at least one pair never judged
        stats["failures"] += lost
    stats |= extra
    if all(isinstance(r.json(RunDir.STATS).get("items"), int) for r in runs):  # as an unsharded run records them
        stats |= {"planned_items": runs[0].count(RunDir.STATS, "planned_items"),
                  "items": planned_total(runs, RunDir.STATS, "items")}
    write_json_atomic(tmp / RunDir.STATS, stats)
    usage = sum_summaries([r.json(RunDir.USAGE) for r in runs])
    write_json_atomic(tmp / RunDir.USAGE, {**usage, "pairs": pairs, "judged": len(rows), **extra})
    return judgments, {"pairs": pairs, "judged": len(rows), "failures": stats["failures"],
                       "preferences": len(preferences), "duplicate_requests": request_duplicates, **extra}


def install(tmp: Path, out: Path, runs: list[ShardRun]) -> None:
    """Put the finished `tmp` at `out`: a rename, after moving an earlier merge out of the way."""
    check_out(out, runs)  # again: something may have appeared there while we worked
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run_merge(cfg: MergeConfig) -> int:
    runs = [open_run(d) for d in cfg.dirs]
    check_one_run(runs)
    out = Path(cfg.out)
    check_out(out, runs)
    lock = lock_directory(out, "merge", beside=True)
    try:
        return merge_into(runs, out, allow_partial=cfg.allow_partial)
    finally:
        lock.release()


def merge_into(runs: list[ShardRun], out: Path, *, allow_partial: bool = False) -> int:
    stage = runs[0].stage
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(out)
    tmp = out.with_name(f".{out.name}.merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        records, counts = (write_generate if stage == "generate" else write_judge)(tmp, runs)
        missing = missing_shards([r.shard for r in runs])
        write_json_atomic(tmp / RunDir.RUN, {"stage": stage, "identity": runs[0].identity, "shard": ""})
        if runs[0].config:
            save_config({**runs[0].config, "shard": "", "out": str(out)}, tmp / RunDir.CONFIG)
        per_input = {str(r.path): 0 for r in runs}
        for origin in records.origin.values():
            per_input[str(origin)] += 1
        write_json_atomic(tmp / RunDir.MERGE, {
            "stage": stage,
            "inputs": [{"dir": str(r.path), "shard": r.shard, "records_kept": per_input[str(r.path)]} for r in runs],
            "counts": {RECORD_FILES[stage].removesuffix(".jsonl"): len(records.rows), **counts},
            "duplicates": records.duplicates, "conflicts": records.conflicts, "missing_shards": missing})
        install(tmp, out, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    kind = RECORD_FILES[stage].removesuffix(".jsonl")
    print(f"caikit merge: {len(runs)} {stage} runs -> {out}: {len(records.rows)} {kind}, {records.duplicates} "
          f"duplicates kept once, {len(records.conflicts)} conflicts, {counts['failures']} failures", file=sys.stderr)
    for c in records.conflicts[:SHOWN_CONFLICTS]:
        print(f"caikit merge: conflict: {c['id']} differs ({', '.join(c['fields'])}) between {c['kept']} (kept) and "
              f"{c['dropped']}", file=sys.stderr)
    if len(records.conflicts) > SHOWN_CONFLICTS:
        print(f"caikit merge: ... {len(records.conflicts) - SHOWN_CONFLICTS} more conflicts in {out}/merge.json",
              file=sys.stderr)
    if missing is None:
        print("caikit merge: the inputs split the work in different ways (different n in i/n): "
              "coverage not checked", file=sys.stderr)
    elif missing:
        lost = counts.get("missing_prompts", counts.get("missing_items"))
        held = f" ({lost} {'prompts' if stage == 'generate' else 'traces / prompts'}, counted as failures)" if lost else ""
        print(f"caikit merge: missing shards {', '.join(missing)}{held}: run them and merge again"
              + ("" if allow_partial else "; exit 1 (--allow-partial to accept a partial merge)"), file=sys.stderr)
        return 0 if allow_partial else 1
    return 0
