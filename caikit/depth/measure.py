"""The measures of `caikit depth` run on two loaded models: each function takes the command's context (models,
tokenizer, prompt ids, answers) and returns the part of depth.json it fills. The math is in the modules it calls.
"""

from __future__ import annotations

import math

import torch

from caikit.depth import activations as act
from caikit.depth.ablation import ablated, depth_verdict, recovered_share, steered
from caikit.depth.direction import (cosine, diff_in_means, energy_share_along, pick_layer, separation)
from caikit.depth.spectrum import (bootstrap_dims, effective_dims, relative_size, shift_spectrum, summary_line,
                                   top_directions)
from caikit.depth.token_kl import forward_logits, head_summary, per_position, perplexity, response_kl
from caikit.errors import UserError
from caikit.eval.refusal import is_refusal
from caikit.stats import bootstrap_interval, excludes

RESAMPLES = 200


def fmt(value, interval=None, pct: bool = False) -> str:
    """"0.42 [0.31, 0.55]" (or percentages): a figure and its 95 % interval."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    f = (lambda x: f"{x:.0%}") if pct else (lambda x: f"{x:.3g}")
    return f"{f(value)} [{f(interval[0])}, {f(interval[1])}]" if interval else f(value)


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def _texts(tokenizer, answers) -> list[str]:
    return [tokenizer.decode(a, skip_special_tokens=True) for a in answers]


def _rate(flags: list[bool], seed: int) -> dict:
    values = [float(f) for f in flags]
    return {"rate": _mean(values), "interval": bootstrap_interval(values, seed=seed), "n": len(values)}


# ------------------------------------------------------------------------------ 1 + 2: shift and direction

def layer_rows(ctx: dict) -> dict:
    cfg, m0, m1, tok = ctx["cfg"], ctx["m0"], ctx["m1"], ctx["tokenizer"]
    prompts = ctx["ids_harmful"] + ctx["ids_harmless"]
    nh = len(ctx["ids_harmful"])
    sequences = [p + a for p, a in zip(prompts, ctx["answers1"])]
    positions = [act.positions_of(len(p), len(s), cfg.response_positions) for p, s in zip(prompts, sequences)]
    n_layers = len(act.decoder_layers(m1))
    d = m1.get_input_embeddings().weight.shape[1]
    stores = []
    for name, model in (("before", m0), ("after", m1)):
        folder = act.store_folder(ctx["out"], name, n_layers, len(sequences), len(positions[0]), d, cfg.memory_mb)
        stores.append(act.gather(model, sequences, positions, pad_token_id=tok.pad_token_id,
                                 batch_size=cfg.batch_size, device=ctx["device"], folder=folder))
    rows, directions, seed = [], [], cfg.seed
    for layer in range(n_layers):
        a0, a1 = stores[0].layer(layer).double(), stores[1].layer(layer).double()  # (N, K, d)
        shift = a1 - a0
        flat = shift.reshape(-1, d)
        eigenvalues = shift_spectrum(flat)
        dims = effective_dims(eigenvalues)
        intervals = bootstrap_dims(shift, resamples=RESAMPLES, seed=seed)
        last0, last1 = a0[:, 0], a1[:, 0]  # the last prompt token (Arditi et al.'s post-instruction position)
        r0, r1 = diff_in_means(last0[:nh], last0[nh:]), diff_in_means(last1[:nh], last1[nh:])
        directions.append(r1)
        index = list(range(len(sequences)))

        def resampled_cosine(sample):
            h = [i for i in sample if i < nh]
            b = [i for i in sample if i >= nh]
            if not h or not b:
                return 0.0
            return cosine(diff_in_means(last0[h], last0[b]), diff_in_means(last1[h], last1[b]))

        def resampled_share(sample):
            return energy_share_along(shift[list(sample)].reshape(-1, d), r1)

        rows.append({"layer": layer, "relative_size": relative_size(flat, a0.reshape(-1, d)),
                     **dims, "k50_interval": intervals["k50"], "k90_interval": intervals["k90"],
                     "participation_ratio_interval": intervals["participation_ratio"],
                     "before": separation(last0[:nh], last0[nh:], seed=seed),
                     "after": separation(last1[:nh], last1[nh:], seed=seed),
                     "cosine": cosine(r0, r1),
                     "cosine_interval": bootstrap_interval(index, resampled_cosine, resamples=RESAMPLES, seed=seed),
                     "share_along_direction": energy_share_along(flat, r1),
                     "share_along_direction_interval": bootstrap_interval(index, resampled_share,
                                                                          resamples=RESAMPLES, seed=seed),
                     "random_direction_share": 1.0 / d,
                     "direction_norm": float(r1.norm())})
    ctx["stores"], ctx["directions"], ctx["n_layers"] = stores, directions, n_layers
    top = max(rows, key=lambda r: r["relative_size"] if not math.isnan(r["relative_size"]) else -1)
    shift_top = (stores[1].layer(top["layer"]).double() - stores[0].layer(top["layer"]).double()).reshape(-1, d)
    eig = shift_spectrum(shift_top)
    total = float(eig.sum()) or 1.0
    return {"layers": rows, "summary": summary_line(rows), "n_rows_per_prompt": len(positions[0]),
            "spectrum": {"layer": top["layer"], "shares": [float(x) / total for x in eig[:16]]}}


# ------------------------------------------------------------------------------ 3: the way back

def _ablation_cost(ctx: dict, basis) -> dict:
    """KL(M1 || M1 ablated) per token and perplexities on M1's answers to the harmless prompts."""
    m1, tok, cfg = ctx["m1"], ctx["tokenizer"], ctx["cfg"]
    nh = len(ctx["ids_harmful"])
    sequences = [(p, a) for p, a in zip(ctx["ids_harmless"], ctx["answers1"][nh:]) if a]

    def ablated_logits(ids, attention):
        with ablated(m1, basis):
            return m1(input_ids=ids, attention_mask=attention, use_cache=False).logits

    got = response_kl(forward_logits(m1), ablated_logits, sequences, pad_token_id=tok.pad_token_id,
                      batch_size=cfg.batch_size, device=ctx["device"])
    kl, mask = got["kl"], got["mask"]
    per_prompt = [float(kl[i][mask[i]].mean()) for i in range(kl.size(0)) if mask[i].any()]
    index = list(range(kl.size(0)))
    return {"kl_per_token": float((kl * mask).sum() / mask.sum().clamp_min(1)),
            "kl_interval": bootstrap_interval(per_prompt, seed=cfg.seed), "n": len(per_prompt),
            "perplexity_after": perplexity(got["logp_after"], mask),
            "perplexity_ablated": perplexity(got["logp_before"], mask),
            "perplexity_ablated_interval": bootstrap_interval(
                index, lambda s: perplexity(got["logp_before"][list(s)], mask[list(s)]), resamples=RESAMPLES,
                seed=cfg.seed)}


