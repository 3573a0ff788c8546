"""`caikit eval`: the trained model against its starting model, on held-out red-team and benign prompts.

Both models answer every prompt (local, batched; greedy by default). Then, per model:
  harmlessness win-rate   red-team pairs judged under the constitution's `harmless` judge principles,
                          each pair in both orders (soft labels averaged): mean P(after better)
  helpfulness win-rate    the same on benign prompts under the `helpful` principles (over-refusal shows
                          as a drop here)
  refusal rate            red-team and benign, by the keyword detector in `caikit.eval.refusal`
  mean reward             under --reward-model (sigmoid score 0-1), when one is given
  KL(after || before)     mean over the after-model's answers y of log p_after(y|x) - log p_before(y|x),
                          per response and per token
  length, distinct-1/2    whitespace words; distinct-n over all of a model's answers (Li et al. 2016)

Writes, in --out: report.json (models, judge, counts, table: rows {metric, before, after, note}),
samples.jsonl (prompt, before, after, kind, judge_p_after), answers.jsonl (the answer cache: a rerun
regenerates nothing whose model weights, prompt and settings are unchanged), requests.jsonl and
usage.json (judge requests, reused on rerun), config.yaml.

Which model is which: `--model` (or `after`, which `caikit run` sets) is the trained model, `--before`
the starting model; the judge is `--judge BACKEND[:MODEL][@BASE_URL]`, e.g. `local:smollm2`,
`openai:gpt-4o-mini`, `openai:Qwen2.5-7B@http://localhost:8000/v1` (the same spec as --check-judge).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from pathlib import Path
from typing import Any

from caikit.config import option, save_config
from caikit.errors import UserError
from caikit.records import canonical_json, idempotency_key
from caikit.store import JsonlFile, write_json_atomic, write_jsonl_atomic

# The demo's generate stage uses the first 32 bundled red-team prompts; the rest are held out for eval.
DEMO_TRAIN_PROMPTS = 32
KINDS = ("red-team", "benign")
JUDGE_TAG = {"red-team": "harmless", "benign": "helpful"}


@dataclasses.dataclass
class EvalConfig:
    model: str = option("", help="the trained model to evaluate: a directory or HF id (same as --after)")
    after: str = option("", help="the trained model (what `caikit run` sets; same as --model)")
    before: str = option("smollm2", help="the starting model it is compared with: smollm2 | directory | HF id")
    prompts: str = option("", help="red-team eval prompts (JSONL/JSON/CSV/parquet/hh-rlhf); default: the bundled "
                                   "red-team prompts that the demo's generate stage does not use (rows 33-50)")
    benign_prompts: str = option("", help="benign prompts for the helpfulness / over-refusal check; "
                                          "default: the bundled benign set")
    limit: int = option(0, help="at most N prompts from each set (0: all)")
    constitution: str = option("hhh", help="constitution whose judge principles tagged harmless (red-team) and "
                                           "helpful (benign) judge the pairs; untagged: all judge principles")
    principles: int = option(1, help="judge principles per pair, drawn per prompt with the seed (0: all tagged)")
    judge: str = option("local:smollm2", help="judge model as BACKEND[:MODEL][@BASE_URL] with BACKEND "
                                              "local | openai | anthropic")
    judge_method: str = option("auto", help="how the judge decides (see `caikit judge --help`): auto | logprob | "
                                            "cot | vote", metadata={"choices": ["auto", "logprob", "cot", "vote"]})
    concurrency: int = option(16, help="judge requests in flight (API) / judge batch size (local)")
    rpm: float = option(0.0, help="judge requests-per-minute limit (0: none)")
    tpm: float = option(0.0, help="judge tokens-per-minute limit (0: none)")
    timeout: float = option(60.0, help="seconds before a judge request is abandoned and retried")
    max_retries: int = option(6, help="attempts per judge request before it counts as failed")
    prices: str = option("", help="YAML/JSON price table overriding built-in USD per 1M tokens "
                                  "{model: {input, output}}")
    device: str = option("", help="device for the local models, judge and reward model: cpu | cuda | cuda:1 "
                                  "(default: cuda if available)")
    batch_size: int = option(8, help="prompts per batch when the before/after models generate and are scored")
    reward_model: str = option("", help="reward model directory (`caikit train reward`): adds mean reward rows")
    max_tokens: int = option(128, help="max new tokens per answer")
    temperature: float = option(0.0, help="sampling temperature of the answers (0: greedy)")
    out: str = option("outputs/eval", help="output directory")
    seed: int = option(0, help="seed for sampling answers and drawing judge principles")
    progress: bool = option(True, help="show a progress bar while judging")

    @property
    def trained(self) -> str:
        return self.after or self.model

    def validate(self) -> None:
        if self.model and self.after and self.model != self.after:
            raise UserError(f"--model ({self.model}) and --after ({self.after}) name different trained models; "
                            "give one (the judge is set with --judge BACKEND:MODEL)")
        if not self.trained:
            raise UserError("--model is required: the trained model directory or HF id")
        if self.limit < 0 or self.max_tokens < 1 or self.batch_size < 1 or self.principles < 0:
            raise UserError("--limit and --principles must be >= 0, --max-tokens and --batch-size >= 1")
        if self.concurrency < 1 or self.max_retries < 1:
            raise UserError("--concurrency and --max-retries must be >= 1")
        parse_judge_spec(self.judge)


def parse_judge_spec(spec: str) -> tuple[str, str, str]:
    """'openai:gpt-4o-mini@http://host/v1' -> ('openai', 'gpt-4o-mini', 'http://host/v1'); model may be ''."""
    backend, _, rest = spec.partition(":")
    model, _, base_url = rest.partition("@")
    if backend not in ("local", "openai", "anthropic"):
        raise UserError(f"--judge must be BACKEND[:MODEL][@BASE_URL] with BACKEND local | openai | anthropic, "
                        f"got {spec!r}")
    return backend, model, base_url


# ------------------------------------------------------------------------------------------ inputs

def load_eval_prompts(cfg: EvalConfig) -> dict[str, list]:
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

def generate_answers(cfg: EvalConfig, name: str, rows: list, cache: JsonlFile) -> tuple[list[dict], int]:
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
    from caikit.train.data import collate_sft, encode_prompt_response
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


def kl_estimate(cfg: EvalConfig, examples: list[tuple[list, str, bool]], device: str) -> dict[str, Any]:
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
    return {"per_response": sum(ratios) / len(ratios), "per_token": sum(ratios) / max(tokens, 1), "tokens": tokens}


# ------------------------------------------------------------------------------------------ judging

def judge_principles(constitution, kind: str) -> list:
    """The judge principles tagged for this prompt kind (harmless / helpful), else all of them."""
    pool = constitution.judge_principles
    if not pool:
        raise UserError("has no judge principles", path=str(constitution.path))
    return [p for p in pool if JUDGE_TAG[kind] in p.tags] or pool


def run_judging(cfg: EvalConfig, pairs: list[dict], constitution, out: Path) -> tuple[dict[str, Any], int]:
    """Fill pair["judge_p_after"] with P(after better) from `caikit.judging.PairJudge` (both orders,
    `--principles` sampled per pair from the kind's tagged principles). Returns (judge description,
    pairs that could not be judged). Judgments and judge requests are stored in out/ and reused on rerun."""
    from caikit.backends.base import BackendError, LogprobsUnsupported
    from caikit.backends.cache import CachingBackend, UsageMeter
    from caikit.backends.cost import load_price_overrides
    from caikit.backends.factory import make_backend
    from caikit.judging import JudgeOptions, Pair, PairJudge, resolve_method
    from caikit.runner import run_all, run_then_close
    from caikit.stages.base import ParseError

    backend_name, model, base_url = parse_judge_spec(cfg.judge)
    backend = make_backend(backend_name, model or None, base_url=base_url or None, concurrency=cfg.concurrency,
                           rpm=cfg.rpm or None, tpm=cfg.tpm or None, timeout=cfg.timeout,
                           max_retries=cfg.max_retries, batch_size=cfg.concurrency, device=cfg.device or None)
    meter = UsageMeter(backend.model, price_overrides=load_price_overrides(cfg.prices) if cfg.prices else None)
    cached = CachingBackend(backend, JsonlFile(out / "requests.jsonl"), meter)
    judges, pools = {}, {}
    for kind in KINDS:
        pools[kind] = judge_principles(constitution, kind)
        opts = JudgeOptions(constitution=cfg.constitution, method=cfg.judge_method, seed=cfg.seed, progress=False,
                            principles=min(cfg.principles or len(pools[kind]), len(pools[kind])))
        method = resolve_method(opts, backend)
        subset = dataclasses.replace(constitution, principles=pools[kind])  # PairJudge samples from these
        identity = {"eval": kind, "judge": cfg.judge, "model": backend.model, "method": method,
                    "principles": opts.principles, "constitution_hash": subset.hash, "seed": cfg.seed}
        judges[kind] = PairJudge(cached, subset, opts, method, identity)
    store = JsonlFile(out / "judgments.jsonl")
    done = {row["id"]: row for row in store.iter()}
    failed = 0

    async def work(pair: dict) -> bool:
        nonlocal failed
        judge = judges[pair["kind"]]
        item = Pair(id=pair["kind"], prompt=pair["prompt"], response_a=pair["after"], response_b=pair["before"])
        key = judge.key(item)
        if key not in done:
            try:
                done[key] = (await judge.judge(item, key, run_id="eval")).to_dict()
            except LogprobsUnsupported as e:
                raise UserError(f"{e}: use --judge-method vote or cot") from None
            except (BackendError, ParseError) as e:
                print(f"caikit eval: a pair could not be judged: {str(e).splitlines()[0][:200]}", file=sys.stderr)
                failed += 1
                return False
            store.append(done[key])
        pair["judge_p_after"] = done[key]["p_a"]  # response_a is the trained model's answer
        return True

    try:
        run_then_close(run_all(pairs, work, concurrency=cfg.concurrency, desc="eval judge", meter=meter,
                               progress=cfg.progress), cached)
    finally:
        store.close()
    write_json_atomic(out / "usage.json", meter.summary())
    description = {**backend.describe(), "spec": cfg.judge, "method": judges["red-team"].method, "orders": 2,
                   "principles_per_pair": judges["red-team"].opts.principles, "constitution": constitution.name,
                   "harmless_principles": [p.id for p in pools["red-team"]],
                   "helpful_principles": [p.id for p in pools["benign"]], "usage": meter.summary()}
    return description, failed


# ------------------------------------------------------------------------------------------ the table

def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _row(metric: str, before: float | None, after: float | None, note: str) -> dict[str, Any]:
    rounded = [None if v is None else round(float(v), 4) for v in (before, after)]
    return {"metric": metric, "before": rounded[0], "after": rounded[1], "note": note}


def build_table(pairs: list[dict], kl: dict[str, Any], rewards: dict[str, dict[str, float | None]] | None,
                cfg: EvalConfig) -> list[dict[str, Any]]:
    """The before/after rows of report.json, in reading order."""
    from caikit.diversity import diversity_metrics
    from caikit.eval.refusal import refusal_rate

    by_kind = {kind: [p for p in pairs if p["kind"] == kind] for kind in KINDS}
    table = []
    for kind, tag in (("red-team", "harmlessness"), ("benign", "helpfulness")):
        rows = by_kind[kind]
        p_after = _mean([p["judge_p_after"] for p in rows])
        judged = sum(p["judge_p_after"] is not None for p in rows)
        table.append(_row(f"{tag} win-rate ({kind})", None if p_after is None else 1 - p_after, p_after,
                          f"mean P(model better) from the judge {cfg.judge} under {JUDGE_TAG[kind]} principles, "
                          f"both orders averaged, {judged} pairs; 0.5 = no difference"))
    for kind in KINDS:
        rows = by_kind[kind]
        table.append(_row(f"refusal rate ({kind})", refusal_rate(p["before"] for p in rows),
                          refusal_rate(p["after"] for p in rows),
                          f"share of {len(rows)} answers opening with a refusal (caikit.eval.refusal)"))
    for kind in KINDS:
        got = (rewards or {}).get(kind, {})
        note = (f"mean sigmoid score of {cfg.reward_model} over {len(by_kind[kind])} answers" if rewards
                else "no --reward-model given")
        table.append(_row(f"mean reward ({kind})", got.get("before"), got.get("after"), note))
    sampling = "greedy answers: a log-ratio of the model's own answers, not a sampled KL" if cfg.temperature == 0 \
        else f"answers sampled at temperature {cfg.temperature}"
    kl_note = kl.get("note") or f"mean over the trained model's {len(pairs)} answers; {sampling}"
    table.append(_row("KL(after || before) per response", 0.0 if kl["per_response"] is not None else None,
                      kl["per_response"], kl_note))
    table.append(_row("KL(after || before) per token", 0.0 if kl["per_token"] is not None else None,
                      kl["per_token"], f"the same divided by {kl.get('tokens', 0)} answer tokens"))
    diversity = {side: diversity_metrics([p[side] for p in pairs]) for side in ("before", "after")}
    for key, metric, note in (("mean_length", "response length (words)", "mean whitespace words per answer"),
                              ("distinct_1", "distinct-1", "unique words / all words over all answers"),
                              ("distinct_2", "distinct-2", "unique word bigrams / all bigrams over all answers"),
                              ("identical_share", "identical answers share", "answers repeating another exactly")):
        table.append(_row(metric, diversity["before"][key], diversity["after"][key], note))
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    width = max(len(r["metric"]) for r in table)
    cells = [[r["metric"], *("-" if v is None else f"{v:.3f}" for v in (r["before"], r["after"]))] for r in table]
    return "\n".join(f"{m.ljust(width)}  {b:>8}  {a:>8}" for m, b, a in [["metric", "before", "after"], *cells])


def mean_rewards(cfg: EvalConfig, pairs: list[dict], device: str) -> dict[str, dict[str, float | None]]:
    from caikit.train.reward import load_reward_model, score

    loaded = load_reward_model(cfg.reward_model, device)
    out: dict[str, dict[str, float | None]] = {}
    for kind in KINDS:
        rows = [p for p in pairs if p["kind"] == kind]
        out[kind] = {side: _mean(score(loaded, [(p["prompt"], p[side]) for p in rows], batch_size=cfg.batch_size))
                     for side in ("before", "after")}
    return out


# ------------------------------------------------------------------------------------------ entry point

def run_eval(cfg: EvalConfig) -> int:
    from caikit.constitution import load_constitution

    cfg.validate()  # and every input below, before the first model loads
    check_model(cfg.trained, "--model")
    check_model(cfg.before, "--before")
    if cfg.reward_model and not (Path(cfg.reward_model) / "config.json").exists():
        raise UserError("--reward-model: not a reward model directory (no config.json)", path=cfg.reward_model)
    constitution = load_constitution(cfg.constitution)
    for kind in KINDS:
        judge_principles(constitution, kind)
    prompt_sets = load_eval_prompts(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    start = time.time()
    rows = [(kind, row) for kind in KINDS for row in prompt_sets[kind]]
    cache = JsonlFile(out / "answers.jsonl")
    try:
        answers = {side: generate_answers(cfg, name, [row for _, row in rows], cache)
                   for side, name in (("before", cfg.before), ("after", cfg.trained))}
    finally:
        cache.close()
    pairs = [{"prompt": row.messages, "before": b["text"], "after": a["text"], "kind": kind, "judge_p_after": None,
              "after_ended": a["finish_reason"] != "length"}
             for (kind, row), b, a in zip(rows, answers["before"][0], answers["after"][0])]

    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seconds = {"answers": time.time() - start}
    kl = kl_estimate(cfg, [(p["prompt"], p["after"], p["after_ended"]) for p in pairs], device)
    rewards = mean_rewards(cfg, pairs, device) if cfg.reward_model else None
    seconds["kl_and_reward"] = time.time() - start - seconds["answers"]
    judge, failed = run_judging(cfg, pairs, constitution, out)
    seconds["judge"] = time.time() - start - sum(seconds.values())
    print("caikit eval: seconds " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), file=sys.stderr)

    table = build_table(pairs, kl, rewards, cfg)
    counts = {"red_team_prompts": len(prompt_sets["red-team"]), "benign_prompts": len(prompt_sets["benign"]),
              "judged_pairs": sum(p["judge_p_after"] is not None for p in pairs), "judge_failures": failed,
              "answers_generated": answers["before"][1] + answers["after"][1], "kl_tokens": kl.get("tokens", 0),
              **{f"truncated_answers_{side}": sum(a["finish_reason"] == "length" for a in answers[side][0])
                 for side in ("before", "after")}}
    models = {"before": cfg.before, "after": cfg.trained}
    write_json_atomic(out / "report.json", {"models": models, "judge": judge, "counts": counts, "table": table})
    write_jsonl_atomic(out / "samples.jsonl", ({k: p[k] for k in ("prompt", "before", "after", "kind", "judge_p_after")}
                                               for p in pairs))
    print(f"caikit eval: {cfg.trained} (after) vs {cfg.before} (before), judge {cfg.judge}")
    print(format_table(table))
    print(f"caikit eval: {out / 'report.json'}, {out / 'samples.jsonl'}"
          + (f"; {failed} pairs could not be judged (rerun to retry)" if failed else ""))
    return 0
