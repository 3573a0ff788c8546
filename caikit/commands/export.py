"""`caikit export RUN_DIR --format datasets|parquet|jsonl`: a run's datasets in the layouts trainers read.

  sft.jsonl          -> RUN_DIR/export/sft/          `prompt`, `completion` (TRL SFTTrainer conversational
                        prompt-completion: TRL, like caikit, trains on the completion only); with
                        --sft-layout messages: `messages` (TRL then trains on every token of the conversation)
  preferences.jsonl  -> RUN_DIR/export/preferences/  `prompt`, `chosen`, `rejected` as lists of
                        {role, content} (TRL DPOTrainer / RewardTrainer conversational preference
                        layout, alignment-handbook) + p_chosen (the judge's soft label), source; no column
                        a trainer reads with another meaning (TRL's RewardTrainer subtracts `margin`)

`caikit export labels.jsonl` exports the human labels of `caikit label` the same way, to
LABELS-export/preferences/ beside the file (or --out): one preference row per person and pair answered a or b,
p_chosen 1.0, source "human"; ties and skips are counted (on the terminal and in the card), not exported.

Each export directory gets a dataset card (README.md, caikit.dataset_card) in the Hugging Face layout: where
the data came from and how far to trust it. Every export replaces the previous one in one rename.

Rows are streamed: read, converted and written one at a time to a JSON Lines file, from which `datasets`
builds the Arrow / Parquet output in blocks, so memory does not grow with the run.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from caikit.config import option
from caikit.commands.card_facts import read_run
from caikit.commands.dataset_card import Exported, dataset_card
from caikit.errors import UserError
from caikit.rows.layouts import RowError, example_of
from caikit.store import LINE, JsonlFile, read_json

FORMATS = ("datasets", "parquet", "jsonl")
MESSAGES = [{"role": "string", "content": "string"}]
PREFERENCE_COLUMNS = {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "p_chosen": "float64",
                      "source": "string"}
SFT_LAYOUTS = {"prompt-completion": {"prompt": MESSAGES, "completion": MESSAGES}, "messages": {"messages": MESSAGES}}
SOURCES = {"sft": "sft.jsonl", "preferences": "preferences.jsonl"}


@dataclasses.dataclass
class ExportConfig:
    run_dir: str = option(None, help="run directory of caikit generate or caikit judge, or a labels.jsonl "
                                     "written by caikit label")
    format: str = option("datasets", help="datasets (save_to_disk) | parquet | jsonl",  # noqa: A003
                         metadata={"choices": list(FORMATS)})
    sft_layout: str = option("prompt-completion", help="prompt-completion: TRL trains on the revision alone | "
                                                        "messages: one conversation per row, which TRL's SFTTrainer "
                                                        "trains on whole (earlier assistant turns included)",
                             metadata={"choices": list(SFT_LAYOUTS)})
    out: str = option("", help="export root (default: RUN_DIR/export); one sub-directory per dataset")
    agreement: str = option("", help="report.json of `caikit eval judge` to quote in the dataset card "
                                     "(default: RUN_DIR/agreement/report.json when present)")

    def validate(self) -> None:
        if not self.run_dir:
            raise UserError("give the run directory: caikit export RUN_DIR")
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}")
        if self.sft_layout not in SFT_LAYOUTS:
            raise UserError(f"--sft-layout must be one of {', '.join(SFT_LAYOUTS)}")


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


def row_for(columns: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Only the exported columns, in their order; messages reduced to {role, content}. A `messages` column
    is the record's prompt followed by its completion."""
    def clean(value, spec):
        if isinstance(spec, list):
            return [{"role": m["role"], "content": m["content"]} for m in value]
        return float(value) if spec == "float64" else value

    def value(name):
        return record["prompt"] + record["completion"] if name == "messages" else record[name]

    return {name: clean(value(name), spec) for name, spec in columns.items()}


def sft_records(records: Iterable[dict[str, Any]], path: Path) -> Iterator[dict[str, Any]]:
    """sft.jsonl rows as prompt + completion, read as `caikit train sft` reads them (caikit.rows): an older
    run's `messages` rows are split at their last assistant turn."""
    for line, record in enumerate(records, 1):
        try:
            prompt, completion = example_of(record)
        except RowError as e:
            raise UserError(str(e), path=str(path), line=line) from None
        if prompt is None:
            raise UserError("a plain-text row: no conversation to export", path=str(path), line=line)
        yield {**record, "prompt": prompt, "completion": completion}


@dataclasses.dataclass
class Written:
    """What a card says of the rows written: how many, their mean p_chosen, the dates they were made."""

    count: int = 0
    p_sum: float = 0.0
    first: str | None = None  # the earliest and latest created_at
    last: str | None = None

    def add(self, record: dict[str, Any], row: dict[str, Any]) -> None:
        self.count += 1
        self.p_sum += row.get("p_chosen", 0.0)
        stamp = record.get("created_at")
        if stamp:
            stamp = str(stamp)
            self.first = stamp if self.first is None else min(self.first, stamp)
            self.last = stamp if self.last is None else max(self.last, stamp)

    @property
    def made(self) -> str | None:
        if self.first is None:
            return None
        first, last = self.first[:10], self.last[:10]
        return first if first == last else f"{first} to {last}"

    @property
    def mean_p_chosen(self) -> float | None:
        return self.p_sum / self.count if self.count else None


