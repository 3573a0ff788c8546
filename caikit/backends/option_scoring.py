"""Option log-probs from a local model: log p(option | prompt) by teacher forcing, for a batch of prompts and a
few short options (the judge's " A" / " B"), summed over the variants a chat model may write ("A" or " A").

When every variant is a single token, one next-token softmax per prompt answers all options; otherwise every
prompt x option x variant is one left-padded row of a single forward pass, of which only the last logits are
kept. These run on the local backend's worker thread (caikit/backends/local.py)."""

from __future__ import annotations

from typing import Any

from caikit.errors import UserError


def option_variants(option: str) -> list[str]:
    """"A" and " A": chat models put either after the assistant header; we sum over both."""
    return [option] if option[:1].isspace() else [option, " " + option]


def checked_options(options: list[str]) -> tuple[str, ...]:
    if not options or any(not o for o in options):
        raise UserError(f"local backend: options must be non-empty strings, got {options!r}")
    return tuple(options)


def max_option_tokens(tokenizer: Any, options: tuple[str, ...]) -> int:
    """The most tokens any variant of any option takes (room to keep free in the context)."""
    return max(len(tokenizer(v, add_special_tokens=False)["input_ids"]) for o in options for v in option_variants(o))


def score_options(model: Any, tokenizer: Any, prompts: list[list[int]], options: tuple[str, ...],
                  stats: dict[str, int]) -> list[dict[str, float]]:
    """{option: log-prob} per prompt; `stats` counts forward calls, scored sequences and prompt tokens."""
    variants: dict[str, list[list[int]]] = {o: [] for o in options}  # option -> distinct token ids of its variants
    for option in options:
        for text in option_variants(option):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids and ids not in variants[option]:
                variants[option].append(ids)
    stats["forward_calls"] += 1
    stats["prompt_tokens"] += sum(len(p) for p in prompts)
    if all(len(v) == 1 for vs in variants.values() for v in vs):
        stats["scored_sequences"] += len(prompts)
        return _next_token(model, tokenizer, prompts, variants)
    rows = [(i, o, v) for i in range(len(prompts)) for o in options for v in variants[o]]
    stats["scored_sequences"] += len(rows)
    return _teacher_forced(model, tokenizer, prompts, options, rows)


def _forward(model: Any, tokenizer: Any, sequences: list[list[int]], keep: int):
    """log-softmax of the last `keep` positions of left-padded `sequences`: (rows, keep, vocab), float32."""
    import torch

    from caikit.generation import left_pad_rows

    input_ids, attention_mask = left_pad_rows(sequences, tokenizer.pad_token_id, model.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=keep, use_cache=False).logits[:, -keep:]
        return torch.log_softmax(logits.float(), dim=-1)


def _next_token(model: Any, tokenizer: Any, prompts: list[list[int]],
                variants: dict[str, list[list[int]]]) -> list[dict[str, float]]:
    """Every variant is one token: one row per prompt, one next-token softmax."""
    import torch

    logprobs = _forward(model, tokenizer, prompts, 1)[:, -1]  # (P, V)
    token_ids = {o: torch.tensor([v[0] for v in vs], device=logprobs.device) for o, vs in variants.items()}
    return [{o: torch.logsumexp(logprobs[i, ids], 0).item() for o, ids in token_ids.items()}
            for i in range(len(prompts))]


def _teacher_forced(model: Any, tokenizer: Any, prompts: list[list[int]], options: tuple[str, ...],
                    rows: list[tuple[int, str, list[int]]]) -> list[dict[str, float]]:
    """Multi-token variants: one row per prompt x option x variant, each variant's tokens summed."""
    import torch

    k_max = max(len(v) for _, _, v in rows)
    # Left padding right-aligns every option, so only the last k_max + 1 logits are needed: (R, k_max + 1, V)
    logprobs = _forward(model, tokenizer, [prompts[i] + v for i, _, v in rows], k_max + 1)
    per_variant: dict[tuple[int, str], list[torch.Tensor]] = {}
    for r, (i, option, ids) in enumerate(rows):
        k = len(ids)
        # the logit at position t predicts token t + 1: option token j sits at kept index k_max - k + j + 1
        steps = logprobs[r, k_max - k : k_max].gather(-1, torch.tensor(ids, device=logprobs.device)[:, None])
        per_variant.setdefault((i, option), []).append(steps.sum())
    return [{o: torch.logsumexp(torch.stack(per_variant[(i, o)]), 0).item() for o in options}
            for i in range(len(prompts))]
