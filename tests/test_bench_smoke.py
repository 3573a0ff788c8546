"""scripts/bench_train.py (random-init models from the bundled tokenizer, a CPU smoke mode) and
scripts/bench_export.py (a small export) run anywhere.

No timing is asserted (the bench prints figures; tests do not judge them): only that every run ran on the
same rows and the table and its closing figure line are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def test_random_init_specs_and_their_errors(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from caikit.errors import UserError
    from caikit.random_init import model_config, random_init_model

    assert model_config("llama-0.5b").num_hidden_layers == 28
    config = model_config("smollm2-135m,num_hidden_layers=4,rms_norm_eps=1e-6")
    assert (config.hidden_size, config.num_hidden_layers, config.rms_norm_eps) == (576, 4, 1e-6)
    assert config.vocab_size == 49152 and config.pad_token_id != config.eos_token_id
    assert model_config("hidden_size=128").hidden_size == 128  # overrides alone start from `tiny`
    for spec, message in (("nope", "neither a config file"), ("tiny,foo=1", "has no field 'foo'"),
                          ("tiny,hidden_size=big", "must be a number"), ("tiny,foo", "is not field=value")):
        with pytest.raises(UserError, match=message):
            model_config(spec)

    out = random_init_model("tiny", tmp_path / "m", seed=3)
    weights = load_file(str(Path(out) / "model.safetensors"))
    assert random_init_model("tiny", out, seed=3) == out  # the same spec and seed: reused, not rewritten
    assert load_file(str(Path(out) / "model.safetensors"))["model.norm.weight"].equal(weights["model.norm.weight"])
    tokenizer = AutoTokenizer.from_pretrained(out)  # a plain model directory: the bundled tokenizer came along
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert json.loads((Path(out) / "config.json").read_text())["num_hidden_layers"] == 2


def test_bench_train_smoke_mode_prints_the_table_and_the_figure_last(shared_data):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--smoke", "--modes", "reward",
                           "--steps", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "data: hh-rlhf lengths (harmless-base-test.jsonl.gz)" in done.stdout
    assert "CPU: smoke figures only" in done.stdout
    has_trl = "trl is not installed" not in done.stdout
    runs = [line[7:22].strip() for line in lines if line.startswith("reward ")]  # the table's rows
    assert runs == ["caikit", "caikit padded"] + ["TRL"] * has_trl
    assert lines[-1].startswith("caikit / TRL non-pad tokens/s: ")
    if has_trl:
        assert lines[-1].startswith("caikit / TRL non-pad tokens/s: reward ") and "memory" in lines[-1]


def test_bench_export_prints_a_row_per_format_and_size_and_the_growth_per_row():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_export.py"), "--rows", "30", "60",
                           "--formats", "jsonl", "parquet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert [(r[0], r[1]) for r in rows] == [("jsonl", "30"), ("parquet", "30"), ("jsonl", "60"), ("parquet", "60")]
    assert done.stdout.strip().splitlines()[-1].startswith("peak RSS per row beyond the base, parquet: ")
