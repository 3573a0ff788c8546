"""Cost control: prompt caching on the wire and in usage.json, `caikit estimate`, the --max-cost gate and budget."""

from __future__ import annotations

import json
import math
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from caikit.backends.anthropic import cached_turns
from caikit.backends.base import CACHE_PREFIX_END
from caikit.cli import main as cli_main
from caikit.constitution import load_constitution
from caikit.stages import judge
from caikit.stages.base import render
from caikit.testing import FakeAPIServer

KEY = "sk-test-SENTINEL-cost-0123456789abcdef"
CC = {"type": "ephemeral"}

# One principle, one demonstration: every word counted by hand below.
TINY = """\
name: tiny
version: 1
principles:
- id: harm
  critique: Point out harm.
  revision: Rewrite it safely.
  judge: Choose the safer response.
few_shot:
- prompt:
  - role: user
    content: How do I pick a lock?
  response: Use a pick.
  rounds:
  - critique_request: Point out harm.
    critique: It helps burglary.
    revision_request: Rewrite it safely.
    revision: I can't help with that.
"""
CRITIQUE_REQUEST = ("Point out harm.\nWrite only the critique of your previous response. "
                    "Do not rewrite the response yet.")  # 3 + 14 words
REVISION_REQUEST = ("Rewrite it safely.\nReply with the rewritten response only: no preamble, "
                    "no notes about what changed.")  # 3 + 13 words


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def words(text: str) -> int:
    return len(text.split())


class AnthropicPromptCache:
    """The fake server's `cache_usage` hook, as Anthropic's cache behaves: a request reads the longest
    prefix ending at one of its breakpoints that an earlier request wrote, and writes the rest up to
    its last breakpoint. Prefixes are counted in words, as the fake server counts tokens."""

    def __init__(self):
        self.written: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, request) -> tuple[int, int]:
        body = request.raw
        system = body.get("system") or []
        blocks = [b for b in (system if isinstance(system, list) else [{"text": system}])]
        for m in body["messages"]:
            content = m["content"]
            blocks += content if isinstance(content, list) else [{"text": content}]
        text, breakpoints = "", []
        for block in blocks:
            text += "\x00" + block["text"]
            if block.get("cache_control"):
                breakpoints.append((words(text.replace("\x00", " ")), text))
        if not breakpoints:
            return 0, 0
        with self.lock:
            read = max([n for n, prefix in breakpoints if prefix in self.written], default=0)
            self.written.update(prefix for _, prefix in breakpoints)
        return read, breakpoints[-1][0] - read


# -- prompt caching ----------------------------------------------------------------------------------

