"""`caikit export RUN_DIR --format datasets|parquet|jsonl`: a run's datasets in the layouts trainers read.

  sft.jsonl          -> RUN_DIR/export/sft/          `prompt`, `completion` (TRL SFTTrainer conversational
                        prompt-completion: trained on the completion only)
  preferences.jsonl  -> RUN_DIR/export/preferences/  `prompt`, `chosen`, `rejected` as lists of
                        {role, content} (TRL DPOTrainer / RewardTrainer conversational preference
                        layout, alignment-handbook) + p_chosen (the judge's soft label), source

Each export directory gets a dataset card (README.md) recording where the data came from:
constitution name and hash, models, judge method and order swap, counts, and judge-vs-human
agreement when a report is found. Every export replaces the previous one in one rename.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from caikit.config import option
from caikit.errors import UserError
from caikit.store import JsonlFile, read_json

FORMATS = ("datasets", "parquet", "jsonl")
MESSAGES = [{"role": "string", "content": "string"}]
PREFERENCE_COLUMNS = {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "p_chosen": "float64",
                      "source": "string"}
SFT_COLUMNS = {"prompt": MESSAGES, "completion": MESSAGES}
SOURCES = {"sft": ("sft.jsonl", SFT_COLUMNS), "preferences": ("preferences.jsonl", PREFERENCE_COLUMNS)}


@dataclasses.dataclass
class ExportConfig:
    run_dir: str = option(None, help="run directory of caikit generate or caikit judge")
    format: str = option("datasets", help="datasets (save_to_disk) | parquet | jsonl",  # noqa: A003
                         metadata={"choices": list(FORMATS)})
    out: str = option("", help="export root (default: RUN_DIR/export); one sub-directory per dataset")
    agreement: str = option("", help="report.json of `caikit eval judge` to quote in the dataset card "
                                     "(default: RUN_DIR/agreement/report.json when present)")

    def validate(self) -> None:
        if not self.run_dir:
            raise UserError("give the run directory: caikit export RUN_DIR")
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}")


def features(columns: dict[str, Any]):
    """datasets.Features for a column spec ('string', 'float64', or [ {field: dtype} ] for a list of structs)."""
    from datasets import Features, Value

    def convert(spec):
        if isinstance(spec, list):
            return [convert(spec[0])]
        if isinstance(spec, dict):
            return {k: convert(v) for k, v in spec.items()}
        return Value(spec)

    return Features({name: convert(spec) for name, spec in columns.items()})


def rows_for(columns: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the exported columns, in their order; messages reduced to {role, content}."""
    def clean(value, spec):
        if isinstance(spec, list):
            return [{"role": m["role"], "content": m["content"]} for m in value]
        return value

    return [{name: clean(r[name], spec) for name, spec in columns.items()} for r in records]


def _run_facts(run: Path) -> dict[str, Any]:
    """What the dataset card states: run identity, counts, usage (all optional)."""
    config = {}
    if (run / "config.yaml").exists():
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    return {"run": read_json(run / "run.json") or {}, "stats": read_json(run / "stats.json") or {},
            "usage": read_json(run / "usage.json") or {}, "config": config}


def _shown(v: Any) -> Any:
    return "" if v is None else "yes" if v is True else "no" if v is False else f"{v:.4g}" if isinstance(v, float) else v


