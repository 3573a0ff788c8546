"""`caikit constitution stats RUN_DIR [--labels L]`: the per-principle table of any judge run, after the fact.

Reads RUN_DIR/judgments.jsonl (a `caikit judge`, `caikit eval judge` or `caikit constitution test` run) and the
gate's human-labelled calibration judgments beside it; `--labels` adds human choices from any labelled-pairs
file (caikit label rows, prompt/chosen/rejected, hh-rlhf), matched to the judged pairs by their text. Prints
the table and writes RUN_DIR/principle_stats.json (or --out). The table: caikit/principle_stats.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from caikit.config import option
from caikit.errors import UserError
from caikit.principle_stats import of_run, table_text
from caikit.rundir import RunDir, note
from caikit.store import write_json_atomic


@dataclasses.dataclass
class StatsConfig:
    run_dir: str = option(help="a judge run directory (caikit judge, eval judge, constitution test)")
    labels: str = option("", help="human-labelled pairs to measure each principle against (caikit label rows, "
                                  "prompt/chosen/rejected, hh-rlhf), matched to the judged pairs by their text")
    out: str = option("", help="where to write the table (default: RUN_DIR/principle_stats.json)")


def run_stats(cfg: StatsConfig) -> int:
    from caikit.prompts import load_labelled_pairs

    path = Path(cfg.run_dir)
    if not (path / RunDir.JUDGMENTS).is_file():
        raise UserError("no judgments.jsonl: not a judge run directory (caikit judge, eval judge, constitution "
                        "test)", path=cfg.run_dir)
    labelled = load_labelled_pairs(cfg.labels) if cfg.labels else []
    result = {**of_run(path, labelled), "labels": cfg.labels or None}
    if cfg.labels and not any(r["human_agreement"] for r in result["principles"]):
        note("constitution stats", f"none of the {len(labelled)} labelled pairs of {cfg.labels} is among the "
                                   "judged pairs (matched by prompt and both responses)")
    out = Path(cfg.out) if cfg.out else path / RunDir.PRINCIPLE_STATS
    write_json_atomic(out, result)
    print(table_text(result["principles"]))
    note("constitution stats", f"{result['judgments']} judgments, {result['human_labelled']} with a human choice "
                               f"-> {out}")
    return 0
