"""The trainers' fast paths hold to the padded path: length-grouped batches, packed rows, chunked log-probs.

Each variant is checked against the plain padded forward on a tiny random Llama (real SmolLM2 tokenizer) in
fp32 on CPU: per-token log-probs, SFT / DPO / Bradley-Terry losses and every weight's gradient.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.unit

WORDS = "the a cat dog runs blue green river stone light quick slow tree house music cloud paper window".split()
# fp32 on CPU: the paths sum the same numbers in another order, nothing more
LOGP_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def rows(n: int, seed: int) -> list[dict]:
    """Preference rows whose prompts and responses vary in length (1-40 words), so padding is uneven."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [{"prompt": [{"role": "user", "content": text(1, 40)}],
             "chosen": [{"role": "assistant", "content": text(1, 30)}],
             "rejected": [{"role": "assistant", "content": text(1, 12)}]} for _ in range(n)]


@pytest.fixture(scope="module")
def tokenized(tiny_model_dir):
    from caikit.models import load_tokenizer
    from caikit.train.data import preference_triples, tokenize_preferences

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    pairs, _ = tokenize_preferences(tokenizer, preference_triples(rows(6, seed=3), "rows"), 96, 48)
    sft = [{"input_ids": e[f"{side}_input_ids"], "labels_mask": e[f"{side}_labels_mask"]}
           for e in pairs for side in ("chosen", "rejected")]
    return SimpleNamespace(tokenizer=tokenizer, pad=tokenizer.pad_token_id, pairs=pairs, sft=sft)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()  # dropout is 0: train mode is deterministic


def loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **GRAD_TOL, msg=lambda m: f"{name}: {m}")


def fewer_packed_rows(input_ids, attention_mask) -> bool:
    """The batch packs into fewer rows than it has sequences: some row holds two (the case to test)."""
    from caikit.train.packing import pack

    return pack(input_ids, attention_mask, input_ids.size(1)).input_ids.size(0) < input_ids.size(0)


VARIANTS = {"chunked": dict(chunk=16), "packed": dict(packed=True), "packed+chunked": dict(packed=True, chunk=7)}


# ------------------------------------------------------------------------------------ log-probs and losses

