"""Wall and CPU time of `caikit depth` at its default sizes, per part, with the machine's load beside them.

The target (issue #27: at most 5 minutes on 2 cores) is for the embedded model before and after the demo's DPO.
On a shared machine wall time depends on the other processes; the CPU seconds do not, and a run whose CPU
seconds are under 300 fits 5 minutes on 2 idle cores even with one thread doing all the work.

    python scripts/bench_depth.py --after outputs/demo/dpo [--before smollm2] [--out /tmp/depth]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="smollm2")
    ap.add_argument("--after", required=True, help="the aligned model (e.g. outputs/demo/dpo)")
    ap.add_argument("--out", default="outputs/bench-depth")
    ap.add_argument("extra", nargs="*", help="further caikit depth flags, after --")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "caikit.cli", "depth", "--before", args.before, "--after",
                           args.after, "--out", args.out, *args.extra])
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    result = Path(args.out) / "depth.json"
    if result.exists():
        for part, seconds in json.loads(result.read_text()).get("seconds_by_part", {}).items():
            print(f"{part:10s} {seconds:8.1f} s wall")
    print(f"exit={proc.returncode} cores={os.cpu_count()} load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"caikit depth: {wall:.0f} s wall, {cpu:.0f} CPU-seconds (target: 5 min on 2 cores)")


if __name__ == "__main__":
    main()
