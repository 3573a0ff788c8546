"""`caikit depth --before M0 --after M1 --out DIR`: how deep did the alignment between two checkpoints go?

On harmful and harmless prompts (the bundled red-team and benign suites, or any prompt files), with both models
run on the same tokens (each prompt followed by M1's own answer):
  1. the shift M1 - M0 of the residual stream per layer (last prompt token + first response positions): its
     spectrum and effective dimensionality (spectrum.py);
  2. per layer and model the harmful-minus-harmless direction, its held-out AUROC, the cosine between M0's and
     M1's, and the shift's share along it (direction.py);
  3. M1 with that direction (and, as a second row, the top-k shift directions) ablated by hooks: refusal rate on
     the harmful prompts against M0's and M1's, and the cost on harmless text (KL to M1, perplexity);
     --steer adds the direction instead (ablation.py);
  4. the per-position KL(M1 || M0) on M1's and on M0's answers to the harmful prompts (token_kl.py);
  5. the singular values of every weight matrix's change (weights.py).
Writes DIR/depth.json (every figure with its bootstrap interval over prompts and its n), DIR/answers.jsonl,
DIR/charts/*.svg, DIR/config.yaml and DIR/run.json; prints one line per figure.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from caikit.config import option, save_config
from caikit.errors import UserError


@dataclasses.dataclass
class DepthConfig:
    after: str = option("", help="the aligned model M1: a directory, HF id, or a LoRA adapter directory")
    before: str = option("smollm2", help="the model before alignment M0 (same architecture): smollm2 | directory | "
                                         "HF id | LoRA adapter directory")
    out: str = option("outputs/depth", help="output directory")
    prompts: str = option("", help="harmful prompts (any prompt file caikit reads); default: the bundled red-team "
                                   "suite caikit/data/red_team_prompts.jsonl")
    benign_prompts: str = option("", help="harmless prompts; default: the bundled caikit/data/benign_prompts.jsonl")
    limit: int = option(32, low=0, help="at most N prompts from each set (0: all)")
    response_positions: int = option(4, low=0, high=64,
                                     help="response positions after the last prompt token whose shift is measured")
    max_tokens: int = option(32, low=1, high=4096, help="max new tokens per answer (refusal rates, per-token KL)")
    temperature: float = option(0.0, low=0, high=2, help="sampling temperature of the answers (0: greedy)")
    layer: int = option(-1, low=-1, help="layer of the refusal direction to ablate (-1: the best-separating one "
                                         "among the first 80 %% of layers)")
    top_k: int = option(0, low=0, high=64, help="shift directions ablated in the second row (0: the shift's 90 %% "
                                                "count at that layer, at most 8)")
    steer: bool = option(False, help="also add the direction to M1 at that layer (activation addition): the refusal "
                                     "rate it induces on harmless and harmful prompts, a safety lever")
    steer_coefficient: float = option(1.0, help="multiple of the harmful-minus-harmless mean difference added by "
                                                "--steer")
    reward_model: str = option("", help="reward model directory (`caikit train reward`): its 0-1 score of the "
                                        "answers to harmful prompts beside the refusal rate")
    weights: bool = option(True, help="compare the weight matrices (singular values of each change)")
    lora_rank: int = option(8, low=1, high=4096, help="the LoRA rank whose sufficiency is checked (with 1 and 64)")
    max_prompt_tokens: int = option(256, low=8, high=100_000, help="prompt tokens kept (left-truncated)")
    batch_size: int = option(16, low=1, high=4096, help="sequences per forward / generation batch")
    memory_mb: float = option(1024.0, above=0, help="activations past this size stream to DIR/activations/ on disk")
    device: str = option("", help="cpu | cuda | cuda:1 (default: cuda if available)")
    dtype: str = option("", help="weights dtype: fp32 | bf16 | fp16 (default: the checkpoint's)",
                        metadata={"choices": ["", "fp32", "bf16", "fp16"]})
    seed: int = option(0, low=0, high=2**32 - 1, help="seed for sampling and bootstrap resampling")

    def validate(self) -> None:
        if not self.after:
            raise UserError("--after is required: the aligned model (directory, HF id or LoRA adapter)")


PART_NOTES = {"layers": "residual-stream activations of both models, the shift's spectrum and the direction per layer",
              "ablation": "answering the harmful prompts with the direction, then the top shift directions, ablated",
              "steer": "answering with the direction added (--steer)",
              "token_kl": "per-token KL on both models' answers", "weights": "singular values of each weight change"}


def _prompts(cfg: DepthConfig) -> tuple[list, list]:
    from caikit.prompts import bundled_benign_prompts_path, bundled_prompts_path, load_prompts

    limit = cfg.limit or None
    harmful = load_prompts(cfg.prompts or bundled_prompts_path(), limit=limit)
    harmless = load_prompts(cfg.benign_prompts or bundled_benign_prompts_path(), limit=limit)
    for rows, what, path in ((harmful, "harmful", cfg.prompts), (harmless, "harmless", cfg.benign_prompts)):
        if len(rows) < 4:
            raise UserError(f"{len(rows)} {what} prompts: at least 4 are needed (two per fold)",
                            path=path or "bundled")
    return harmful, harmless


def _check_same_architecture(m0, m1, cfg: DepthConfig) -> None:
    def shape(model):
        c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return (c.model_type, c.hidden_size, c.num_hidden_layers, model.get_output_embeddings().weight.shape[0])

    if shape(m0) != shape(m1):
        raise UserError(f"--before {cfg.before} and --after {cfg.after} are not one architecture "
                        f"({shape(m0)} vs {shape(m1)}): depth compares two checkpoints of the same model")


def _say(line: str) -> None:
    print(f"caikit depth: {line}", flush=True)


def summary_lines(result: dict) -> list[str]:
    """One printed line per figure, each with its interval and the number of prompts behind it."""
    from caikit.depth.measure import fmt

    nh, nb = result["n_harmful"], result["n_harmless"]
    lines = [f"{result['summary']} ({nh + nb} prompts x {result['n_rows_per_prompt']} positions)"]
    for row in result["layers"]:
        lines.append(
            f"layer {row['layer']:>2}: shift {fmt(row['relative_size'])} of the activations; k50 "
            f"{fmt(row['k50'], row['k50_interval'])}, k90 {fmt(row['k90'], row['k90_interval'])}, "
            f"PR {fmt(row['participation_ratio'], row['participation_ratio_interval'])}; direction AUROC before "
            f"{fmt(row['before']['auroc'], row['before']['auroc_interval'])}, after "
            f"{fmt(row['after']['auroc'], row['after']['auroc_interval'])}; cosine "
            f"{fmt(row['cosine'], row['cosine_interval'])}; shift along it "
            f"{fmt(row['share_along_direction'], row['share_along_direction_interval'], pct=True)} "
            f"(random: {row['random_direction_share']:.2%})")
    ab = result["ablation"]
    models = ab["models"]
    before = fmt(models["before"]["rate"], models["before"]["interval"], True)
    lines.append(f"refusal rate on {nh} harmful prompts: before {before}, after "
                 f"{fmt(models['after']['rate'], models['after']['interval'], True)}")
    for row in ab["rows"]:
        rec, cost = row["recovered"], row["harmless_cost"]
        lines.append(f"after with the {row['ablated']} ablated at layer {row['layer']}: refusal "
                     f"{fmt(row['refusal']['rate'], row['refusal']['interval'], True)} (n = {row['refusal']['n']}); "
                     f"share of the change undone {fmt(rec['share'], rec['interval'], True)}; cost on {cost['n']} "
                     f"harmless answers: KL to after {fmt(cost['kl_per_token'], cost['kl_interval'])} nats/token, "
                     f"perplexity {cost['perplexity_after']:.3g} -> "
                     f"{fmt(cost['perplexity_ablated'], cost['perplexity_ablated_interval'])}")
    lines.append(f"depth: {ab['verdict']}")
    for name, row in (ab.get("reward") or {}).items():
        lines.append(f"reward-model score on harmful prompts, {name}: {fmt(row['mean'], row['interval'])} "
                     f"(n = {row['n']})")
    if "steer" in result:
        st = result["steer"]
        lines.append(f"steering (+{st['coefficient']:g} x direction at layer {st['layer']}): refusal on harmless "
                     f"{fmt(st['harmless_unsteered']['rate'], st['harmless_unsteered']['interval'], True)} -> "
                     f"{fmt(st['harmless']['rate'], st['harmless']['interval'], True)} (n = {st['harmless']['n']}), "
                     f"on harmful {fmt(st['harmful']['rate'], st['harmful']['interval'], True)}")
    for name, row in result["token_kl"].items():
        who = "the after-model's" if name == "after_answers" else "the before-model's"
        lines.append(f"per-token KL(after || before) on {who} answers to {row['n']} harmful prompts: first "
                     f"{row['head']} tokens hold {fmt(row['share'], row['interval'], True)} of it; {row['verdict']}")
    if "weights" in result:
        w = result["weights"]
        for t in w["types"]:
            shares = ", ".join(f"rank {r}: {t['median_rank_share'][str(r)]:.0%}" for r in w["ranks"])
            lines.append(f"weights {t['type']}: {t['changed']}/{t['matrices']} changed, median effective rank "
                         f"{t['median_k90']:g} (90 %), relative change {t['median_relative_change']:.2g}; {shares}")
        lines.append(f"weights: {w['verdict']}")
    return lines


def write_outputs(ctx: dict, result: dict) -> None:
    """depth.json, answers.jsonl, charts/*.svg and run.json in --out."""
    from caikit.report.depth import depth_charts
    from caikit.store import write_json_atomic, write_jsonl_atomic, write_text_atomic

    out = ctx["out"]
    result["lines"] = summary_lines(result)
    write_json_atomic(out / "depth.json", result)
    rows = []
    for i, prompt in enumerate(ctx["harmful"]):
        rows.append({"id": prompt.id, "kind": "harmful", "prompt": prompt.messages,
                     **{name: texts[i] for name, texts in ctx["texts"].items() if i < len(texts)}})
    write_jsonl_atomic(out / "answers.jsonl", rows)
    (out / "charts").mkdir(exist_ok=True)
    for name, svg in depth_charts(result).items():
        write_text_atomic(out / "charts" / f"{name}.svg", svg)
    write_json_atomic(out / "run.json", {"stage": "depth", "before": result["before"], "after": result["after"]})


def run_depth(cfg: DepthConfig) -> int:
    import torch

    from caikit.depth import activations as act
    from caikit.depth.measure import ablation_rows, layer_rows, steer_rows, token_rows, weight_rows
    from caikit.rundir import lock_directory

    cfg.validate()
    started = time.monotonic()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(out, "depth")
    try:
        torch.manual_seed(cfg.seed)
        harmful, harmless = _prompts(cfg)
        tokenizer = act.tokenizer_for(cfg.after, cfg.before)
        dtype = cfg.dtype or None
        m0 = act.load_model(cfg.before, device=device, dtype=dtype)
        m1 = act.load_model(cfg.after, device=device, dtype=dtype, base=cfg.before)
        _check_same_architecture(m0, m1, cfg)
        ids_harmful = act.encode_prompts(tokenizer, [p.messages for p in harmful], cfg.max_prompt_tokens)
        ids_harmless = act.encode_prompts(tokenizer, [p.messages for p in harmless], cfg.max_prompt_tokens)
        gen = dict(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed,
                   batch_size=cfg.batch_size)
        print(f"caikit depth: {len(harmful)} harmful + {len(harmless)} harmless prompts; answering with both models",
              file=sys.stderr)
        seconds = {"load": time.monotonic() - started}
        mark = time.monotonic()
        answers1 = act.generate(m1, tokenizer, ids_harmful + ids_harmless, **gen)
        answers0 = act.generate(m0, tokenizer, ids_harmful, **gen)
        seconds["answers"] = time.monotonic() - mark
        ctx = {"cfg": cfg, "tokenizer": tokenizer, "m0": m0, "m1": m1, "device": device, "gen": gen, "out": out,
               "ids_harmful": ids_harmful, "ids_harmless": ids_harmless, "harmful": harmful, "harmless": harmless,
               "answers1": answers1, "answers0": answers0}
        result = {"before": cfg.before, "after": cfg.after, "n_harmful": len(harmful), "n_harmless": len(harmless),
                  "device": device, "response_positions": cfg.response_positions, "max_tokens": cfg.max_tokens,
                  "temperature": cfg.temperature}
        parts = [("layers", lambda: layer_rows(ctx)), ("ablation", lambda: ablation_rows(ctx, result)),
                 *[("steer", lambda: steer_rows(ctx, result))] * cfg.steer, ("token_kl", lambda: token_rows(ctx)),
                 *[("weights", lambda: weight_rows(ctx))] * cfg.weights]
        for name, part in parts:
            print(f"caikit depth: {PART_NOTES[name]}", file=sys.stderr, flush=True)
            mark = time.monotonic()
            result |= part()
            seconds[name] = time.monotonic() - mark
        result["seconds"] = round(time.monotonic() - started, 1)
        result["seconds_by_part"] = {k: round(v, 1) for k, v in seconds.items()}
        cpu = time.process_time()
        result["cpu_seconds"] = round(cpu, 1)
        write_outputs(ctx, result)
        save_config(cfg, out / "config.yaml")
    finally:
        lock.release()
    for line in result["lines"]:
        _say(line)
    _say(f"wrote {out / 'depth.json'} in {result['seconds']:.0f} s")
    return 0