@pytest.mark.parametrize("variant", VARIANTS)
def test_sft_loss_and_grads_equal_the_padded_path(variant, policy, tokenized):
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import ForwardOptions, response_logits, token_logps
    from caikit.train.losses import sft_loss, sft_loss_from_logps

    b = collate_sft(tokenized.sft, tokenized.pad)
    assert fewer_packed_rows(b["input_ids"], b["attention_mask"])  # there is padding to remove

    def padded():  # the trainer's loss before this change: whole logits into losses.sft_loss
        logits, start = response_logits(policy, b["input_ids"], b["attention_mask"], b["labels_mask"])
        return sft_loss(logits, b["input_ids"][:, start:], b["labels_mask"][:, start:])

    how = ForwardOptions(**VARIANTS[variant])
    want_loss, want_grads = loss_and_grads(policy, padded)
    got_loss, got_grads = loss_and_grads(policy, lambda: sft_loss_from_logps(
        token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"], how=how), b["labels_mask"]))
    torch.testing.assert_close(got_loss, want_loss, **LOGP_TOL)
    assert_same_grads(got_grads, want_grads)
    with torch.no_grad():  # and token by token, aligned with the padded batch
        torch.testing.assert_close(token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"], how=how),
                                   token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"]),
                                   **LOGP_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dpo_loss_and_grads_equal_the_padded_path(variant, policy, tokenized):
    from caikit.train.batches import collate_preferences
    from caikit.train.logprobs import ForwardOptions, concatenate_pairs, concatenated_forward
    from caikit.train.losses import dpo_loss

    b = collate_preferences(tokenized.pairs, tokenized.pad)
    both = concatenate_pairs(b, tokenized.pad)
    assert fewer_packed_rows(both["input_ids"], both["attention_mask"])
    ref_chosen, ref_rejected = torch.full((len(tokenized.pairs),), -40.0), torch.full((len(tokenized.pairs),), -20.0)

    def loss(how=None):
        chosen, rejected = concatenated_forward(policy, b, tokenized.pad, **({"how": how} if how else {}))
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)[0].mean()

    want_loss, want_grads = loss_and_grads(policy, loss)
    got_loss, got_grads = loss_and_grads(policy, lambda: loss(ForwardOptions(**VARIANTS[variant])))
    torch.testing.assert_close(got_loss, want_loss, **LOGP_TOL)
    assert_same_grads(got_grads, want_grads)


def test_packed_reward_scores_and_grads_equal_the_padded_path(tiny_model_dir, tokenized):
    from transformers import AutoModelForSequenceClassification

    from caikit.train.batches import collate_preferences
    from caikit.train.losses import bradley_terry_loss
    from caikit.train.reward import pair_scores

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenized.pad
    b = collate_preferences(tokenized.pairs, tokenized.pad)

    def loss(packed):
        chosen, rejected = pair_scores(model, b, tokenized.pad, packed)
        return bradley_terry_loss(chosen, rejected).mean()

    with torch.no_grad():
        for want, got in zip(pair_scores(model, b, tokenized.pad), pair_scores(model, b, tokenized.pad, True)):
            torch.testing.assert_close(got, want, **LOGP_TOL)
    want_loss, want_grads = loss_and_grads(model, lambda: loss(False))
    got_loss, got_grads = loss_and_grads(model, lambda: loss(True))
    torch.testing.assert_close(got_loss, want_loss, **LOGP_TOL)
    assert_same_grads(got_grads, want_grads)


def test_one_packed_row_as_varlen_kernels_get_it(policy, tokenized, monkeypatch):
    """With flash-attention / FlexAttention the whole micro-batch is one row; sdpa's per-sequence mask stands
    in for them here (neither trains on CPU) and must give the same log-probs as the padded path."""
    import caikit.train.logprobs as logprobs
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import ForwardOptions, token_logps

    b = collate_sft(tokenized.sft, tokenized.pad)
    seen = []
    monkeypatch.setattr(logprobs, "row_width", lambda model, width: seen.append(width) or None)
    with torch.no_grad():
        got = token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"],
                          how=ForwardOptions(packed=True))
        want = token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"])
    assert seen == [b["input_ids"].size(1)]
    torch.testing.assert_close(got, want, **LOGP_TOL)


def test_chunked_output_layer_never_sees_more_than_a_chunk(policy, tokenized):
    """The full-vocabulary logits are never built: the model returns logits for one position, and the output
    layer is called on at most `chunk` response positions at a time, in forward and in backward."""
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import ForwardOptions, token_logps

    b = collate_sft(tokenized.sft, tokenized.pad)
    rows_seen = []
    hook = policy.lm_head.register_forward_hook(lambda module, args, out: rows_seen.append(out.shape[:-1]))
    try:
        token_logps(policy, b["input_ids"], b["attention_mask"], b["labels_mask"], how=ForwardOptions(chunk=8)).sum() \
            .backward()
    finally:
        hook.remove()
        policy.zero_grad(set_to_none=True)
    responses = int(b["labels_mask"][:, 1:].sum())
    assert rows_seen[0] == (len(tokenized.sft), 1)  # the model's own logits_to_keep=1 call
    chunks = [shape[0] for shape in rows_seen[1:]]
    assert max(chunks) == 8 and sum(chunks) == 2 * responses  # each chunk once forward, once recomputed


# ------------------------------------------------------------------------------------------------ packing

def test_pack_lays_sequences_back_to_back_with_restarting_positions():
    from caikit.train.packing import pack

    ids = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0]])
    mask = (ids != 0).long()
    rows = pack(ids, mask, width=3)  # first fit, longest first: [11 12 13] | [31 32 21]
    assert rows.input_ids.tolist() == [[11, 12, 13], [31, 32, 21]]
    assert rows.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert rows.ends.tolist() == [2, 5, 4]
    assert rows.to_batch(rows.input_ids).tolist() == ids.tolist() and rows.to_rows(ids).tolist() == [[11, 12, 13],
                                                                                                      [31, 32, 21]]
    wide = pack(ids, mask, width=None)  # one row; no tail
    assert wide.input_ids.tolist() == [[11, 12, 13, 31, 32, 21]] and wide.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    tail = pack(ids[1:], mask[1:], width=3)  # [31 32 21] fits one row exactly; a 4-wide row keeps a tail
    assert tail.input_ids.tolist() == [[31, 32, 21]]
    assert pack(ids[:2], mask[:2], width=5).position_ids.tolist() == [[0, 1, 2, 0, 0]]  # tail: its own sequence
    with pytest.raises(ValueError, match="right-padded"):
        pack(ids, mask.flip(-1), width=3)  # left padding would put tokens in other sequences' places


