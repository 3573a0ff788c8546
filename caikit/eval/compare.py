"""What `caikit eval` measures on the models' side: their answers (cached), KL between them, reward-model
scores, and the before/after table. The command (prompts, judging, report.json) is caikit/commands/eval.py.
"""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path
from typing import Any

from caikit.errors import UserError
from caikit.records import canonical_json, idempotency_key
from caikit.store import JsonlFile

# The demo's generate stage uses the first 32 bundled red-team prompts; the rest are held out for eval.
DEMO_TRAIN_PROMPTS = 32
KINDS = ("red-team", "benign")
JUDGE_TAG = {"red-team": "harmless", "benign": "helpful"}


# ------------------------------------------------------------------------------------------ inputs

def load_eval_prompts(cfg) -> dict[str, list]:
    """{"red-team": [PromptRow], "benign": [PromptRow]}; the bundled red-team default is the held-out tail."""
    from caikit.prompts import bundled_benign_prompts_path, bundled_prompts_path, load_prompts

    limit = cfg.limit or None
    if cfg.prompts:
        red = load_prompts(cfg.prompts, limit=limit)
    else:
        red = load_prompts(bundled_prompts_path())[DEMO_TRAIN_PROMPTS:]
        red = red[-limit:] if limit else red
    benign = load_prompts(cfg.benign_prompts or bundled_benign_prompts_path(), limit=limit)
    if not red:
        raise UserError("no held-out red-team prompts left; give --prompts", path=str(bundled_prompts_path()))
    return {"red-team": red, "benign": benign}


def model_fingerprint(name: str) -> str:
    """Resolved path plus size and mtime of its weight files: retraining in place changes it."""
    from caikit.models import resolve_model_path

    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return name  # a hub id
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    return canonical_json([str(path.resolve()), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]])


def check_model(name: str, what: str) -> None:
    path = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or path.exists()) and not (path / "config.json").exists():
        raise UserError(f"{what}: no model directory here (no config.json)", path=name)


# ------------------------------------------------------------------------------------------ answers

def generate_answers(cfg, name: str, rows: list, cache: JsonlFile) -> tuple[list[dict], int]:
    """Each prompt's answer from model `name`, from the cache where present; returns (answers, newly generated)."""
    fingerprint = model_fingerprint(name)
    params = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": cfg.seed}
    keys = [idempotency_key("eval-answer", fingerprint, row.messages, params) for row in rows]
    done = {r["key"]: r for r in cache.iter()}
    todo = [i for i, key in enumerate(keys) if key not in done]
    if todo:
        from caikit.backends.local import LocalBackend
        from caikit.runner import run_sync

        print(f"caikit eval: {name}: answering {len(todo)} prompts", file=sys.stderr)
        backend = LocalBackend(name, batch_size=cfg.batch_size, device=cfg.device or None)
        try:
            results = backend.generate_batch([rows[i].messages for i in todo], n=1, temperature=cfg.temperature,
                                             max_tokens=cfg.max_tokens, seed=cfg.seed)
        finally:
            run_sync(backend.aclose())
        for i, (completion,) in zip(todo, results):
            done[keys[i]] = {"key": keys[i], "model": name, "prompt_id": rows[i].id, "text": completion.text,
                             "finish_reason": completion.finish_reason}
            cache.append(done[keys[i]])
        del backend
        gc.collect()
    return [done[key] for key in keys], len(todo)


# ------------------------------------------------------------------------------------------ KL

def response_logps(name: str, tokenizer, examples: list[tuple[list, str, bool]], batch_size: int,
                   device: str) -> list[tuple[float, int]]:
    """(log p(y|x) summed over the response tokens, token count) under model `name`, for each (x, y, ended).

    `ended`: the answer stopped at EOS, so EOS is one of its tokens; a truncated answer has none.
    """
    import torch

    from caikit.models import load_causal_lm
    from caikit.train.data import encode_prompt_response
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import sequence_logps

    encoded = []
    for prompt, response, ended in examples:
        prompt_ids, response_ids = encode_prompt_response(tokenizer, prompt,
                                                          [{"role": "assistant", "content": response}])
        response_ids = response_ids if ended else response_ids[:-1]  # a truncated answer never produced EOS
        encoded.append({"input_ids": prompt_ids + response_ids,
                        "labels_mask": [0] * len(prompt_ids) + [1] * len(response_ids)})
    model = load_causal_lm(name, device=device)
    out: list[tuple[float, int]] = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate_sft(chunk, tokenizer.pad_token_id).items()}
            logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels_mask"])
            out += [(float(lp), sum(e["labels_mask"])) for lp, e in zip(logps.tolist(), chunk)]
    del model
    gc.collect()
    return out


def kl_estimate(cfg, examples: list[tuple[list, str, bool]], device: str) -> dict[str, Any]:
    """Monte-Carlo KL(after || before) = E_{y ~ after}[log p_after(y|x) - log p_before(y|x)] over the answers."""
    from caikit.models import load_tokenizer

    if model_fingerprint(cfg.trained) == model_fingerprint(cfg.before):
        return {"per_response": 0.0, "per_token": 0.0, "tokens": 0, "note": "the same model: no forward passes"}
    tokenizer = load_tokenizer(cfg.trained, padding_side="right")
    if load_tokenizer(cfg.before).get_vocab() != tokenizer.get_vocab():
        return {"per_response": None, "per_token": None, "note": "the two models have different tokenizers"}
    after = response_logps(cfg.trained, tokenizer, examples, cfg.batch_size, device)
    before = response_logps(cfg.before, tokenizer, examples, cfg.batch_size, device)
    ratios = [a - b for (a, _), (b, _) in zip(after, before)]  # log p_after(y|x) - log p_before(y|x)
    tokens = sum(n for _, n in after)
    return {"per_response": sum(ratios) / len(ratios), "per_token": sum(ratios) / max(tokens, 1), "tokens": tokens,
            "terms": [(r, n) for r, (_, n) in zip(ratios, after)]}


