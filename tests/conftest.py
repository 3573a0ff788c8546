"""Shared fixtures: the real SmolLM2 tokenizer, a tiny random Llama built from a config, shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One de-quantised copy of the embedded model for the whole test run (and across runs).
os.environ.setdefault("CAIKIT_CACHE", str(REPO / ".cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see caikit/cli.py: spinning OpenMP threads thrash
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real embedded SmolLM2-135M-Instruct as a safetensors directory (de-quantised once)."""
    from caikit.models import resolve_model_path

    return resolve_model_path("smollm2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A randomly initialised 2-layer Llama with the real SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def lively_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny Llama with its weights re-drawn at scale 0.3, so greedy outputs depend on the prompt."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.3, generator=generator)
    out = tmp_path_factory.mktemp("lively-llama")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


TOY_TARGET = " excellent"  # the token the toy policy is calibrated on
TOY_RESPONSE_LENGTH = 6


@pytest.fixture(scope="session")
def toy_prompts_file(tmp_path_factory) -> str:
    """The 16 prompts the toy policy is calibrated on."""
    import json

    path = tmp_path_factory.mktemp("toy-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(16)))
    return str(path)


def calibrated_policy(tiny_model_dir: str, out, token: str | None, scale: float, *, not_first: bool = False) -> str:
    """Untied tiny Llama (real SmolLM2 tokenizer) whose output row of `token` (None: EOS) points along the mean final
    hidden state after the prompts "Tell me about item {i}.", `scale` long, so that token is sampled often: the
    larger the scale, the more often. `not_first`: the row is made orthogonal to the hidden state before the first
    response token, so the token is rarely the first one (an EOS there would be an empty answer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from caikit.models import load_tokenizer
    from caikit.train.rollout import (encode_prompt, generate_responses, left_pad, position_ids_from_mask,
                                      rollout_attention_mask)

    tok = load_tokenizer(tiny_model_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    target = tok.eos_token_id if token is None else tok.encode(token, add_special_tokens=False)[0]
    ids, mask = left_pad([encode_prompt(tok, [{"role": "user", "content": f"Tell me about item {i}."}], 64)
                          for i in range(8)], tok.pad_token_id)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.3)
        qr, _, rmask, _ = generate_responses(model, ids, mask, TOY_RESPONSE_LENGTH, 1.0, tok.pad_token_id,
                                             tok.eos_token_id)
        attn = rollout_attention_mask(mask, rmask)
        hidden = model(input_ids=qr, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                       output_hidden_states=True).hidden_states[-1][:, ids.size(1) - 1:-1]
        direction = torch.nn.functional.normalize(hidden, dim=-1).mean((0, 1))
        if not_first:
            first = torch.nn.functional.normalize(hidden[:, 0].mean(0), dim=-1)
            direction = direction - (direction @ first) * first
        model.lm_head.weight[target] = scale * direction / direction.norm()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def toy_policy_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The toy policy: " excellent" starts at ~20% of sampled tokens after the prompts "Tell me about item {i}.", so
    a reward "share of ' excellent' in the response" is dense enough for a few CPU steps of PPO / GRPO to show
    learning."""
    return calibrated_policy(tiny_model_dir, tmp_path_factory.mktemp("toy-policy"), TOY_TARGET, 2.7)


@pytest.fixture(scope="session")
def eos_policy_dir(tiny_model_dir, tmp_path_factory) -> str:
    """A toy policy whose answers end at EOS after 1 to ~17 tokens (mean ~5; ~15% run past 16), almost never at
    the first token: answer length is then something a judge can prefer and DPO can move."""
    return calibrated_policy(tiny_model_dir, tmp_path_factory.mktemp("eos-policy"), None, 3.3, not_first=True)


# -- test tiers ------------------------------------------------------------------------------------------
# A test's tier is its own marker, else its file's (below); a test that loads model weights (a tiny random
# model or the real SmolLM2) is also e2e, so `make test-fast` (unit + loopback, no e2e) never loads one.
TIERS = ("unit", "loopback", "e2e", "consumer")
FILE_TIERS = {
    "test_agreement.py": "loopback", "test_backend_local.py": "e2e", "test_backends_api.py": "loopback",
    "test_batch.py": "loopback", "test_cli.py": "e2e", "test_constitution.py": "unit", "test_cost.py": "loopback",
    "test_eval_compare.py": "e2e", "test_export.py": "unit", "test_fake_api.py": "loopback", "test_fuzz.py": "loopback",
    "test_generate.py": "loopback", "test_judge.py": "loopback", "test_losses.py": "unit", "test_merge.py": "loopback",
    "test_ppo.py": "e2e", "test_prompts.py": "unit", "test_reliability.py": "e2e", "test_report.py": "e2e",
    "test_reward_probe.py": "e2e", "test_rows_matrix.py": "unit", "test_run.py": "e2e", "test_security.py": "loopback",
    "test_store.py": "unit", "test_trainers.py": "e2e",
}
MODEL_FIXTURES = {"tiny_model_dir", "smollm2_dir", "lively_model_dir", "toy_policy_dir", "eos_policy_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(getattr(pytest.mark, FILE_TIERS.get(item.path.name, "e2e")))
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
