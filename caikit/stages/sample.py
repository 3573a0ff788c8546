"""Policy sampling: K answers per prompt from the policy, to be judged pairwise (RLAIF on policy samples).

Reads: the prompt. Writes: up to K distinct, non-empty answers; answers cut at --max-tokens are left out
(counted) unless asked to keep them, since a cut answer would be judged -- and learnt -- as if whole.
"""

from __future__ import annotations

from caikit.records import PolicySamples, idempotency_key
from caikit.stages.answer import build_prompt
from caikit.stages.base import Ask, Reply, Request

reads = ("prompt",)
writes = ("texts",)


def key_of(row, cfg) -> str:
    return idempotency_key("samples", row.messages, seed_of(row, cfg.seed))


def seed_of(row, seed: int) -> int:
    return int(idempotency_key("sample-seed", seed, row.id)[-8:], 16)


def plan(row, cfg) -> Request:
    # any text is taken (an empty sample is simply not one of the K): nothing here is resampled
    return Request("generate", build_prompt(row.messages), n=cfg.n, temperature=cfg.policy_temperature,
                   max_tokens=cfg.policy_max_tokens, seed=seed_of(row, cfg.seed),
                   accept=lambda completion, attempt: completion.text or "")


def parse(row, reply: Reply, *, keep_truncated: bool = False) -> tuple[list[str], int]:
    kept, truncated = [], 0
    for completion in reply.completions:
        text = (completion.text or "").strip()
        if not text:
            continue
        if completion.finish_reason == "length" and not keep_truncated:
            truncated += 1
            continue
        kept.append(text)
    return list(dict.fromkeys(kept)), truncated


async def sample(ask: Ask, row, cfg, key: str, run_id: str) -> PolicySamples:
    (reply,) = await ask([plan(row, cfg)])
    texts, truncated = parse(row, reply, keep_truncated=cfg.keep_truncated)
    return PolicySamples(id=key, run_id=run_id, prompt_id=row.id, prompt=row.messages, texts=texts, truncated=truncated)