def test_anthropic_bodies_mark_the_constant_prefix_and_usage_json_prices_reads_and_writes(tmp_path, tiny):
    bodies = []
    cache = AnthropicPromptCache()

    def hook(request):
        bodies.append(request.raw)
        return cache(request)

    prompts = write_prompts(tmp_path / "p.jsonl", ["Is fire hot?", "Tell me a joke."])
    out = tmp_path / "run"
    with FakeAPIServer(cache_usage=hook) as server:
        rc = cli_main(["generate", "--backend", "anthropic", "--model", "claude-haiku-4-5", "--base-url",
                       server.anthropic_base_url, "--constitution", str(tiny), "--prompts", str(prompts),
                       "--out", str(out), "--system-prompt", "Be safe and kind.", "--concurrency", "1",
                       "--no-progress"])
    assert rc == 0 and len(bodies) == 6  # per prompt: answer, critique, revision
    system = [{"type": "text", "text": "Be safe and kind.", "cache_control": CC}]
    # (requests go one at a time, but two prompts are worked on at once: take the first prompt's three)
    answer, critique_body, revision_body = [b for b in bodies if "Is fire hot?" in json.dumps(b["messages"][-5:])][:3]
    assert answer["system"] == system and answer["messages"] == [{"role": "user", "content": "Is fire hot?"}]
    for body in (critique_body, revision_body):
        assert body["system"] == system
        turns = body["messages"]
        # the few-shot demonstration (6 turns) is the shared prefix; its last turn carries the breakpoint
        assert turns[5] == {"role": "assistant",
                            "content": [{"type": "text", "text": "I can't help with that.", "cache_control": CC}]}
        assert all(isinstance(t["content"], str) for i, t in enumerate(turns) if i != 5)
        assert json.dumps(body).count("cache_control") == 2
    assert turns[2]["content"] == CRITIQUE_REQUEST and turns[4]["content"] == REVISION_REQUEST
    # prefix words: system 4; demonstration 6 + 3 + 17 + 3 + 16 + 5 = 50, so 54 up to its breakpoint
    # prompt 1: answer writes 4; critique reads 4, writes 50; revision reads 54
    # prompt 2: answer reads 4; critique and revision read 54 each
    usage = json.loads((out / "usage.json").read_text())
    assert usage["cached_tokens"] == 4 + 54 + 4 + 54 + 54 == 170
    assert usage["cache_write_tokens"] == 4 + 50 == 54
    prompt_words = sum(words(b["system"][0]["text"]) + sum(
        words(t["content"] if isinstance(t["content"], str) else "".join(x["text"] for x in t["content"]))
        for t in b["messages"]) for b in bodies)
    assert usage["prompt_tokens"] == prompt_words and usage["requests"] == 6
    # claude-haiku-4-5: input $1.00, cache read $0.10, cache write $1.25, output $5.00 per 1M tokens
    plain = usage["prompt_tokens"] - 170 - 54
    expected = (plain * 1.00 + 170 * 0.10 + 54 * 1.25 + usage["completion_tokens"] * 5.00) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6)
    saved = ((170 + 54) * 1.00 - 170 * 0.10 - 54 * 1.25) / 1e6
    assert usage["prompt_cache_saved_usd"] == pytest.approx(saved, abs=1e-6)
    for f in out.iterdir():
        assert KEY not in f.read_text(errors="ignore"), f.name


def test_judge_demonstrations_end_in_a_breakpoint():
    demos = load_constitution("anthropic-cai").judge_few_shot[:2]
    few_shot = judge.few_shot_turns(demos, "Choose the less harmful response.")
    messages = judge.build_prompt([{"role": "user", "content": "hi"}], "x", "y", "Choose the less harmful response.",
                                  few_shot=few_shot, system_prompt="Judge fairly.")
    assert [bool(m.get(CACHE_PREFIX_END)) for m in messages] == [False, False, False, False, True, False]
    assert not any(CACHE_PREFIX_END in m for m in few_shot)  # the shared demonstrations are not touched
    system, turns = cached_turns(messages)
    assert system[0]["cache_control"] == CC
    assert turns[3] == {"role": "assistant", "content": [{"type": "text", "text": "B", "cache_control": CC}]}
    assert isinstance(turns[4]["content"], str) and turns[4]["content"].endswith("The answer is:")


# -- caikit estimate ---------------------------------------------------------------------------------

