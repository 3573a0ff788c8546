"""`--depth-every N` in the on-policy trainers: the shift's dimensionality and the ablation result along training.

Every N steps (iterations, in online DPO) the policy and its reference (the frozen starting model, or the LoRA
policy with its adapters off) are run on a few bundled harmful and harmless prompts, last prompt token only:
per layer the shift's 90 % count and participation ratio (spectrum.py), at the layer where the shift is largest
relative to the activations; the policy's harmful-minus-harmless direction there; and the refusal rate of the
policy's greedy answers to the harmful prompts with and without that direction ablated (ablation.py), beside
the reference's. One row per measurement in OUT/depth.jsonl, so the user sees whether the KL penalty keeps the
change shallow or the run digs deeper. A rough, cheap view: `caikit depth` on the saved model is the full one.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from caikit.depth import activations as act
from caikit.depth.ablation import ablated, recovered_share
from caikit.depth.direction import diff_in_means
from caikit.depth.spectrum import effective_dims, relative_size, shift_spectrum
from caikit.eval.refusal import is_refusal

PROBE_PROMPTS = 8  # per set: a few seconds of forward passes and a short greedy answer each
PROBE_TOKENS = 24  # enough for the refusal detector's opening


class DepthProbe:
    def __init__(self, tokenizer, out: str | Path, *, prompts: int = PROBE_PROMPTS, max_tokens: int = PROBE_TOKENS,
                 device: str | torch.device = "cpu", max_prompt_tokens: int = 256):
        from caikit.prompts import bundled_benign_prompts_path, bundled_prompts_path, load_prompts

        self.tokenizer, self.device, self.max_tokens = tokenizer, device, max_tokens
        self.path = Path(out) / "depth.jsonl"
        harmful = load_prompts(bundled_prompts_path(), limit=prompts)
        harmless = load_prompts(bundled_benign_prompts_path(), limit=prompts)
        self.n_harmful = len(harmful)
        self.ids = act.encode_prompts(tokenizer, [p.messages for p in harmful + harmless], max_prompt_tokens)
        self.positions = [[len(ids) - 1] for ids in self.ids]
        self.reference_refusal: float | None = None

    def _gather(self, model: nn.Module):
        return act.gather(model, self.ids, self.positions, pad_token_id=self.tokenizer.pad_token_id,
                          batch_size=len(self.ids), device=str(self.device))

    def _refusal(self, model: nn.Module) -> float:
        answers = act.generate(model, self.tokenizer, self.ids[:self.n_harmful], max_new_tokens=self.max_tokens,
                               temperature=0.0, seed=0, batch_size=self.n_harmful)
        flags = [is_refusal(self.tokenizer.decode(a, skip_special_tokens=True)) for a in answers]
        return sum(flags) / len(flags)

    @torch.no_grad()
    def record(self, step: int, policy: nn.Module, reference: nn.Module | None) -> dict:
        """Measure `policy` against `reference` (None: `policy` with its LoRA adapters disabled); append a row."""
        def as_reference():
            return policy.disable_adapter() if reference is None else contextlib.nullcontext()

        was_training = policy.training
        policy.eval()
        try:
            with as_reference():
                before = self._gather(reference if reference is not None else policy)
                if self.reference_refusal is None:
                    self.reference_refusal = self._refusal(reference if reference is not None else policy)
            after = self._gather(policy)
            layers = []
            for layer in range(len(after.arrays)):
                a0, a1 = before.layer(layer).double()[:, 0], after.layer(layer).double()[:, 0]
                dims = effective_dims(shift_spectrum(a1 - a0))
                layers.append({"layer": layer, "relative_size": relative_size(a1 - a0, a0), **dims})
            top = max(layers, key=lambda r: r["relative_size"] if not math.isnan(r["relative_size"]) else -1)
            last = after.layer(top["layer"]).double()[:, 0]
            direction = diff_in_means(last[:self.n_harmful], last[self.n_harmful:])
            refusal = self._refusal(policy)
            with ablated(policy, direction):
                refusal_ablated = self._refusal(policy)
        finally:
            policy.train(was_training)
        row = {"step": step, "layer": top["layer"], "k90": top["k90"], "k50": top["k50"],
               "participation_ratio": top["participation_ratio"], "relative_size": top["relative_size"],
               "k90_per_layer": [r["k90"] for r in layers], "n_prompts": len(self.ids),
               "refusal_reference": self.reference_refusal, "refusal": refusal, "refusal_ablated": refusal_ablated,
               "recovered_share": recovered_share(self.reference_refusal, refusal, refusal_ablated)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row
