"""KTO, ORPO and SimPO on a tiny random Llama (real SmolLM2 tokenizer), on CPU.

The data are test_trainers' synthetic pairs whose preferred response contains "banana". Each objective
must raise the length-normalised log-prob of preferred over dispreferred responses on pairs it never
trained on (`held_out_margin`, measured before and after).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainers import preference_rows, write_jsonl

from caikit.metrics import read_metrics

pytestmark = pytest.mark.e2e


def held_out_margin(model_dir: str, pairs_file: str) -> float:
    """Mean over the pairs of (1/|y_w|) log π(y_w|x) − (1/|y_l|) log π(y_l|x)."""
    from transformers import AutoModelForCausalLM

    from caikit.models import load_tokenizer
    from caikit.train.data import load_rows, preference_triples, tokenize_preferences
    from caikit.train.batches import collate_preferences
    from caikit.train.dpo import pair_logps

    tokenizer = load_tokenizer(model_dir, padding_side="right")
    examples, _ = tokenize_preferences(tokenizer, preference_triples(load_rows(pairs_file), pairs_file), 48, 24)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        p = pair_logps(model, collate_preferences(examples, tokenizer.pad_token_id), tokenizer.pad_token_id, None, "")
    return float((p.chosen / p.chosen_tokens - p.rejected / p.rejected_tokens).mean())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("offline-data")
    pairs = preference_rows(32, seed=1)
    # KTO reads all three layouts at once: thumbs rows, a pair, and labelling-page rows
    thumbs = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
              for r in pairs[:28] for side in ("chosen", "rejected")]
    labels = [{"id": f"pair-{i}", "prompt": r["prompt"], "response_a": r["rejected"][0]["content"],
               "response_b": r["chosen"][0]["content"], "choice": "b"} for i, r in enumerate(pairs[29:])]
    labels.append({**labels[0], "choice": "tie"})  # a later row for pair-0: the tie wins, the pair is dropped
    return {"pairs": write_jsonl(d / "pairs.jsonl", pairs),
            "unpaired": write_jsonl(d / "unpaired.jsonl", thumbs + [pairs[28]] + labels),
            "held_out": write_jsonl(d / "held_out.jsonl", preference_rows(16, seed=7))}


@pytest.mark.parametrize("loss,settings", [("orpo", {"orpo_lambda": 1.0}), ("simpo", {"beta": 2.0, "simpo_gamma": 0.5})])
def test_reference_free_objectives_raise_the_margin(loss, settings, tiny_model_dir, data, tmp_path, capsys):
    from caikit.train.dpo import DPOConfig, train
    from caikit.train.reference import REF_CACHE

    before = held_out_margin(tiny_model_dir, data["held_out"])
    out = train(DPOConfig(model=tiny_model_dir, data=data["pairs"], out=str(tmp_path / loss), loss=loss, max_steps=5,
                          lr=1e-3, batch_size=8, eval_fraction=0.25, max_length=48, seed=0, **settings))
    after = held_out_margin(out, data["held_out"])
    assert after > before + 0.05, (before, after)
    rows = read_metrics(Path(out) / "metrics.jsonl")
    assert rows[-1]["eval_reward_accuracy"] > 0.5 and {"reward_margin", "chosen_logps"} <= rows[0].keys()
    # no reference model anywhere: no cached reference log-probs, no reference pass
    assert not (Path(out) / REF_CACHE).exists() and "reference log-probs" not in capsys.readouterr().err
    assert f"loss: {loss}" in (Path(out) / "config.yaml").read_text()
    print(f"{loss}: held-out length-normalised log-prob margin {before:.4f} -> {after:.4f}")  # pytest -rP shows it


def test_kto_raises_desirable_over_undesirable_and_resumes(tiny_model_dir, data, tmp_path, capsys):
    from caikit.train.kto import KTOConfig, train

    def cfg(out: Path, steps: int, resume: bool = False) -> KTOConfig:
        return KTOConfig(model=tiny_model_dir, data=data["unpaired"], out=str(out), max_steps=steps, lr=3e-3,
                         batch_size=8, eval_fraction=0.25, max_length=48, save_every=2, resume=resume, seed=0)

    before = held_out_margin(tiny_model_dir, data["held_out"])
    out = train(cfg(tmp_path / "kto", 6))
    after = held_out_margin(out, data["held_out"])
    rows = read_metrics(Path(out) / "metrics.jsonl")
    final = rows[-1]
    err = capsys.readouterr().err
    # 28 thumbs pairs + 1 pair + 2 label rows (a / b) give 31 of each kind; the tie that overrode pair-0 is dropped
    assert "31 desirable, 31 undesirable examples; 1 tie labels dropped; 1 superseded labels dropped" in err
    assert rows[0]["reward_margin"] == 0.0 and rows[0]["kl"] == 0.0  # policy = reference before the first update
    assert final["eval_reward_margin"] > 0.05 and final["eval_reward_desirable"] > final["eval_reward_undesirable"]
    assert after > before + 0.05, (before, after)
    assert {"loss", "kl", "reward_desirable", "reward_undesirable", "logps_desirable", "grad_norm"} <= rows[1].keys()
    assert (Path(out) / "plots" / "reward_margin.png").exists()

    # --resume continues from the step-2 checkpoint, and reuses the reference log-probs
    train(cfg(tmp_path / "resumed", 2))
    capsys.readouterr()
    train(cfg(tmp_path / "resumed", 3, resume=True))
    err = capsys.readouterr().err
    assert "resuming from step 2" in err and "reference log-probs" not in err
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3]
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())["step"] == 3
    print(f"kto: held-out length-normalised log-prob margin {before:.4f} -> {after:.4f}; eval reward margin "
          f"{rows[0]['reward_margin']:.4f} (step 1) -> {final['eval_reward_margin']:.4f}")  # pytest -rP shows it


def test_dpo_objective_table_and_option_checks():
    from caikit.errors import UserError
    from caikit.train.dpo import OBJECTIVES, DPOConfig

    assert list(OBJECTIVES) == ["sigmoid", "cdpo", "ipo", "orpo", "simpo"]
    assert [name for name, o in OBJECTIVES.items() if not o.uses_reference] == ["orpo", "simpo"]

    def resolved(**options) -> DPOConfig:
        cfg = DPOConfig(out="x", **options)
        cfg.validate()
        return cfg

    assert resolved().loss == "sigmoid"
    old = resolved(loss_type="ipo")  # the older flag still picks the objective, and the saved config agrees
    assert (old.loss, old.loss_type) == ("ipo", "ipo")
    assert resolved(loss="cdpo", use_soft_labels=True).loss == "cdpo"
    for options, message in (({"loss": "cdpo"}, "--loss cdpo needs"),
                             ({"loss": "simpo", "label_smoothing": 0.1}, "apply to --loss sigmoid or cdpo"),
                             ({"loss": "orpo", "ref_model": "m"}, "--ref-model is not used"),
                             ({"loss": "simpo", "loss_type": "ipo"}, "disagree"),
                             ({"loss_type": "kto"}, "--loss-type must be one of")):
        with pytest.raises(UserError, match=message):
            resolved(**options)
