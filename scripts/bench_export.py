"""`caikit export` at scale: time and peak memory of exporting a run's SFT rows, in each format, at two sizes.

Writes a run directory of N synthetic SFT rows (a one-turn prompt and a ~400-character revision each, as
`caikit generate` writes them) and runs `caikit export RUN --format F` on it as a subprocess; prints wall
seconds and peak RSS per format and size, and the RSS per row beyond the smaller size.

    python scripts/bench_export.py                          # 40,000 and 200,000 rows, every format
    python scripts/bench_export.py --rows 10000 --formats jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REVISION = "A revision of a reasonable length, a few sentences that read like a real answer would. " * 4


def write_run(run: Path, n: int) -> int:
    run.mkdir(parents=True)
    with open(run / "sft.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"t{i}", "prompt": [{"role": "user", "content": f"bench prompt {i} " * 5}],
                                 "completion": [{"role": "assistant", "content": f"{i} {REVISION}"}],
                                 "created_at": "2026-12-07T10:00:00Z"}) + "\n")
    (run / "run.json").write_text(json.dumps({"stage": "generate", "identity": {"constitution": "hhh",
                                                                               "backend": "openai", "model": "m"}}))
    return (run / "sft.jsonl").stat().st_size


def export(run: Path, fmt: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one `caikit export` subprocess."""
    from bench_scale import measured  # (this script's directory is on sys.path)

    done = measured([sys.executable, "-m", "caikit.cli", "export", str(run), "--format", fmt])
    return done["seconds"], done["rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[40000, 200000], help="SFT rows, one run each")
    ap.add_argument("--formats", nargs="+", default=["jsonl", "parquet", "datasets"])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peaks: dict[str, dict[int, float]] = {fmt: {} for fmt in args.formats}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            size = write_run(Path(tmp) / f"run-{n}", n)
            for fmt in args.formats:
                seconds, rss = export(Path(tmp) / f"run-{n}", fmt)
                peaks[fmt][n] = rss
                print(f"  {fmt:<9} {n:>9,} rows ({size / 1e6:6.0f} MB of sft.jsonl)  {seconds:6.2f} s  "
                      f"peak RSS {rss:6.0f} MB", flush=True)
    for fmt, by_n in peaks.items():
        if len(by_n) >= 2:
            (n0, m0), (n1, m1) = sorted(by_n.items())[0], sorted(by_n.items())[-1]
            print(f"peak RSS per row beyond the base, {fmt}: {(m1 - m0) * 1024 * 1024 / (n1 - n0):,.0f} bytes")


if __name__ == "__main__":
    main()