def dataset_card(name: str, n_rows: int, columns: dict[str, Any], facts: dict[str, Any],
                 agreement: dict[str, Any] | None, data_file: str | None) -> str:
    run, stats, config = facts["run"], facts["stats"], facts["config"]
    identity = run.get("identity", {})
    stage = run.get("stage", "?")
    front = {"tags": ["caikit", "constitutional-ai", "rlaif" if name == "preferences" else "sft"]}
    if data_file:
        front["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": data_file}]}]
    facts_rows = [("rows", n_rows), ("produced by", f"caikit {stage}"),
                  ("constitution", identity.get("constitution") or config.get("constitution")),
                  ("constitution sha256", identity.get("constitution_hash"))]
    model = f"{identity.get('backend')}:{identity.get('model') or '(default)'}"
    if stage == "judge":
        facts_rows += [("judge model", model), ("judge method", identity.get("method")),
                       ("order swap (position-bias control)", identity.get("swap")),
                       ("judge principles per pair", identity.get("principles")),
                       ("pairs from", stats.get("source") or identity.get("pairs"))]
        if identity.get("pairs") == "samples":
            facts_rows += [("policy model", f"{identity.get('policy_backend')}:{identity.get('policy_model') or '(default)'}"),
                           ("samples per prompt", identity.get("n"))]
        facts_rows += [(k.replace("_", " "), stats.get(k)) for k in (
            "pairs", "judged", "failures", "ties", "dropped_below_min_margin", "min_margin",
            "position_consistency_rate", "mean_abs_margin", "revision_preferred_rate") if k in stats]
    else:
        facts_rows += [("model", model), ("critique/revision rounds", identity.get("rounds"))]
    if agreement:
        facts_rows += [("judge agreement with human labels", f"{_shown(agreement.get('accuracy'))} on {agreement.get('n')} "
                                                             f"pairs ({agreement.get('pairs_file')})"),
                       ("judge position consistency (agreement eval)", agreement.get("position_consistency_rate")),
                       ("judge ECE (agreement eval)", agreement.get("ece"))]
    else:
        facts_rows.append(("judge agreement with human labels", "not measured"))
    tokens = facts["usage"].get("total_tokens")
    if tokens is not None:
        facts_rows.append(("tokens / estimated cost (USD)", f"{tokens} / {facts['usage'].get('cost_usd')}"))

    table = "\n".join(f"| {k} | {_shown(v)} |" for k, v in facts_rows)
    column_lines = "\n".join(f"- `{c}`: {'list of {role, content}' if isinstance(s, list) else s}"
                             for c, s in columns.items())
    use = ("TRL `DPOTrainer` / `RewardTrainer` (conversational preference format)" if name == "preferences"
           else "TRL `SFTTrainer` (conversational prompt-completion format: the completion alone is trained)")
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# caikit {name} dataset\n\n"
            f"Exported by `caikit export` from a `caikit {stage}` run. Load with {use}.\n\n"
            f"| fact | value |\n|---|---|\n{table}\n\n## Columns\n\n{column_lines}\n")


def write_dataset(rows: list[dict[str, Any]], columns: dict[str, Any], target: Path, fmt: str, card: str) -> None:
    """Write rows into `target` via a temporary directory and one rename (the old export stays until then)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset = Dataset.from_list(rows, features=features(columns))
    if fmt == "datasets":
        dataset.save_to_disk(str(tmp))
    else:
        tmp.mkdir(parents=True)
        if fmt == "parquet":
            dataset.to_parquet(str(tmp / "train.parquet"))
        else:
            dataset.to_json(str(tmp / "train.jsonl"), lines=True, force_ascii=False)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def export_command(cfg: ExportConfig) -> int:
    run = Path(cfg.run_dir)
    if not run.is_dir():
        raise UserError("no such run directory", path=str(run))
    found = {name: JsonlFile(run / file).read() for name, (file, _) in SOURCES.items() if (run / file).exists()}
    if not any(found.values()):
        raise UserError("nothing to export: no rows in sft.jsonl or preferences.jsonl", path=str(run))
    agreement_path = Path(cfg.agreement) if cfg.agreement else run / "agreement" / "report.json"
    if cfg.agreement and not agreement_path.exists():
        raise UserError("no such agreement report", path=str(agreement_path))
    agreement = read_json(agreement_path) if agreement_path.exists() else None
    facts = _run_facts(run)
    root = Path(cfg.out) if cfg.out else run / "export"
    data_file = {"datasets": None, "parquet": "train.parquet", "jsonl": "train.jsonl"}[cfg.format]
    for name, records in found.items():
        if not records:
            continue
        columns = SOURCES[name][1]
        try:
            rows = rows_for(columns, records)
        except (KeyError, TypeError) as e:
            raise UserError(f"row without a valid {e} field", path=str(run / SOURCES[name][0])) from None
        card = dataset_card(name, len(rows), columns, facts, agreement, data_file)
        write_dataset(rows, columns, root / name, cfg.format, card)
        print(f"caikit export: {len(rows)} rows -> {root / name} ({cfg.format})", file=sys.stderr)
    return 0