# ------------------------------------------------------------------------------------------ the table

def build_table(pairs: list[dict], kl: dict[str, Any], rewards: dict[str, dict[str, list[float]]] | None,
                cfg, detector=None) -> list[dict[str, Any]]:
    """The before/after rows of report.json, in reading order, each with its interval (caikit.eval.noise).
    `detector` (caikit.eval.harm.RefusalDetector, default the regex one) decides the refusal rows."""
    from caikit.diversity import diversity_metrics
    from caikit.eval.harm import regex_detector
    from caikit.eval.noise import descriptive_row, kl_row, paired_row, win_rate_row

    detector = detector or regex_detector()

    by_kind = {kind: [p for p in pairs if p["kind"] == kind] for kind in KINDS}
    table = []
    # roles (caikit/eval/noise.py): harmlessness is the aim; helpfulness and benign refusals guard against
    # over-refusal; red-team refusals and the reward on benign answers are worth watching either way
    for kind, tag, role in (("red-team", "harmlessness", "aim"), ("benign", "helpfulness", "guard")):
        p_after = [p["judge_p_after"] for p in by_kind[kind] if p["judge_p_after"] is not None]
        table.append(win_rate_row(f"{tag} win-rate ({kind})", p_after,
                                  f"mean P(model better) from the judge {cfg.judge} under {JUDGE_TAG[kind]} "
                                  f"principles, both orders averaged, {len(p_after)} pairs; 0.5 = no difference",
                                  cfg.seed, role=role))
    for kind, role, better in (("red-team", "watch", None), ("benign", "guard", "lower")):
        rows = by_kind[kind]
        flags = detector.flags([p["prompt"] for p in rows] * 2, [p["before"] for p in rows] + [p["after"] for p in rows])
        table.append(paired_row(f"refusal rate ({kind})", [float(f) for f in flags[:len(rows)]],
                                [float(f) for f in flags[len(rows):]],
                                f"share of {len(rows)} answers that refuse; {detector.describe()}",
                                cfg.seed, proportion=True, role=role, better=better))
    for kind, role, better in (("red-team", "aim", "higher"), ("benign", "watch", None)):
        got = (rewards or {}).get(kind, {})
        note = (f"mean sigmoid score of {cfg.reward_model} over {len(by_kind[kind])} answers" if rewards
                else "no --reward-model given")
        table.append(paired_row(f"mean reward ({kind})", got.get("before", []), got.get("after", []), note,
                                cfg.seed, role=role, better=better))
    sampling = "greedy answers: a log-ratio of the model's own answers, not a sampled KL" if cfg.temperature == 0 \
        else f"answers sampled at temperature {cfg.temperature}"
    terms = kl.get("terms") or []  # (log p_after(y|x) - log p_before(y|x), answer tokens) per answer
    table.append(kl_row("KL(after || before) per response", kl["per_response"], [r for r, _ in terms],
                        lambda xs: math.fsum(xs) / len(xs),
                        kl.get("note") or f"mean over the trained model's {len(pairs)} answers; {sampling}", cfg.seed))
    table.append(kl_row("KL(after || before) per token", kl["per_token"], terms,
                        lambda ts: math.fsum(r for r, _ in ts) / max(sum(n for _, n in ts), 1),
                        f"the same divided by {kl.get('tokens', 0)} answer tokens", cfg.seed))
    table.append(paired_row("response length (words)", [len(p["before"].split()) for p in pairs],
                            [len(p["after"].split()) for p in pairs], "mean whitespace words per answer", cfg.seed))
    diversity = {side: diversity_metrics([p[side] for p in pairs]) for side in ("before", "after")}
    for key, metric, note in (("distinct_1", "distinct-1", "unique words / all words over all answers"),
                              ("distinct_2", "distinct-2", "unique word bigrams / all bigrams over all answers"),
                              ("identical_share", "identical answers share", "answers repeating another exactly")):
        table.append(descriptive_row(metric, diversity["before"][key], diversity["after"][key], note, len(pairs)))
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    """The table for the terminal: before, after, and the 95 % interval that decides whether the change is noise."""
    width = max(len(r["metric"]) for r in table)
    lines = [f"{'metric'.ljust(width)}  {'before':>8}  {'after':>8}  95 % interval"]
    for r in table:
        b, a = ("-" if v is None else f"{v:.3f}" for v in (r["before"], r["after"]))
        interval = r.get("interval") or r.get("interval_change")
        what = "P(after better)" if r.get("interval") else "change"
        noise = "" if interval is None else (f"{what} {interval[0]:.3f} to {interval[1]:.3f}: "
                                             + ("beyond noise" if r.get("beyond_noise") else "within noise"))
        lines.append(f"{r['metric'].ljust(width)}  {b:>8}  {a:>8}  {noise}".rstrip())
    return "\n".join(lines)


def reward_scores(cfg, pairs: list[dict], device: str) -> dict[str, dict[str, list[float]]]:
    """{kind: {"before": [score per answer], "after": [...]}} under --reward-model (sigmoid scores, 0-1)."""
    from caikit.train.reward import load_reward_model, score

    loaded = load_reward_model(cfg.reward_model, device)
    out: dict[str, dict[str, list[float]]] = {}
    for kind in KINDS:
        rows = [p for p in pairs if p["kind"] == kind]
        out[kind] = {side: [float(x) for x in score(loaded, [(p["prompt"], p[side]) for p in rows],
                                                    batch_size=cfg.batch_size)]
                     for side in ("before", "after")}
    return out
