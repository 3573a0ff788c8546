"""Rollouts for the RL trainers (PPO, GRPO / RLOO): sampling, log-probs (policy and reference), rewards per
token, minibatch order, and the statistics of a batch of responses. The run around the loop is in rl.py.

Layout of a rollout batch (B prompts, P prompt tokens after left padding, R response tokens):
  query_responses (B, P+R)  prompt ids left-padded with the pad token, then the sampled response
  responses       (B, R)    response ids; tokens after the first EOS are replaced by pad
  response_mask   (B, R)    True up to and including the first EOS (all R when there is none)
Masks come from positions, never from token values, so a sampled pad/EOS-like token is still seen.
Per-token tensors (log-probs, values, KL, rewards, advantages) are (B, R), aligned with `responses`:
column t belongs to the response token t, predicted from position P+t-1.
Position ids are `cumsum(attention_mask) - 1`, the same ones `generate` uses for left-padded prompts.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from caikit.generation import left_pad_rows as left_pad, sampling_config  # noqa: F401 (used by the trainers and tests)
from caikit.train.logprobs import selective_log_softmax
from caikit.train.losses import entropy_from_logits


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state (one model, one forward).

    The head is Linear(hidden, 1) initialised to zero, so the first value estimates are 0 and do not
    inject noise into the first advantages ("The N implementation details of RLHF with PPO", §value head).
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                logits_to_keep: int) -> tuple[Tensor, Tensor]:
        """Returns (logits (B, K, V) of the last K positions, values (B, T) at every position)."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=logits_to_keep, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]  # (B, T, H), after the final norm
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()
        return out.logits, values


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (nn.Dropout modules and float `*dropout*` attributes such as
    Llama's `attention_dropout`), so train mode (needed by gradient checkpointing) computes the same
    log-probs as the eval-mode rollout: PPO's ratio π/π_old must be 1 before the first update."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) positions counting only attended tokens; left padding gets 0 (as in `generate`)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_forward(model: nn.Module, query_responses: Tensor, attention_mask: Tensor, context_length: int,
                     temperature: float, *, with_values: bool, with_entropy: bool = False):
    """Per-token log-probs (B, R) of the response under logits / temperature, with values and entropy.

    `model` is a PolicyWithValueHead (with_values=True) or a plain causal LM (the reference).
    Returns (logprobs, values or None, entropy or None), all (B, R) float32.
    """
    R = query_responses.size(1) - context_length
    position_ids = position_ids_from_mask(attention_mask)
    keep = R + 1  # logits at positions P-1 .. P+R-1; the last one predicts nothing in the response
    if with_values:
        logits, all_values = model(query_responses, attention_mask, position_ids, keep)
        values = all_values[:, context_length - 1:-1]  # V(state before response token t), (B, R)
    else:
        logits = model(input_ids=query_responses, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=keep, use_cache=False).logits
        values = None
    logits = logits[:, :-1] / temperature  # (B, R, V): log-probs under the sampling distribution
    responses = query_responses[:, context_length:]
    logprobs = selective_log_softmax(logits, responses)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, values, entropy


