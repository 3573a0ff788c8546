"""caikit.generation: the one generation path of PPO / GRPO rollouts and the local backend.

Old path = one `model.generate` over the whole left-padded batch (what rollouts and the local backend ran
before); new path = an engine over length buckets. Greedy outputs must be identical, sampled ones seeded and
repeatable; the compile fallback says so in one line; a trainer pushes its weights into the engine after every
update (checked with a stub engine holding its own copy of the weights, as vLLM does).
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import torch

from caikit.generation import (ContinuousEngine, Decoding, TransformersEngine, cut_continuation, generation_copy,
                               left_pad_rows, length_buckets, named_weights, push_weights, sampling_config)

pytestmark = pytest.mark.e2e

PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def lively(lively_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lively_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(lively_model_dir)


@pytest.fixture(scope="module")
def prompts(lively):
    _, tokenizer = lively
    texts = [f"Question {i}: " + "why " * (i * 5) for i in range(7)]
    return [tokenizer(t)["input_ids"] for t in texts]


def old_path(model, prompts, max_new_tokens, temperature=0.0, seed=None, n=1):
    """What rollouts and the local backend ran before: one generate over the whole left-padded batch."""
    ids, mask = left_pad_rows(prompts, PAD)
    extra = {"num_return_sequences": n} if n > 1 else {}
    config = sampling_config(max_new_tokens, temperature, PAD, [EOS], temperature <= 0, **extra)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [cut_continuation(row, [EOS], PAD) for row in out[:, ids.size(1):].tolist()]


def engine(model, **kwargs):
    return TransformersEngine(model, pad_token_id=PAD, eos_token_ids=[EOS], **{"compile": False, **kwargs})


# --- pieces by hand ------------------------------------------------------------------------------------------


def test_buckets_and_continuations_by_hand():
    assert length_buckets([5, 1, 9, 3], None) == [[0, 1, 2, 3]]
    assert length_buckets([5, 1, 9, 3], 4) == [[0, 1, 2, 3]]  # fits one batch: the order given
    assert length_buckets([5, 1, 9, 3, 7], 2) == [[1, 3], [0, 4], [2]]  # members by length, each in input order
    assert cut_continuation([4, 2, 5, 0], [2], 0) == [4, 2]  # up to and including the first EOS
    assert cut_continuation([4, 5, 0, 0], [2], 0) == [4, 5]  # a stop string's row: trailing pad dropped
    assert cut_continuation([4, 0, 5], [2, 7], 0) == [4, 0, 5]  # a sampled pad-valued token inside stays


# --- old path vs new path ------------------------------------------------------------------------------------


def test_greedy_outputs_equal_the_old_path_with_and_without_bucketing(lively, prompts):
    model, _ = lively
    want = old_path(model, prompts, 10)
    assert len({tuple(w) for w in want}) == len(prompts)  # outputs differ per prompt, so a mix-up would show
    assert engine(model).generate(prompts, Decoding(10)) == want
    assert engine(model, batch_size=3).generate(prompts, Decoding(10)) == want  # 3 buckets, less padding
    assert engine(model, batch_size=2).generate(prompts, Decoding(10, n=2)) == [w for w in want for _ in range(2)]


def test_sampling_is_seeded_and_a_single_bucket_draws_as_the_old_path(lively, prompts):
    model, _ = lively
    sampled = Decoding(8, temperature=1.0, n=2, seed=11)
    first = engine(model).generate(prompts, sampled)
    assert first == old_path(model, prompts, 8, temperature=1.0, seed=11, n=2)  # same draws, same order
    assert first != engine(model).generate(prompts, Decoding(8, temperature=1.0, n=2, seed=12))
    bucketed = engine(model, batch_size=3)
    assert bucketed.generate(prompts, sampled) == bucketed.generate(prompts, sampled)
    assert first[0] != first[1]  # the n copies are separate draws


def test_rollout_path_matches_the_old_generate_call(lively, prompts):
    from caikit.train.rollout import generate_responses, truncate_after_eos

    model, _ = lively
    ids, mask = left_pad_rows(prompts, PAD)
    qr, responses, rmask, has_eos = generate_responses(engine(model, batch_size=2), ids, mask, 9, 1.0, PAD, EOS,
                                                       greedy=True)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=sampling_config(9, 1.0, PAD, EOS,
                                                                                                     greedy=True))
    old = torch.nn.functional.pad(out[:, ids.size(1):], (0, 9 - (out.size(1) - ids.size(1))), value=PAD)
    old, old_mask, old_eos = truncate_after_eos(old, EOS, PAD)
    assert torch.equal(responses, old) and torch.equal(rmask, old_mask) and torch.equal(has_eos, old_eos)
    assert torch.equal(qr, torch.cat([ids, old], 1))


def test_continuous_batching_refills_and_matches_greedy(lively, prompts):
    model, _ = lively
    continuous = ContinuousEngine(model, pad_token_id=PAD, eos_token_ids=[EOS], batch_size=3)
    assert continuous.refills
    assert continuous.generate(prompts, Decoding(10)) == old_path(model, prompts, 10)
    sampled = Decoding(6, temperature=1.0, n=2, seed=5)
    assert continuous.generate(prompts, sampled) == continuous.generate(prompts, sampled)


# --- static cache, compiling, and its fallback on CPU ---------------------------------------------------------


def test_cpu_notice_and_the_compile_fallback(lively, prompts, capsys):
    from transformers import CompileConfig

    model, _ = lively
    want = old_path(model, prompts, 6)
    plain = engine(model, compile="auto")
    assert not plain.compiled
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["caikit: generation: static KV cache and compiled decoding need CUDA; decoding eagerly on cpu"]

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler on this machine")

    broken = CompileConfig(backend=broken_backend)
    broken._compile_all_devices = True  # let transformers compile on CPU, as it would on CUDA
    failing = engine(model, compile=broken)
    assert failing.generate(prompts, Decoding(6)) == want
    assert not failing.compiled
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caikit: generation: compiled decoding failed (BackendCompilerFailed")
    assert err[0].endswith("decoding eagerly from now on")


def test_static_cache_through_the_compiled_step_keeps_greedy(lively, prompts):
    from transformers import CompileConfig

    model, _ = lively
    traced = CompileConfig(backend="eager", mode=None)  # dynamo traces the decode step; no C compiler needed
    traced._compile_all_devices = True
    compiled = engine(model, compile=traced, batch_size=4)
    assert compiled.generate(prompts, Decoding(6)) == old_path(model, prompts, 6)
    assert compiled.compiled  # it really ran the static-cache, compiled path


# --- weights: generation copy, LoRA merge, push after every update ------------------------------------------


def test_bf16_generation_copy_follows_pushed_weights(lively):
    model, _ = lively
    policy = generation_copy(model, torch.float32)  # a private fp32 "policy" to update
    twin = generation_copy(policy, torch.bfloat16)
    copy_engine = engine(twin)
    assert next(twin.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        policy.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(twin.model.embed_tokens.weight, policy.model.embed_tokens.weight.bfloat16())
    push_weights(copy_engine, policy)
    for (name, value), (twin_name, twin_value) in zip(named_weights(policy), named_weights(twin)):
        assert name == twin_name and torch.equal(twin_value, value.bfloat16())
    view = engine(policy)
    push_weights(view, policy)  # an engine decoding from the policy itself needs nothing


def test_lora_weights_are_merged_into_a_plain_copy(tiny_model_dir):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    names = [name for name, _ in named_weights(policy)]
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" in names
    plain = generation_copy(policy, torch.float32)
    ids = torch.tensor([[5, 9, 200, 31, 7]])
    with torch.no_grad():
        merged, adapted = plain(ids).logits, policy(ids).logits
        with policy.disable_adapter():
            without = policy(ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, without, atol=1e-3)  # the adapters changed something to merge


class StubEngine:
    """The engine interface at its smallest, as vLLM stands to the trainer: its own copy of the weights
    (perturbed, so generating before a push would differ), decoding one prompt at a time."""

    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM

        self.lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        with torch.no_grad():
            for param in self.lm.parameters():
                param.add_(0.05)
        self.loads, self.calls = 0, 0

    def load_weights(self, weights) -> None:
        self.lm.load_state_dict({name: value.clone() for name, value in weights}, strict=True)
        self.loads += 1

    def generate(self, prompts, decoding):
        self.calls += 1
        out = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            config = sampling_config(decoding.max_new_tokens, decoding.temperature, PAD, [EOS], decoding.greedy,
                                     **({} if decoding.greedy else {"num_return_sequences": decoding.n}))
            with torch.no_grad():
                rows = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            rows = rows[:, len(prompt):].tolist()
            out += [cut_continuation(row, [EOS], PAD) for row in (rows * decoding.n if decoding.greedy else rows)]
        return out


@pytest.mark.parametrize("trainer", ["ppo", "grpo"])
def test_a_trainer_pushes_its_weights_to_the_engine_after_every_update(trainer, toy_policy_dir, toy_prompts_file,
                                                                         tmp_path):
    from transformers import AutoModelForCausalLM

    from caikit.metrics import read_metrics

    stub = StubEngine(toy_policy_dir)
    start = AutoModelForCausalLM.from_pretrained(toy_policy_dir)
    assert not torch.equal(stub.lm.lm_head.weight, start.lm_head.weight)
    common = dict(policy=toy_policy_dir, prompts=toy_prompts_file, out=str(tmp_path / trainer), max_steps=2,
                  response_length=4, temperature=1.0, lr=1e-2, sample_every=1, progress=False, seed=0)
    if trainer == "ppo":
        from caikit.train.ppo import PPOConfig, train

        train(PPOConfig(**common, rollout_batch_size=4, ppo_epochs=1), reward_fn=lambda p, r: [len(x) for x in r],
              engine=stub)
    else:
        from caikit.train.grpo import GRPOConfig, train

        train(GRPOConfig(**common, rollout_batch_size=2, num_generations=2), reward_fn=lambda p, r: [len(x) for x in r],
              engine=stub)
    assert stub.loads == 3  # once at the start, once after each of the 2 updates
    assert stub.calls == 4  # 2 rollouts and 2 probe answers, all through the engine
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / trainer).eval()
    assert not torch.equal(trained.lm_head.weight, start.lm_head.weight)  # the updates moved the policy
    for name, value in trained.state_dict().items():
        assert torch.equal(stub.lm.state_dict()[name], value), name  # and the engine holds the new weights
    prompt = [[5, 9, 200, 31, 7]]
    assert stub.generate(prompt, Decoding(6)) == engine(trained).generate(prompt, Decoding(6))
    assert len(read_metrics(tmp_path / trainer / "metrics.jsonl")) == 2


# --- the local backend through the new path ------------------------------------------------------------------


def test_local_backend_generates_through_the_engine(lively_model_dir, lively):
    from caikit.backends.local import LocalBackend

    model, tokenizer = lively
    conversations = [[{"role": "user", "content": f"Item {i}: " + "more " * (i * 7)}] for i in range(5)]
    padded = LocalBackend(lively_model_dir, batch_size=2, engine="padded")
    texts = [c[0].text for c in padded.generate_batch(conversations, temperature=0, max_tokens=8)]
    assert isinstance(padded._engine, TransformersEngine) and padded.stats["generate_calls"] == 3  # 2 + 2 + 1

    prompts = [padded.encode_prompt(m, reserve=8) for m in conversations]
    ids, mask = left_pad_rows(prompts, tokenizer.pad_token_id)
    with torch.no_grad():  # the old path: one plain generate over all five
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=padded._eos_ids)
    old = [tokenizer.decode(cut_continuation(row, padded._eos_ids, tokenizer.pad_token_id), skip_special_tokens=True)
           for row in out[:, ids.size(1):].tolist()]
    assert texts == old and len(set(texts)) > 1

    continuous = LocalBackend(lively_model_dir, batch_size=2, engine="continuous", max_wait_ms=50)
    assert [c[0].text for c in continuous.generate_batch(conversations, temperature=0, max_tokens=8)] == texts
    assert continuous.stats["generate_calls"] == 1  # one call, 2 rows decoding at once, refilled as they end

    async def run():
        return await asyncio.gather(*(continuous.generate(m, temperature=0, max_tokens=8) for m in conversations))

    assert [r[0].text for r in asyncio.run(run())] == texts  # through the async queue (groups as they arrive)


# --- vLLM as an option --------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_one_line_and_exit_2(tiny_model_dir, toy_prompts_file, tmp_path, capsys):
    from caikit.backends.registry import BackendOptions
    from caikit.cli import main as cli_main
    from caikit.errors import UserError

    code = cli_main(["train", "grpo", "--policy", tiny_model_dir, "--prompts", toy_prompts_file, "--out",
                     str(tmp_path / "run"), "--reward-fn", "caikit.train.rule_rewards:concise", "--engine", "vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'caikit[vllm]'" in err[0]
    with pytest.raises(UserError, match=r"pip install 'caikit\[vllm\]'"):
        BackendOptions(engine="vllm").validate()
    with pytest.raises(UserError, match="--backend openai generates on its server"):
        BackendOptions(backend="openai", engine="continuous").validate()
