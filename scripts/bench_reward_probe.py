"""Cold and cached wall time and held-out figures of `caikit train reward --freeze-backbone` on the bundled pairs.

    python scripts/bench_reward_probe.py                          # smollm2, the defaults the demo uses
    python scripts/bench_reward_probe.py --probe-layer 12 --max-length 128 --eval-fraction 0.3

Runs the probe twice on caikit/data/hh_harmless_reward_pairs.jsonl.gz with an empty feature cache (a
temporary CAIKIT_CACHE that borrows the de-quantised model from the real one): the first run extracts the
features (cold), the second finds them cached. The 1-minute load average before each run is printed beside
its time, since other processes sharing the CPU slow the cold run. The figures are printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--probe-layer", type=int, default=None, help="default: RewardConfig's")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from caikit.models import cache_root, resolve_model_path
    from caikit.prompts import bundled_human_reward_pairs_path

    model = resolve_model_path(args.model)  # de-quantise into the real cache first, outside the timing
    real_models = cache_root() / "models"
    with tempfile.TemporaryDirectory() as tmp:
        if real_models.exists():
            os.symlink(real_models, Path(tmp) / "models")
        os.environ["CAIKIT_CACHE"] = tmp  # features land here and vanish with it

        from caikit.train.reward import RewardConfig, train

        cfg = RewardConfig(model=model, data=str(bundled_human_reward_pairs_path()), out=str(Path(tmp) / "rm"),
                           freeze_backbone=True, max_length=args.max_length, eval_fraction=args.eval_fraction,
                           seed=args.seed)
        if args.probe_layer is not None:
            cfg.probe_layer = args.probe_layer
        cfg.validate()
        runs = []
        for _ in ("cold", "cached"):
            load = os.getloadavg()[0]
            started = time.perf_counter()
            train(cfg)
            runs.append((time.perf_counter() - started, load))
        summary = json.loads((Path(cfg.out) / "eval.json").read_text(encoding="utf-8"))

    (cold, cold_load), (cached, cached_load) = runs
    probe = summary["probe"]
    print(f"probe: layer {probe['layer']}, last {probe['max_length']} tokens, l2 {probe['l2']}, "
          f"{summary['train_pairs']} training pairs; {os.cpu_count()} CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"train accuracy {summary['train_accuracy']:.3f}")
    print(f"cold {cold:.1f} s (load average {cold_load:.1f}), cached {cached:.1f} s (load average {cached_load:.1f})")
    print(f"held-out accuracy {summary['eval_accuracy']:.3f} (95 % interval {summary['eval_accuracy_low']:.3f}-"
          f"{summary['eval_accuracy_high']:.3f}, n={summary['eval_pairs']}); length baseline "
          f"{summary['length_baseline_accuracy']:.3f}: {summary['verdict']}")


if __name__ == "__main__":
    main()
