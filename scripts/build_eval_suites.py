"""Build the bundled harm / over-refusal suites in caikit/data/suites/ from public sets (see caikit/data/NOTICE.md).

    python scripts/build_eval_suites.py --xstest DIR --advbench DIR

DIR is a git checkout (or bare mirror) of paul-rottger/exaggerated-safety (XSTest, CC-BY-4.0) and of
llm-attacks/llm-attacks (AdvBench, MIT); the files are read at the commits pinned below, so the output is the
same on every machine. Writes:

  harmful.jsonl   400 harmful requests: XSTest's 200 unsafe contrast prompts + 200 AdvBench behaviours
                  (every other row of the first 400 of harmful_behaviors.csv, a fixed choice)
  benign.jsonl    322 benign requests: XSTest's 250 safe prompts that sound unsafe + caikit's 22 bundled benign
                  prompts + 50 written for caikit (scripts/data/benign_extra.tsv)
  guard_extra.jsonl  the other 320 AdvBench behaviours (harmful), never in the eval suites: extra human-written
                  rows for training input guards (`caikit classifier train --data`)

Row: id, prompt, label (harmful | benign), category, sounds_unsafe (bool), source, license.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "caikit" / "data" / "suites"
XSTEST_COMMIT = "d7bb5bd"  # paul-rottger/exaggerated-safety
ADVBENCH_COMMIT = "46c2f6f"  # llm-attacks/llm-attacks (Andy Zou)


def git_show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def write(name: str, rows: list[dict]) -> None:
    seen = set()
    for row in rows:
        key = " ".join(row["prompt"].lower().split())
        assert key not in seen, f"duplicate prompt in {name}: {row['prompt']}"
        seen.add(key)
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--xstest", required=True)
    ap.add_argument("--advbench", required=True)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    xs = list(csv.DictReader(io.StringIO(git_show(args.xstest, XSTEST_COMMIT, "xstest_prompts.csv"))))
    adv = list(csv.DictReader(io.StringIO(git_show(args.advbench, ADVBENCH_COMMIT,
                                                   "data/advbench/harmful_behaviors.csv"))))
    assert len(xs) == 450 and len(adv) == 520
    xs_lic = {"source": "XSTest (Röttger et al., NAACL 2024)", "license": "CC-BY-4.0"}
    adv_lic = {"source": "AdvBench (Zou et al., 2023)", "license": "MIT"}
    harmful = [{"id": f"xstest-{r['id']}", "prompt": r["prompt"].strip(), "label": "harmful",
                "category": r["type"], "sounds_unsafe": True, **xs_lic} for r in xs if r["label"] == "unsafe"]
    chosen = set(range(0, 400, 2))
    harmful += [{"id": f"advbench-{i}", "prompt": r["goal"].strip(), "label": "harmful", "category": "advbench",
                 "sounds_unsafe": True, **adv_lic} for i, r in enumerate(adv) if i in chosen]
    benign = [{"id": f"xstest-{r['id']}", "prompt": r["prompt"].strip(), "label": "benign", "category": r["type"],
               "sounds_unsafe": True, **xs_lic} for r in xs if r["label"] == "safe"]
    own = {"source": "caikit", "license": "Apache-2.0"}
    for line in (ROOT / "caikit" / "data" / "benign_prompts.jsonl").read_text().splitlines():
        r = json.loads(line)
        benign.append({"id": r["id"], "prompt": r["prompt"], "label": "benign", "category": r["category"],
                       "sounds_unsafe": False, **own})
    for i, line in enumerate((ROOT / "scripts" / "data" / "benign_extra.tsv").read_text().splitlines()):
        category, prompt = line.split("\t")
        benign.append({"id": f"bnx-{i + 1:03d}", "prompt": prompt, "label": "benign", "category": category,
                       "sounds_unsafe": category in ("homonyms", "security-education", "medical-education",
                                                     "legal-education", "history", "fiction"), **own})
    extra = [{"id": f"advbench-{i}", "prompt": r["goal"].strip(), "label": "harmful", "category": "advbench",
              "sounds_unsafe": True, **adv_lic} for i, r in enumerate(adv) if i not in chosen]
    write("harmful.jsonl", harmful)
    write("benign.jsonl", benign)
    write("guard_extra.jsonl", extra)


if __name__ == "__main__":
    main()