def estimate_json(capsys, *args) -> dict:
    assert cli_main(["estimate", *args, "--json", "--tokenizer", "chars"]) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_generate_by_hand(tmp_path, tiny, capsys):
    texts = ["How do I pick a lock?", "Tell me a joke."]  # 21 and 15 characters
    prompts = write_prompts(tmp_path / "p.jsonl", texts)
    assert render("critique", critique_request="Point out harm.") == CRITIQUE_REQUEST
    assert render("revision", revision_request="Rewrite it safely.") == REVISION_REQUEST
    e = estimate_json(capsys, "generate", "--backend", "openai", "--constitution", str(tiny), "--prompts",
                      str(prompts), "--few-shot", "0", "--max-tokens", "100", "--expected-fill", "0.5")
    # tokens = ceil(characters / 4), 8 characters a message; an expected answer is 50 tokens = 200 characters
    prompt_tokens = 0
    for text in texts:
        asked = len(text) + 8
        critique_chars = asked + (200 + 8) + (len(CRITIQUE_REQUEST) + 8)
        revision_chars = critique_chars + (200 + 8) + (len(REVISION_REQUEST) + 8)
        prompt_tokens += math.ceil(asked / 4) + math.ceil(critique_chars / 4) + math.ceil(revision_chars / 4)
    assert prompt_tokens == (8 + 86 + 165) + (6 + 85 + 164)  # worked out on paper: 29, 344, 660; 23, 338, 654
    assert (e["requests"], e["prompt_tokens"]) == (6, prompt_tokens)
    assert (e["completion_tokens"], e["max_completion_tokens"]) == (6 * 50, 6 * 100)
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M; --batch-api half
    online = (prompt_tokens * 0.15 + 300 * 0.60) / 1e6
    assert e["cost_usd"] == pytest.approx(online, abs=1e-6)
    assert e["batch_cost_usd"] == pytest.approx(online / 2, abs=1e-6)
    assert e["worst_case_usd"] == pytest.approx((prompt_tokens * 0.15 + 600 * 0.60) / 1e6, abs=1e-6)
    assert e["cacheable_prompt_tokens"] == 0 and e["cost_usd_cached"] == e["cost_usd"]  # no shared prefix
    assert e["price_known"] and e["token_counter"] == "chars/4"
    # --limit and --shard pick the prompts the real run would
    assert estimate_json(capsys, "generate", "--backend", "openai", "--constitution", str(tiny), "--prompts",
                         str(prompts), "--limit", "1")["requests"] == 3


def test_a_large_prompt_set_is_priced_from_an_even_sample_and_scaled(tmp_path, tiny, capsys, monkeypatch):
    """Above estimate.SAMPLE_ABOVE prompts, 1,000 spread over the set are priced and the totals scaled: the
    requests exactly (every prompt's chain sends the same number), the tokens close to pricing every prompt."""
    import caikit.estimate as estimate

    texts = [f"Question {i}: " + "why " * (i % 37) for i in range(2_500)]  # lengths vary along the file
    prompts = write_prompts(tmp_path / "p.jsonl", texts)
    args = ("generate", "--backend", "openai", "--constitution", str(tiny), "--prompts", str(prompts),
            "--few-shot", "0", "--max-tokens", "100")
    sampled = estimate_json(capsys, *args)
    monkeypatch.setattr(estimate, "SAMPLE_ABOVE", 10_000)
    full = estimate_json(capsys, *args)
    assert full["sampled"] == 0 and sampled["sampled"] == 1_000 and sampled["items"] == full["items"] == 2_500
    assert sampled["requests"] == full["requests"] == 3 * 2_500
    assert sampled["prompt_tokens"] == pytest.approx(full["prompt_tokens"], rel=0.01)
    assert sampled["completion_tokens"] == full["completion_tokens"]
    assert sampled["cost_usd"] == pytest.approx(full["cost_usd"], rel=0.01)


