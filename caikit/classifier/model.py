"""A guard: a causal LM's features after its first `layer` blocks and a linear head, p = sigmoid(w · h + b).

An input guard reads the conversation up to the assistant's cue (the chat template's generation prompt): h is
the feature at that last token. An output guard reads the conversation and the response: h at the response's
last token, and, because a causal LM's feature at position t sees only tokens <= t, one forward pass gives the
score of every response prefix, so a stream can be stopped at the first token whose score crosses the
threshold (Constitutional Classifiers, Sharma et al. 2025, Sec. 3.3: a streaming output classifier).

Saved directory: model.safetensors + config.json (the cut backbone with w as the score head of an
`AutoModelForSequenceClassification`), the tokenizer, and guard.json (target, bias, threshold, max_fpr,
categories, data hash, held-out figures).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import Tensor

GUARD_FILE = "guard.json"
TARGETS = ("input", "output")


def guard_ids(tokenizer, prompt: list[dict], response: str | None) -> tuple[list[int], int]:
    """(token ids, index of the first response token) for a conversation (+ response for an output guard). The
    input guard ends at the assistant cue; a response is appended without EOS, so its last token is its own."""
    from caikit.train.data import encode_prompt_response

    prompt_ids, response_ids = encode_prompt_response(tokenizer, prompt, [{"role": "assistant",
                                                                           "content": response or ""}])
    if response is None:
        return prompt_ids, len(prompt_ids)
    if response_ids and response_ids[-1] == tokenizer.eos_token_id:
        response_ids = response_ids[:-1]
    return prompt_ids + response_ids, len(prompt_ids)


def no_grad(fn):
    """`torch.no_grad()` entered at call time, not at import (so `--help` never has to load torch)."""
    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return without_grad


@dataclass
class Guard:
    model: Any  # AutoModelForSequenceClassification: .base_model gives features, .score is w
    tokenizer: Any
    config: dict
    device: str = "cpu"

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    @property
    def target(self) -> str:
        return self.config["target"]

    def _hidden(self, ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        """(hidden (B, T, H), mask (B, T)) of right-padded sequences."""
        T = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        b_ids = torch.tensor([x + [pad] * (T - len(x)) for x in ids], device=self.device)
        b_mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids], device=self.device)
        backbone = getattr(self.model, self.model.base_model_prefix)
        return backbone(input_ids=b_ids, attention_mask=b_mask, use_cache=False).last_hidden_state, b_mask

    def _logit(self, hidden: Tensor) -> Tensor:
        return self.model.score(hidden).squeeze(-1).float() + float(self.config.get("bias", 0.0))

    @no_grad
    def score(self, prompts: list[list[dict]], responses: list[str] | None = None, batch_size: int = 16) -> list[float]:
        """P(flag) per row: the conversation (input guard) or conversation + response (output guard)."""
        if self.target == "output" and responses is None:
            raise ValueError("an output guard scores responses: give them")
        responses = responses if self.target == "output" else [None] * len(prompts)
        seqs = [guard_ids(self.tokenizer, p, r)[0][-self.config.get("max_length", 512):]
                for p, r in zip(prompts, responses)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = [0.0] * len(seqs)
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            hidden, mask = self._hidden([seqs[i] for i in idx])  # (B, T, H)
            last = hidden[torch.arange(len(idx), device=hidden.device), mask.sum(1) - 1]  # (B, H)
            for i, p in zip(idx, torch.sigmoid(self._logit(last)).tolist()):
                out[i] = p
        return out

    @no_grad
    def prefix_scores(self, prompt: list[dict], response: str) -> tuple[list[int], list[float]]:
        """(response token ids, P(flag) after each of them): one forward pass scores every prefix."""
        ids, start = guard_ids(self.tokenizer, prompt, response)
        hidden, _ = self._hidden([ids])
        scores = torch.sigmoid(self._logit(hidden[0, start:])).tolist()  # (T_response,)
        return ids[start:], scores

    def stop_at(self, prompt: list[dict], response: str) -> int | None:
        """The index of the first response token whose prefix the guard flags (where a stream stops), or None."""
        _, scores = self.prefix_scores(prompt, response)
        return next((t for t, s in enumerate(scores) if s >= self.threshold), None)


def load_guard(path: str | Path, device: str = "cpu") -> Guard:
    from transformers import AutoModelForSequenceClassification

    from caikit.errors import UserError
    from caikit.models import load_tokenizer

    path = Path(path)
    if not (path / GUARD_FILE).exists():
        raise UserError(f"not a guard directory (no {GUARD_FILE}; make one with `caikit classifier train`)",
                        path=str(path))
    config = json.loads((path / GUARD_FILE).read_text(encoding="utf-8"))
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
    tokenizer = load_tokenizer(str(path), padding_side="right")
    return Guard(model, tokenizer, config, device)


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))
