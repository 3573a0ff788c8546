"""Build the bundled human-labelled pairs from hh-rlhf harmless-base test (run once; the output is committed).

    python scripts/build_human_pairs.py [harmless-base-test.jsonl.gz] [OUT_DIR]

Splits the 1,800 human-labelled harmlessness pairs of Anthropic's hh-rlhf `harmless-base/test.jsonl.gz`
(MIT) into two disjoint files in caikit/data/:
  hh_harmless_calibration.jsonl.gz    400 pairs: the AI judge's quality gate (never trained on). It holds
                                      the 50 rows whose first human turn is a bundled red-team eval prompt
                                      (red_team_prompts.jsonl `hh_rlhf_row`), so no reward model trained
                                      on the other file has seen the human preference on a prompt it is
                                      later asked to score, plus 350 rows drawn with a fixed seed.
  hh_harmless_reward_pairs.jsonl.gz   the other 1,400 pairs: reward-model training and its held-out split.
Each line is the source row (`chosen` / `rejected` transcripts, unchanged) plus `hh_rlhf_row`, its 0-based
row in the source file; rows stay in source order. gzip is written with mtime 0 so a rebuild is byte-identical.
Prints the two counts last.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
DATA = REPO / "caikit" / "data"
CALIBRATION_FILE = "hh_harmless_calibration.jsonl.gz"
REWARD_FILE = "hh_harmless_reward_pairs.jsonl.gz"
CALIBRATION_SIZE = 400
SEED = 15  # the issue that asked for the split


def write_gz(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.encode("utf-8"))


def main(src: Path, out: Path) -> None:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    red_team = {json.loads(line)["hh_rlhf_row"] for line in (DATA / "red_team_prompts.jsonl").open(encoding="utf-8")}
    others = sorted(set(range(len(rows))) - red_team)
    random.Random(SEED).shuffle(others)
    calibration = red_team | set(others[:CALIBRATION_SIZE - len(red_team)])
    tagged = [{**row, "hh_rlhf_row": i} for i, row in enumerate(rows)]
    write_gz(out / CALIBRATION_FILE, [r for r in tagged if r["hh_rlhf_row"] in calibration])
    write_gz(out / REWARD_FILE, [r for r in tagged if r["hh_rlhf_row"] not in calibration])
    print(f"{len(calibration)} calibration pairs, {len(rows) - len(calibration)} reward-model pairs")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC, Path(sys.argv[2]) if len(sys.argv) > 2 else DATA)
