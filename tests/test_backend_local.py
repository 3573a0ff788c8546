"""LocalBackend: dynamic batching, left padding, option log-probs, usage, stop strings, truncation.

The conftest tiny Llama has near-uniform logits and tied embeddings, so greedy decoding just repeats
"\\n". conftest's `lively_model_dir` re-draws its weights with a larger scale so greedy outputs depend on
the prompt, which the batching and padding checks need.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from caikit.backends.local import LocalBackend
from caikit.errors import UserError

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "user", "content": "word " * 200}]
MEDIUM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "other things " * 40}]


@pytest.fixture
def backend(lively_model_dir) -> LocalBackend:
    b = LocalBackend(lively_model_dir, batch_size=8, max_wait_ms=50)
    b.load()
    return b


def template_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_concurrent_generate_calls_are_batched_and_each_caller_gets_its_answer(backend):
    conversations = [[{"role": "user", "content": f"Question {i}: " + "why " * (i * 3)}] for i in range(12)]

    async def run():
        return await asyncio.gather(*(backend.generate(m, temperature=0, max_tokens=6) for m in conversations))

    results = asyncio.run(run())
    assert backend.stats["generate_calls"] == 2  # 12 requests, batch_size 8 -> 8 + 4
    assert backend.stats["sequences"] == 12
    solo = [backend.generate_batch([m], temperature=0, max_tokens=6)[0][0].text for m in conversations]
    assert [r[0].text for r in results] == solo
    assert len(set(solo)) > 1  # the outputs really differ per prompt, so a mix-up would show


def test_left_padding_keeps_greedy_output_and_position_ids(backend):
    alone = backend.generate_batch([SHORT], temperature=0, max_tokens=16)[0][0].text
    seen_position_ids = []
    hook = backend._model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_position_ids.append(kwargs.get("position_ids")), with_kwargs=True
    )
    try:
        batched = backend.generate_batch([SHORT, LONG, MEDIUM], temperature=0, max_tokens=16)
    finally:
        hook.remove()
    assert batched[0][0].text == alone
    assert batched[1][0].text != alone

    # The prefill step: the short prompt sits after left padding yet its positions count from 0.
    n_short = len(template_ids(backend._tokenizer, SHORT))
    first = seen_position_ids[0]
    width = first.shape[1]
    short_row = next(r for r in range(3) if int(first[r, -1]) == n_short - 1)
    assert first[short_row, width - n_short :].tolist() == list(range(n_short))
    assert int(seen_position_ids[1][short_row, 0]) == n_short  # first decode step continues the count


def manual_option_logprob(model, tokenizer, messages, option: str) -> float:
    """Single sequence, no padding: log sum over variants of prod_j p(token_j | prompt, tokens_<j)."""
    prompt = template_ids(tokenizer, messages)
    totals = []
    for text in (option, " " + option):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].float(), -1)
        totals.append(sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(ids)))
    return math.log(sum(math.exp(t) for t in totals))


@pytest.mark.parametrize("options", [["A", "B"], ["Paris", "Constantinople"]])
def test_option_logprobs_match_manual_forward_batched_and_unbatched(backend, lively_model_dir, options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lively_model_dir)
    if options[1] == "Constantinople":
        assert len(tokenizer("Constantinople", add_special_tokens=False)["input_ids"]) > 1
    model = AutoModelForCausalLM.from_pretrained(lively_model_dir).eval()
    conversations = [SHORT, MEDIUM, LONG]
    expected = [{o: manual_option_logprob(model, tokenizer, m, o) for o in options} for m in conversations]

    async def run():
        return await asyncio.gather(*(backend.option_logprobs(m, options) for m in conversations))

    batched = asyncio.run(run())
    assert backend.stats["forward_calls"] == 1

    async def one():  # each call's usage, as CachingBackend reads it right after the call returns
        scores = await backend.option_logprobs(LONG, options)
        return scores, backend.last_usage

    usage = asyncio.run(one())[1]
    assert usage.requests == 1 and usage.prompt_tokens == len(template_ids(tokenizer, LONG)) > 0
    unbatched = [backend.score_options_batch([m], options)[0] for m in conversations]
    for got_batched, got_alone, want in zip(batched, unbatched, expected):
        for option in options:
            assert got_batched[option] == pytest.approx(want[option], abs=1e-4)
            assert got_alone[option] == pytest.approx(want[option], abs=1e-4)
            assert want[option] < 0
    assert expected[0] != expected[1]


def test_n_completions_usage_seed_and_max_tokens(backend):
    n_prompt = len(template_ids(backend._tokenizer, SHORT))

    async def sample():
        return await backend.generate(SHORT, n=3, temperature=1.0, max_tokens=5, seed=7)

    first, again = asyncio.run(sample()), asyncio.run(sample())
    assert len(first) == 3
    assert [c.text for c in first] == [c.text for c in again]  # same seed, same batch -> same samples
    assert len({c.text for c in first}) > 1
    usage = first[0].usage
    assert (usage.prompt_tokens, usage.requests) == (n_prompt, 1)
    assert 3 <= usage.completion_tokens <= 15
    assert all(c.usage.requests == 0 and c.usage.total_tokens == 0 for c in first[1:])

    longer = backend.generate_batch([SHORT], temperature=0, max_tokens=16)[0][0]
    short = backend.generate_batch([SHORT], temperature=0, max_tokens=5)[0][0]
    assert longer.finish_reason == short.finish_reason == "length"
    assert short.usage.completion_tokens == 5 and longer.usage.completion_tokens == 16
    assert longer.text.startswith(short.text) and len(short.text) < len(longer.text)

    greedy = backend.generate_batch([SHORT], n=2, temperature=0, max_tokens=5)[0]  # HF refuses n > 1 greedy
    assert [c.text for c in greedy] == [short.text, short.text]
    assert greedy[0].usage.completion_tokens == 10


def test_stop_string_cuts_text_and_ends_generation(backend):
    full = backend.generate_batch([SHORT], temperature=0, max_tokens=16)[0][0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert full.find(stop) > 0
    (completion,) = asyncio.run(backend.generate(SHORT, temperature=0, max_tokens=16, stop=[stop]))
    assert completion.text == full[: full.find(stop)]
    assert completion.finish_reason == "stop"
    assert completion.usage.completion_tokens < 16


def test_long_prompt_is_left_truncated(backend):
    messages = [{"role": "user", "content": "alpha beta " * 600}]  # > 1024-token context of the tiny model
    full = template_ids(backend._tokenizer, messages)
    assert len(full) > 1024
    (completion,) = asyncio.run(backend.generate(messages, temperature=0, max_tokens=8))
    assert completion.usage.prompt_tokens == 1024 - 8
    assert backend.stats["truncated_prompts"] == 1
    assert backend.encode_prompt(messages, reserve=8) == full[-(1024 - 8) :]  # the end is kept


def test_user_errors_and_plain_layout_without_chat_template(backend, lively_model_dir):
    with pytest.raises(UserError, match="dtype"):
        LocalBackend(lively_model_dir, dtype="int3")
    with pytest.raises(UserError, match="no room"):
        asyncio.run(backend.generate(SHORT, max_tokens=5000))
    with pytest.raises(UserError, match="options"):
        asyncio.run(backend.option_logprobs(SHORT, ["A", ""]))
    assert backend.describe() == {"backend": "local", "model": lively_model_dir, "device": "cpu", "dtype": "fp32"}
    backend._tokenizer.chat_template = None
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert backend.prompt_text(messages) == "System: Be kind.\nUser: Hi\nAssistant:"
    asyncio.run(backend.aclose())
    assert backend._pool is None


@pytest.mark.slow
def test_real_smollm2_answers_in_english_and_batching_keeps_greedy(smollm2_dir):
    backend = LocalBackend(smollm2_dir, batch_size=8, max_wait_ms=500)  # a busy machine must not split the batch
    questions = ["What is the capital of France?", "Why is the sky blue?", "Give one tip for sleeping well."]

    async def run():
        return await asyncio.gather(
            *(backend.generate([{"role": "user", "content": q}], temperature=0, max_tokens=32) for q in questions)
        )

    answers = [r[0].text for r in asyncio.run(run())]
    assert backend.stats["generate_calls"] == 1
    for text in answers:
        letters = [ch for ch in text if ch.isalpha()]
        assert len(letters) >= 10 and sum(ch.isascii() for ch in letters) / len(letters) > 0.95
        assert {"the", "a", "is", "and", "of", "to", "you", "your"} & set(text.lower().replace(",", " ").split())
    assert "Paris" in answers[0]
    alone = backend.generate_batch([[{"role": "user", "content": questions[0]}]], temperature=0, max_tokens=32)
    assert alone[0][0].text == answers[0]