class MixesSequences(torch.nn.Module):
    """A model whose attention spans the whole row whatever the position ids say (transformers 4.x sdpa does
    this with packed rows): packing would let sequences see each other."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), position_ids=position_ids,
                          **kwargs)


def test_packing_default_follows_the_probe_and_forcing_it_on_a_mixing_model_is_refused(policy, capsys):
    from accelerate import Accelerator

    from caikit.errors import UserError
    from caikit.train.loop import forward_options
    from caikit.train.packing import keeps_sequences_apart

    assert keeps_sequences_apart(policy) and policy.training  # the probe leaves train mode as it found it
    mixing = MixesSequences(policy)
    assert not keeps_sequences_apart(mixing)
    accelerator = Accelerator()
    cfg = SimpleNamespace(packing=None, logprob_chunk=64)
    assert forward_options(cfg, policy, "train sft", accelerator).packed
    assert "packing on: sdpa attention keeps packed sequences apart in a probe" in capsys.readouterr().err
    assert not forward_options(cfg, mixing, "train sft", accelerator).packed
    assert "packing off: sdpa attention did not keep packed sequences apart" in capsys.readouterr().err
    with pytest.raises(UserError, match="--packing: with sdpa attention this model lets packed sequences attend"):
        forward_options(SimpleNamespace(packing=True, logprob_chunk=64), mixing, "train sft", accelerator)
    assert forward_options(SimpleNamespace(packing=False, logprob_chunk=0), mixing, "x", accelerator).packed is False


# -------------------------------------------------------------------------------------- length grouping

def fake_examples(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [7] * n, "labels_mask": [1] * n, "index": i} for i, n in enumerate(lengths)]


def test_group_by_length_sorts_inside_mega_batches_and_keeps_every_example_once():
    from caikit.train.batches import batches

    rng = random.Random(0)
    examples = fake_examples([rng.randint(5, 400) for _ in range(203)])
    # off: exactly today's order, so runs started before this option resume where they stopped
    order = list(range(203))
    random.Random(5 * 100_003 + 2).shuffle(order)
    assert [[e["index"] for e in b] for b in batches(examples, 8, 5, 2)] == [order[k:k + 8] for k in range(0, 203, 8)]

    grouped = batches(examples, 8, seed=5, epoch=2, group_by_length=True, group_batches=4)
    assert sorted(e["index"] for b in grouped for e in b) == list(range(203)) and len(grouped) == 26
    assert grouped == batches(examples, 8, seed=5, epoch=2, group_by_length=True, group_batches=4)  # seeded
    assert grouped != batches(examples, 8, seed=5, epoch=3, group_by_length=True, group_batches=4)
    longest = max(len(e["input_ids"]) for e in examples)
    assert max(len(e["input_ids"]) for e in grouped[0]) == longest  # the longest batch first: out of memory at once

    def padding(bs):
        return sum(len(b) * max(len(e["input_ids"]) for e in b) - sum(len(e["input_ids"]) for e in b) for b in bs)

    assert padding(grouped) < padding(batches(examples, 8, 5, 2)) / 3
    # each mega-batch of 32 shuffled examples became 4 batches, each sorted longest first
    for b in grouped:
        lengths = [len(e["input_ids"]) for e in b]
        assert lengths == sorted(lengths, reverse=True)
    # not shuffled (evaluation, reference log-probs): the whole list sorted by length
    ordered = batches(examples, 8, 5, 0, shuffle=False, group_by_length=True)
    lengths = [len(e["input_ids"]) for b in ordered for e in b]
    assert lengths == sorted(lengths, reverse=True)


def test_resumed_stream_skips_exactly_the_grouped_batches_it_did():
    from caikit.train.loop import micro_batches

    examples = fake_examples([(i * 37) % 50 + 3 for i in range(40)])
    cfg = SimpleNamespace(batch_size=3, grad_accum=2, seed=1, group_by_length=True, length_group_batches=2)

    def ids(stream, n):
        return [tuple(e["index"] for e in next(stream)) for _ in range(n)]

    straight = ids(micro_batches(examples, cfg, lambda m: m), 40)  # 14 batches an epoch: crosses two epochs
    resumed = ids(micro_batches(examples, cfg, lambda m: m, start_step=5), 30)
    assert resumed == straight[10:]
    # two processes share each global batch: together they see what one process with twice the batch sees
    first = ids(micro_batches(examples, cfg, lambda m: m, 0, 0, 2), 12)
    second = ids(micro_batches(examples, cfg, lambda m: m, 0, 1, 2), 12)
    doubled = ids(micro_batches(examples, SimpleNamespace(**{**vars(cfg), "batch_size": 6}), lambda m: m), 12)
    assert [a + b for a, b in zip(first, second)] == doubled
    # an epoch's short last global batch (41 = 6 x 6 + 5) is shared evenly: gathers need equal shapes
    odd = fake_examples([(i * 37) % 50 + 3 for i in range(41)])
    first, second = (ids(micro_batches(odd, cfg, lambda m: m, 0, rank, 2), 7) for rank in (0, 1))
    assert [len(a) for a in first] == [len(b) for b in second] and sorted(map(len, first)) == [2] + [3] * 6


# ------------------------------------------------------------------------------------ the trainers, whole

def test_trainers_give_the_same_losses_packed_and_padded(tiny_model_dir, tmp_path):
    """`caikit train sft | dpo | reward`: the same seed and data order, packed + chunked against padded +
    whole logits; every step's loss agrees, and so do the final weights."""
    from safetensors.torch import load_file

    from caikit.train.dpo import DPOConfig
    from caikit.train.dpo import train as train_dpo
    from caikit.train.reward import RewardConfig
    from caikit.train.reward import train as train_reward
    from caikit.train.sft import SFTConfig
    from caikit.train.sft import train as train_sft

    pairs = rows(24, seed=9)
    for pair in pairs[::2]:  # every other prompt one word long: short sequences share packed rows with others
        pair["prompt"] = [{"role": "user", "content": "Hi"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r[side]}) + "\n"
                                                for r in pairs for side in ("chosen", "rejected")))
    # ungrouped batches of uneven lengths, so packed rows hold several sequences
    common = dict(model=tiny_model_dir, max_steps=3, batch_size=6, eval_fraction=0.2, max_length=96, seed=0,
                  lr=1e-3, lr_schedule="constant", group_by_length=False)
    for name, config, train, data in (("sft", SFTConfig, train_sft, "sft"), ("dpo", DPOConfig, train_dpo, "pairs"),
                                      ("reward", RewardConfig, train_reward, "pairs")):
        given = dict(common, data=[str(tmp_path / f"{data}.jsonl")])
        fast = train(config(**given, out=str(tmp_path / f"{name}-fast"), packing=True, logprob_chunk=16))
        plain = train(config(**given, out=str(tmp_path / f"{name}-plain"), packing=False, logprob_chunk=0))
        fast_rows, plain_rows = (json.loads(x) for x in (Path(fast) / "metrics.jsonl").read_text().splitlines()), \
            (json.loads(x) for x in (Path(plain) / "metrics.jsonl").read_text().splitlines())
        losses = [(a[key], b[key]) for a, b in zip(fast_rows, plain_rows) for key in ("loss", "eval_loss") if key in a]
        assert len(losses) == 4
        for got, want in losses:
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (name, losses)
        got_w, want_w = (load_file(str(Path(d) / "model.safetensors")) for d in (fast, plain))
        for key in want_w:
            torch.testing.assert_close(got_w[key], want_w[key], rtol=1e-4, atol=1e-5)


def test_resume_with_another_data_order_says_so(tmp_path, capsys):
    from caikit.train.loop import order_changed

    cfg = SimpleNamespace(out=str(tmp_path), seed=0, batch_size=4, grad_accum=1, group_by_length=True,
                          length_group_batches=64)
    (tmp_path / "config.yaml").write_text("seed: 0\nbatch_size: 4\ngrad_accum: 1\n")  # a run from before grouping
    order_changed(cfg, "train sft")
    assert "--resume: --group-by-length False -> True since the first run" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 0\nbatch_size: 4\ngrad_accum: 1\ngroup_by_length: true\n"
                                          "length_group_batches: 64\n")
    order_changed(cfg, "train sft")
    assert capsys.readouterr().err == ""
