"""Wall time of `caikit demo` (the embedded-default loop on this CPU), per stage and in total.

Too long for the CI test budget, so it lives here; the target (issue #15: under 10 minutes) is for a 2-core CPU.

    python scripts/bench_demo.py --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/bench-demo", help="run directory (wiped first)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "caikit.cli", "demo", "--out", str(out)])
    total = time.perf_counter() - start
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else {"stages": {}}
    for name, info in state["stages"].items():
        print(f"{name:10s} {info.get('status'):8s} {info.get('seconds', float('nan')):8.1f} s")
    eval_report = out / "eval" / "report.json"
    if eval_report.exists():
        for row in json.loads(eval_report.read_text())["table"]:
            print(f"  {row['metric']:45s} before={row.get('before')} after={row.get('after')}")
    print(f"exit={proc.returncode}")
    print(f"demo wall time {total:.0f} s ({total / 60:.1f} min; target < 10 min)")


if __name__ == "__main__":
    main()