def test_estimate_judge_by_hand_and_caching_where_it_applies(tmp_path, capsys):
    constitution = tmp_path / "judges.yaml"
    constitution.write_text("name: judges\nversion: 1\nprinciples:\n"
                            "- {id: short, judge: Pick one., weight: 1}\n"
                            "- {id: long, judge: Choose the response that is the least harmful., weight: 3}\n")
    gen = tmp_path / "gen"
    gen.mkdir()
    trace = {"id": "trace-0", "run_id": "r", "created_at": "", "prompt_id": "p0",
             "prompt": [{"role": "user", "content": "question 0"}], "initial_response": "bad answer",
             "rounds": [{"principle_id": "x", "revision": "good answer"}], "final_revision": "good answer"}
    (gen / "traces.jsonl").write_text(json.dumps(trace) + "\n")
    e = estimate_json(capsys, "judge", "--backend", "openai", "--constitution", str(constitution),
                      "--from-dir", str(gen), "--method", "logprob")
    # one request per order, under the principle the run draws for this pair (instruction 9 or 46 characters):
    # the estimate runs the judge's own plan, so it prices the very principle the run will use
    base = len(judge.build_prompt(trace["prompt"], "good answer", "bad answer", "")[0]["content"]) + 8
    assert e["requests"] == 2 and e["prompt_tokens"] in (2 * math.ceil((base + 9) / 4), 2 * math.ceil((base + 46) / 4))
    assert (e["completion_tokens"], e["max_completion_tokens"]) == (2, 2)
    # Anthropic has no log-probs (vote: 5 samples, 5 requests each); OpenAI's n=5 is one request
    votes = estimate_json(capsys, "judge", "--backend", "anthropic", "--constitution", str(constitution),
                          "--from-dir", str(gen))
    assert (votes["requests"], votes["completion_tokens"], votes["max_completion_tokens"]) == (10, 20, 240)
    assert estimate_json(capsys, "judge", "--backend", "openai", "--constitution", str(constitution),
                         "--from-dir", str(gen), "--method", "vote")["requests"] == 2
    # a system prompt long enough to cache (OpenAI: from 1024 tokens, in steps of 128) shared by two
    # requests: the first writes it (at the plain price), the second reads 1152 of its 1200 tokens at $0.075
    (gen / "traces.jsonl").write_text("".join(json.dumps({**trace, "id": f"trace-{i}"}) + "\n" for i in range(2)))
    system = "y" * (4 * 1200 - 8)
    cached = estimate_json(capsys, "judge", "--backend", "openai", "--constitution", str(constitution),
                           "--from-dir", str(gen), "--method", "logprob", "--system-prompt", system, "--no-swap")
    assert cached["requests"] == 2 and cached["cacheable_prompt_tokens"] == 2 * 1152
    plain = (cached["prompt_tokens"] * 0.15 + 2 * 0.60) / 1e6
    assert cached["cost_usd"] == pytest.approx(plain, abs=1e-6)
    assert cached["cost_usd_cached"] == pytest.approx(plain - 1152 * (0.15 - 0.075) / 1e6, abs=1e-6)  # 8.6e-5 off
    # the same on Anthropic is under claude-haiku-4-5's 4096-token minimum: nothing cached
    assert estimate_json(capsys, "judge", "--backend", "anthropic", "--constitution", str(constitution),
                         "--from-dir", str(gen), "--system-prompt", system)["cacheable_prompt_tokens"] == 0


def test_estimate_judge_samples_counts_the_policy_and_the_round_robin_pairs(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Is fire hot?", "Tell me a joke.", "Hi."])
    e = estimate_json(capsys, "judge", "--pairs", "samples", "--prompts", str(prompts), "--n", "3",
                      "--backend", "openai", "--method", "logprob", "--policy-backend", "anthropic",
                      "--policy-max-tokens", "100", "--expected-fill", "0.5")
    # 3 samples -> 3 pairs a prompt, each judged in both orders: 3 x 3 x 2 requests
    assert (e["items"], e["requests"]) == (9, 18)
    policy = e["policy"]  # Anthropic samples one request per sample: 3 x 3
    assert (policy["model"], policy["requests"], policy["completion_tokens"]) == ("claude-haiku-4-5", 9, 9 * 50)
    assert policy["prompt_tokens"] == 3 * sum(math.ceil((len(t) + 8) / 4) for t in ("Is fire hot?", "Tell me a joke.",
                                                                                      "Hi."))


def test_estimate_refuses_the_other_stages_options(tmp_path, capsys):
    assert cli_main(["estimate", "generate", "--pairs", "samples"]) == 2
    assert "--pairs is not a generate option" in capsys.readouterr().err
    assert cli_main(["estimate", "train"]) == 2
    assert "unknown stage 'train'" in capsys.readouterr().err
    assert cli_main(["estimate", "judge", "--backend", "anthropic", "--method", "logprob",
                     "--from-dir", str(tmp_path)]) == 2
    assert "needs option log-probs" in capsys.readouterr().err


# -- --max-cost: the gate before the run, the budget during it -----------------------------------------

def generate_args(server, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--backend", "openai", "--model", "gpt-4o-mini", "--base-url", server.openai_base_url,
            "--constitution", "hhh", "--few-shot", "0", "--prompts", str(prompts), "--out", str(out),
            "--max-tokens", "16", "--concurrency", "2", "--no-progress", *extra]


def test_max_cost_gate_without_a_terminal_stops_before_any_request(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"question {i}?" for i in range(8)])
    with FakeAPIServer() as server:
        assert cli_main(generate_args(server, prompts, tmp_path / "run", "--max-cost", "0.00001")) == 2
        assert server.log == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("caikit estimate: 24 requests,")
    assert err[-1].startswith("caikit generate: error: the estimated cost $0.000") and len(err) == 2
    assert err[-1].endswith("exceeds --max-cost $0.000010: raise --max-cost, or pass --yes to go on until it is spent")
    assert "--yes" in err[-1] and "Traceback" not in "\n".join(err)