def truncate_after_eos(responses: Tensor, eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each response after its first EOS. responses (B, R) -> (responses, response_mask, has_eos).

    response_mask (B, R) bool is True up to and including the first EOS; has_eos (B,) bool.
    """
    R = responses.size(1)
    is_eos = responses == eos_token_id
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, R - 1, dtype=torch.long))
    response_mask = torch.arange(R, device=responses.device)[None, :] <= first_eos[:, None]
    return responses.masked_fill(~response_mask, pad_token_id), response_mask, has_eos


def generate_responses(engine, prompt_ids: Tensor, prompt_mask: Tensor, response_length: int, temperature: float,
                       pad_token_id: int, eos_token_id: int, greedy: bool = False):
    """Sample (or greedily decode) up to `response_length` tokens after left-padded prompts.

    `engine` is a caikit.generation engine (`rollout_engine`), or a bare causal LM, decoded in one padded batch.
    prompt_ids, prompt_mask: (B, P). Returns (query_responses (B, P+R), responses (B, R),
    response_mask (B, R), has_eos (B,)), R = response_length (shorter generations are padded).
    """
    from caikit.generation import Decoding, TransformersEngine

    if isinstance(engine, nn.Module):
        engine = TransformersEngine(engine, pad_token_id=pad_token_id, eos_token_ids=[eos_token_id], compile=False)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
    continuations = engine.generate(prompts, Decoding(response_length, 0.0 if greedy else temperature))
    rows = [tokens[:response_length] + [pad_token_id] * (response_length - len(tokens)) for tokens in continuations]
    responses = torch.tensor(rows, dtype=torch.long, device=prompt_ids.device)
    responses, response_mask, has_eos = truncate_after_eos(responses, eos_token_id, pad_token_id)
    return torch.cat([prompt_ids, responses], 1), responses, response_mask, has_eos


def rollout_engine(cfg, accelerator, lm: nn.Module, tokenizer):
    """The engine PPO / GRPO sample with (--engine). transformers engines decode from `lm` itself, or under
    --bf16 from a bf16 generation copy that `push_weights` refreshes after every update; vLLM gets the policy
    path and the pushed weights. Sharded policies (FSDP, DeepSpeed) decode from `lm` itself."""
    from accelerate.utils import DistributedType

    from caikit.generation import generation_copy, make_engine, notice, push_weights
    from caikit.models import resolve_model_path

    eos = [tokenizer.eos_token_id]
    if cfg.engine == "vllm":
        from caikit.vllm_engine import VLLMEngine

        engine = VLLMEngine(resolve_model_path(cfg.policy), eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
                            memory=cfg.vllm_memory, dtype="bfloat16" if cfg.bf16 else "auto", seed=cfg.seed)
        push_weights(engine, lm)  # a resumed or LoRA policy differs from the weights on disk
        return engine
    model = lm
    param_dtype = next(lm.parameters()).dtype
    if cfg.bf16 and param_dtype != torch.bfloat16:
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            notice("a sharded policy decodes from its own weights under autocast (no bf16 generation copy)")
        else:
            model = generation_copy(lm, torch.bfloat16)
    return make_engine(cfg.engine, model, pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, tokenizer=tokenizer,
                       batch_size=cfg.generation_batch_size or None)


def rollout_attention_mask(prompt_mask: Tensor, response_mask: Tensor) -> Tensor:
    """(B, P+R): prompt padding and post-EOS positions are not attended."""
    return torch.cat([prompt_mask.long(), response_mask.long()], 1)


# --- rewards -----------------------------------------------------------------------------------------


def per_token_rewards(scores: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """PPO reward per response token: −β·KL_t everywhere, plus the sequence score at its last token.

    scores (B,), kl (B, R) per-token KL estimate, response_mask (B, R). Returns (rewards (B, R),
    non_score_reward (B, R)); both 0 outside the mask. The last token is the EOS, or the last
    sampled token of a response cut at --response-length (Ziegler et al. 2019, eq. 2: r = s − β·KL).
    """
    mask = response_mask.to(kl.dtype)
    non_score_reward = -kl_coef * kl * mask
    last = response_mask.long().sum(1).clamp_min(1) - 1  # (B,)
    rewards = non_score_reward.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(rewards.dtype)
    return rewards, non_score_reward


def ppo_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, gae_lambda: float,
                   whiten_rewards: bool = False) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both (B, R), from per-token rewards and the rollout's values (B, R).

    GAE (Schulman et al. 2016, eq. 16) gives the returns the value head learns; the advantages are then
    whitened over the response tokens of the whole batch (mean 0, variance 1: "The N implementation details
    of RLHF with PPO", §advantage whitening), so the policy step's size does not follow the reward's scale.
    `whiten_rewards`: scale the rewards first (no mean shift: a shift would change what is optimised)."""
    from caikit.train.losses import gae, whiten

    if whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, gamma, gae_lambda)
    return whiten(advantages, mask), returns