def write_dataset(records: Iterable[dict[str, Any]], columns: dict[str, Any], target: Path, fmt: str,
                  card_of: Callable[[Written], str], source: str) -> Written:
    """Stream `records` into `target` as `columns` in `fmt`, then its card (card_of what was written), via a
    temporary directory and one rename: the old export stays until then, and stays when a row is bad (a one-line
    error naming `source` and the row). Nothing is written when there are no rows."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines = tmp / "train.jsonl" if fmt == "jsonl" else target.with_name(target.name + ".rows.jsonl")
    written = Written()
    try:
        with open(lines, "w", encoding="utf-8") as fh:
            for line, record in enumerate(records, 1):
                try:
                    row = row_for(columns, record)
                except (KeyError, TypeError, ValueError) as e:
                    raise UserError(f"row without a valid {e} field", path=source, line=line) from None
                fh.write(LINE.encode(row) + "\n")
                written.add(record, row)
        if written.count and fmt != "jsonl":
            arrow_from_lines(lines, columns, tmp, fmt)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fmt != "jsonl":
            lines.unlink(missing_ok=True)
    if not written.count:
        shutil.rmtree(tmp, ignore_errors=True)
        return written
    (tmp / "README.md").write_text(card_of(written), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return written


def arrow_from_lines(lines: Path, columns: dict[str, Any], tmp: Path, fmt: str) -> None:
    """`datasets` reads the JSON Lines in blocks into an Arrow file of a cache of its own (a fresh one: never a
    stale copy of an earlier export), then writes the directory (save_to_disk) or the Parquet file from it."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".export-cache-") as cache:
        dataset = Dataset.from_json(str(lines), features=features(columns), cache_dir=cache)
        if fmt == "datasets":
            dataset.save_to_disk(str(tmp))
        else:
            dataset.to_parquet(str(tmp / "train.parquet"))
        del dataset


def export_labels(cfg: ExportConfig, path: Path, labels: list[dict[str, Any]]) -> int:
    """A labels file -> the TRL preference layout (one row per person and pair answered a or b)."""
    from caikit.label.rows import latest_answers, to_preference_pairs

    pairs = [p.to_dict() for p in to_preference_pairs(labels)]
    ties, skips = (len(latest_answers(labels, keep=(choice,))) for choice in ("tie", "skip"))
    if not pairs:
        raise UserError(f"nothing to export: no pair answered with a preference ({ties} ties, {skips} skips)",
                        path=str(path))
    root = Path(cfg.out) if cfg.out else path.with_name(f"{path.stem}-export")
    data_file = {"datasets": None, "parquet": "train.parquet", "jsonl": "train.jsonl"}[cfg.format]
    facts = read_run(path)

    def card_of(written: Written) -> str:
        return dataset_card(Exported("preferences", written.count, PREFERENCE_COLUMNS, "preference", data_file,
                                     written.made, written.mean_p_chosen), facts) + (
            f"\n## Human labels\n\nFrom `{path.name}` (`caikit label`): {written.count} preference rows, p_chosen "
            f"1.0, source `human`. Not exported: {ties} ties and {skips} skips (they state no preference).\n")

    written = write_dataset(pairs, PREFERENCE_COLUMNS, root / "preferences", cfg.format, card_of, str(path))
    print(f"caikit export: {written.count} rows -> {root / 'preferences'} ({cfg.format}); {ties} ties and {skips} "
          "skips not exported", file=sys.stderr)
    return 0


def label_file_rows(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a `caikit label` file, or None when `path` is not one."""
    from caikit.label.rows import is_label_row, read_labels

    if not path.is_file():
        return None
    first = next(JsonlFile(path).iter(), None)
    return read_labels(path) if is_label_row(first) else None


def export_command(cfg: ExportConfig) -> int:
    run = Path(cfg.run_dir)
    labels = label_file_rows(run)
    if labels is not None:
        return export_labels(cfg, run, labels)
    if run.is_file():
        raise UserError("not a run directory, nor a labels file written by caikit label", path=str(run))
    if not run.is_dir():
        raise UserError("no such run directory", path=str(run))
    found = {name: run / file for name, file in SOURCES.items()
             if (run / file).exists() and next(JsonlFile(run / file).iter(), None) is not None}
    if not found:
        raise UserError("nothing to export: no rows in sft.jsonl or preferences.jsonl", path=str(run))
    agreement_path = Path(cfg.agreement) if cfg.agreement else run / "agreement" / "report.json"
    if cfg.agreement and not agreement_path.exists():
        raise UserError("no such agreement report", path=str(agreement_path))
    agreement = read_json(agreement_path) if agreement_path.exists() else None
    facts = read_run(run, agreement)
    root = Path(cfg.out) if cfg.out else run / "export"
    data_file = {"datasets": None, "parquet": "train.parquet", "jsonl": "train.jsonl"}[cfg.format]
    for name, path in found.items():
        columns = SFT_LAYOUTS[cfg.sft_layout] if name == "sft" else PREFERENCE_COLUMNS
        records = JsonlFile(path).iter()
        if name == "sft":
            records = sft_records(records, path)
        layout = cfg.sft_layout if name == "sft" else "preference"

        def card_of(written: Written, name=name, columns=columns, layout=layout) -> str:
            return dataset_card(Exported(name, written.count, columns, layout, data_file, written.made,
                                         written.mean_p_chosen), facts)

        written = write_dataset(records, columns, root / name, cfg.format, card_of, str(path))
        print(f"caikit export: {written.count} rows -> {root / name} ({cfg.format})", file=sys.stderr)
    return 0