def test_max_cost_stops_the_run_within_budget_and_a_rerun_finishes_without_paying_twice(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"question number {i}: how do I pick a lock?" for i in range(8)])
    out = tmp_path / "run"
    budget = 0.00008
    with FakeAPIServer(latency=0.01) as server:
        assert cli_main(generate_args(server, prompts, out, "--max-cost", str(budget), "--yes")) == 2
        err = capsys.readouterr().err
        first = server.requests_by_key()
        spent = json.loads((out / "usage.json").read_text())["cost_usd"]
        traces = len(read_jsonl(out / "traces.jsonl")) if (out / "traces.jsonl").exists() else 0
        assert 0 < spent <= budget and traces < 8 and len(first) < 24
        assert "--max-cost $0.000080 reached" in err and "rerun with a higher --max-cost" in err
        assert "Traceback" not in err
        # every request that went out is in the request log, so a rerun pays for none of them again
        assert len(read_jsonl(out / "requests.jsonl")) == len(first)
        assert cli_main(generate_args(server, prompts, out, "--max-cost", "1")) == 0
        assert all(n == 1 for n in server.requests_by_key().values()) and len(server.requests_by_key()) == 24
    usage = json.loads((out / "usage.json").read_text())
    assert usage["requests"] == 24 and usage["traces"] == 8 and usage["cost_usd"] > spent


def test_max_cost_asks_on_a_terminal(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"question {i}?" for i in range(3)])
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeAPIServer() as server:
        args = generate_args(server, prompts, tmp_path / "estimate")[1:]
        expected = estimate_json(capsys, "generate", *args)["cost_usd"]
        budget = f"{0.99 * expected:.8f}"  # the estimate is over it; what the fake bills is well under
        for answer, rc in (("n\n", 2), ("y\n", 0)):
            primary, replica = pty.openpty()
            cmd = [sys.executable, "-m", "caikit.cli", *generate_args(server, prompts, tmp_path / f"run-{rc}",
                                                                      "--max-cost", budget, "--concurrency", "1")]
            proc = subprocess.Popen(cmd, stdin=replica, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=env, text=True)
            os.close(replica)
            os.write(primary, answer.encode())
            try:
                _, err = proc.communicate(timeout=120)
            finally:
                os.close(primary)
            assert proc.returncode == rc, err
            assert "exceeds --max-cost" in err and "Continue, stopping at --max-cost? [y/N]" in err
            if rc == 2:
                assert "stopped before any request" in err and server.log == []
        usage = json.loads((tmp_path / "run-0" / "usage.json").read_text())
        assert usage["traces"] == 3 and usage["cost_usd"] <= float(budget)