def _recovered(flags0, flags1, flags_ablated, seed: int) -> dict:
    n = len(flags1)
    rate = lambda flags, s: _mean([float(flags[i]) for i in s])  # noqa: E731
    change = bootstrap_interval(list(range(n)), lambda s: rate(flags1, s) - rate(flags0, s), seed=seed)
    share = recovered_share(_mean(flags0), _mean(flags1), _mean(flags_ablated))
    draws = []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        s = torch.randint(0, n, (n,), generator=generator).tolist()
        value = recovered_share(rate(flags0, s), rate(flags1, s), rate(flags_ablated, s))
        if value is not None:
            draws.append(value)
    draws.sort()
    interval = (draws[int(0.025 * (len(draws) - 1))], draws[int(math.ceil(0.975 * (len(draws) - 1)))]) \
        if len(draws) >= 100 else None
    beyond = excludes(change, 0.0) and _mean(flags1) > _mean(flags0)
    if not beyond:  # no refusal change beyond noise: a share of it means nothing (kept raw for the record)
        return {"share": None, "interval": None, "share_raw": share, "refusal_change": _mean(flags1) - _mean(flags0),
                "refusal_change_interval": change, "change_beyond_noise": False,
                "verdict": depth_verdict(share, interval, False)}
    return {"share": share, "interval": interval, "refusal_change": _mean(flags1) - _mean(flags0),
            "refusal_change_interval": change, "change_beyond_noise": beyond,
            "verdict": depth_verdict(share, interval, beyond)}