def apply_missing_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` from the score of every response that never emitted EOS (B,) -> (B,)."""
    return scores - penalty * (~has_eos).to(scores.dtype)


# --- prompts -----------------------------------------------------------------------------------------


def encode_prompt(tokenizer, conversation: list[dict], max_prompt_length: int) -> list[int]:
    """Prompt ids in the layout the SFT and reward trainers use (chat template + generation cue),
    left-truncated to the last `max_prompt_length` tokens."""
    from caikit.train.data import encode_prompt_response

    prompt_ids, _ = encode_prompt_response(tokenizer, conversation, [{"role": "assistant", "content": ""}])
    return prompt_ids[-max_prompt_length:]


def prompt_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompts of rollout `step` (0-based): a window over seeded per-epoch shuffles, so a resumed run
    draws the same prompts as an uninterrupted one without storing any order."""
    out, position = [], step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n_prompts)
        order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        take = order[offset:offset + batch_size - len(out)]
        out += take
        position += len(take)
    return out


# --- shared by PPO and GRPO ------------------------------------------------------------------------------


def reference_logprobs(ref: nn.Module | None, lm: nn.Module, query_responses: Tensor, attention_mask: Tensor,
                       context_length: int, temperature: float) -> Tensor:
    """(B, R) response log-probs under the reference: `ref`, or the LoRA policy `lm` with adapters disabled."""
    if ref is not None:
        return response_forward(ref, query_responses, attention_mask, context_length, temperature,
                                with_values=False)[0]
    with lm.disable_adapter():
        return response_forward(lm, query_responses, attention_mask, context_length, temperature,
                                with_values=False)[0]


def decode_responses(tokenizer, responses: Tensor, response_mask: Tensor) -> list[str]:
    return [tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, response_mask)]


def rollout_stats(responses: Tensor, response_mask: Tensor, has_eos: Tensor, entropy: Tensor) -> dict[str, float]:
    """Length, EOS rate, mean entropy (nats / token) and diversity of one batch of responses, for metrics."""
    from caikit.diversity import diversity_metrics
    from caikit.train.losses import masked_mean

    lengths = response_mask.sum(1)
    token_lists = [r[:n - int(e)].tolist() for r, n, e in zip(responses, lengths.tolist(), has_eos.tolist())]
    diversity = diversity_metrics(token_lists)
    return {"entropy": float(masked_mean(entropy, response_mask.float())),
            "response_length": float(lengths.float().mean()), "eos_rate": float(has_eos.float().mean()),
            "distinct_1": diversity["distinct_1"], "distinct_2": diversity["distinct_2"],
            "identical_share": diversity["identical_share"]}


def update_steps(accelerator, model, optimizer, scheduler, passes: int, batch_size: int, mini_batches: int,
                 micro_batch_size: int, max_grad_norm: float) -> Iterator[Tensor]:
    """The optimisation schedule over one rollout batch: `passes` passes, each a fresh random order of the
    `batch_size` rows cut into `mini_batches` minibatches, each minibatch one optimizer (and schedule) step
    accumulated over micro-batches of `micro_batch_size`.

    Yields the index tensor of each micro-batch; the caller computes its loss and calls
    `accelerator.backward` before asking for the next. Gradients are all-reduced once per minibatch,
    after its last micro-batch; then they are clipped to max_grad_norm (0: not) and the optimizer steps."""
    for _ in range(passes):
        order = torch.randperm(batch_size, device=accelerator.device)
        size = batch_size // mini_batches
        for start in range(0, batch_size, size):
            minibatch = order[start:start + size]
            for i in range(0, len(minibatch), micro_batch_size):
                last = i + micro_batch_size >= len(minibatch)
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    yield minibatch[i:i + micro_batch_size]
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
