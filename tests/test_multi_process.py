"""The multi-GPU path, proven on CPUs: `caikit train sft | dpo` under `accelerate launch` with two processes
(gloo, configs/accelerate/cpu_gloo.yaml) match one process with the same global batch, step by step."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog runs blue green river stone light quick slow tree house music cloud paper window".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], processes: int) -> None:
    if processes == 1:
        cmd = [sys.executable, "-m", "caikit.cli", *args]
    else:  # the venv's own `accelerate` script, on a port of our own (other test runs may share the machine)
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_gloo.yaml"), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), "-m", "caikit.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "error" in line.lower())[-3000:]
    if processes > 1:  # said once, not once per process
        assert done.stderr.count("saved model to") == 1, done.stderr[-3000:]


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("multi-process-data")

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    # SFT responses all of one length: each process's token-mean loss then averages to the global batch's
    reply = [{"role": "assistant", "content": "Hello there, it is lovely to meet you."}]
    sft = [{"prompt": [{"role": "user", "content": text(1, 20)}], "completion": reply} for _ in range(24)]
    pairs = [{"prompt": [{"role": "user", "content": text(1, 20)}], "chosen": [{"role": "assistant",
              "content": text(2, 12) + " banana"}], "rejected": [{"role": "assistant", "content": text(2, 12)}]}
             for _ in range(24)]
    # KTO's thumbs: each pair's two sides as a desirable and an undesirable example
    thumbs = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
              for p in pairs for side in ("chosen", "rejected")]
    for name, rows in (("sft", sft), ("pairs", pairs), ("thumbs", thumbs)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"sft": str(d / "sft.jsonl"), "dpo": str(d / "pairs.jsonl"), "kto": str(d / "thumbs.jsonl")}


# kto: its reference point z_ref is estimated over the global batch (gathered from every process, as TRL does);
# estimated per process, two processes would train against two different reference points. The reference is
# another model (the peaked "lively" one), so that z_ref = max(0, mean log π/π_ref) is above 0 from the first step
@pytest.mark.parametrize("command", ["sft", "dpo", "kto"])
def test_two_processes_match_one_with_the_same_global_batch(command, tiny_model_dir, lively_model_dir, data,
                                                            tmp_path):
    from safetensors.torch import load_file

    common = ["train", command, "--model", tiny_model_dir, "--data", data[command], "--max-steps", "3",
              "--lr", "1e-3", "--eval-fraction", "0", "--max-length", "64", "--seed", "0"]
    if command == "kto":
        common += ["--ref-model", lively_model_dir]
    run(common + ["--out", str(tmp_path / "one"), "--batch-size", "4"], processes=1)
    run(common + ["--out", str(tmp_path / "two"), "--batch-size", "2"], processes=2)

    one, two = rows_of(tmp_path / "one"), rows_of(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]  # one process writes the metrics
    keys = ["loss", "grad_norm"] + {"dpo": ["reward_margin", "chosen_logps", "rejected_logps"],
                                    "kto": ["kl"]}.get(command, [])
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (command, key, one, two)
    assert one[-1]["loss"] != one[0]["loss"]  # it trained: the comparison is not between untouched models
    if command == "kto":
        assert all(r["kl"] > 0 for r in one)  # z_ref was not clamped to 0: there was something to gather
    # three AdamW steps of lr 1e-3 move weights by ~3e-3; gloo's averaged gradients differ in the last bits,
    # which Adam's normalisation can lift to ~1e-6 where a gradient is near zero
    got, want = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("two", "one"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