def ablation_rows(ctx: dict, result: dict) -> dict:
    cfg, m1, tok = ctx["cfg"], ctx["m1"], ctx["tokenizer"]
    n_layers, nh = ctx["n_layers"], len(ctx["ids_harmful"])
    if cfg.layer >= n_layers:
        raise UserError(f"--layer {cfg.layer}: the model has {n_layers} layers (0 to {n_layers - 1})")
    layer = cfg.layer if cfg.layer >= 0 else pick_layer(result["layers"], n_layers)
    row = result["layers"][layer]
    k = cfg.top_k or min(8, max(1, int(row["k90"])))
    d = ctx["directions"][layer].numel()
    if row["k90"] == 0:  # no shift at the direction's layer: take the shift's directions where it is largest
        row = max(result["layers"], key=lambda r: r["relative_size"] if not math.isnan(r["relative_size"]) else -1)
        k = cfg.top_k or min(8, max(1, int(row["k90"])))
    shift = (ctx["stores"][1].layer(row["layer"]).double()
             - ctx["stores"][0].layer(row["layer"]).double()).reshape(-1, d)
    bases = {"refusal direction": ctx["directions"][layer], f"top-{k} shift directions": top_directions(shift, k)}
    ctx["layer"], ctx["bases"] = layer, bases
    texts0 = _texts(tok, ctx["answers0"])
    texts1 = _texts(tok, ctx["answers1"][:nh])
    flags0, flags1 = [is_refusal(t) for t in texts0], [is_refusal(t) for t in texts1]
    models = {"before": _rate(flags0, cfg.seed), "after": _rate(flags1, cfg.seed)}
    ctx["texts"] = {"before": texts0, "after": texts1}
    rows = []
    for name, basis in bases.items():
        with ablated(m1, basis):
            answers = act.generate(m1, tok, ctx["ids_harmful"], **ctx["gen"])
        texts = _texts(tok, answers)
        ctx["texts"][f"after, {name} ablated"] = texts
        flags = [is_refusal(t) for t in texts]
        rows.append({"ablated": name, "k": 1 if name == "refusal direction" else k,
                     "layer": layer if name == "refusal direction" else row["layer"],
                     "refusal": _rate(flags, cfg.seed), "recovered": _recovered(flags0, flags1, flags, cfg.seed),
                     "harmless_cost": _ablation_cost(ctx, basis)})
    out = {"ablation": {"layer": layer, "models": models, "rows": rows, "verdict": rows[0]["recovered"]["verdict"]}}
    if cfg.reward_model:
        out["ablation"]["reward"] = _reward_scores(ctx)
    return out


def _reward_scores(ctx: dict) -> dict:
    from caikit.train.reward import load_reward_model, score

    loaded = load_reward_model(ctx["cfg"].reward_model, ctx["device"])
    out = {}
    for name, texts in ctx["texts"].items():
        values = [float(x) for x in score(loaded, [(p.messages, t) for p, t in zip(ctx["harmful"], texts)],
                                          batch_size=ctx["cfg"].batch_size)]
        out[name] = {"mean": _mean(values), "interval": bootstrap_interval(values, seed=ctx["cfg"].seed),
                     "n": len(values)}
    return out


def steer_rows(ctx: dict, result: dict) -> dict:
    """Activation addition of the (unnormalised) mean difference at the chosen layer: induced refusals."""
    cfg, m1, tok = ctx["cfg"], ctx["m1"], ctx["tokenizer"]
    layer = ctx["layer"]
    out = {}
    for kind, ids in (("harmless", ctx["ids_harmless"]), ("harmful", ctx["ids_harmful"])):
        with steered(m1, layer, ctx["directions"][layer], cfg.steer_coefficient):
            texts = _texts(tok, act.generate(m1, tok, ids, **ctx["gen"]))
        if kind == "harmful":
            ctx["texts"]["after steered"] = texts
        out[kind] = _rate([is_refusal(t) for t in texts], cfg.seed)
    nh = len(ctx["ids_harmful"])
    out["harmless_unsteered"] = _rate([is_refusal(t) for t in _texts(tok, ctx["answers1"][nh:])], cfg.seed)
    return {"steer": {"layer": layer, "coefficient": cfg.steer_coefficient, **out}}


# ------------------------------------------------------------------------------ 4 + 5: tokens and weights

def token_rows(ctx: dict) -> dict:
    cfg, tok = ctx["cfg"], ctx["tokenizer"]
    nh = len(ctx["ids_harmful"])
    out = {}
    for name, answers in (("after_answers", ctx["answers1"][:nh]), ("before_answers", ctx["answers0"])):
        sequences = [(p, a) for p, a in zip(ctx["ids_harmful"], answers) if a]
        got = response_kl(forward_logits(ctx["m1"]), forward_logits(ctx["m0"]), sequences,
                          pad_token_id=tok.pad_token_id, batch_size=cfg.batch_size, device=ctx["device"])
        out[name] = {"curve": per_position(got["kl"], got["mask"]), **head_summary(got["kl"], got["mask"],
                                                                                    seed=cfg.seed)}
    return {"token_kl": out}


def weight_rows(ctx: dict) -> dict:
    from caikit.depth.weights import weight_changes

    cfg = ctx["cfg"]
    adapter = act.adapter_base(cfg.after) is not None or act.adapter_base(cfg.before) is not None
    params0 = {n: p.detach().float().cpu() for n, p in ctx["m0"].named_parameters()}
    params1 = {n: p.detach().float().cpu() for n, p in ctx["m1"].named_parameters()}
    ranks = tuple(sorted({1, cfg.lora_rank, 64}))
    result = weight_changes(params0, params1, ranks)
    result["from_adapter"] = adapter
    if adapter:
        result["verdict"] += " (a LoRA adapter: its change has at most the adapter's rank by construction)"
    return {"weights": result}
