"""The dataset card (README.md) `caikit export` writes beside each dataset: what a reader needs to rely on the
data, in the Hugging Face dataset-card layout -- a YAML header (license, task_categories, size_categories,
configs) and then sections -- with only the rows that apply to that dataset (the SFT card has no judge).

Everything comes from the run directory: run.json (stage, identity), config.yaml (prompt file, base URL),
stats.json and usage.json (counts), probe.json (a self-hosted server as `caikit probe` found it), gate.json
(the judge's quality gate), agreement/report.json (`caikit eval judge`), and for a judge of revision pairs
the generate run it read (--from). What was not recorded is said to be "not measured", never guessed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import yaml

import caikit

from caikit.commands.card_facts import (NOT_MEASURED, PromptSource, RunFacts, endpoint, percent, probe_in_words,
                                        prompt_source, shown, size_category)

def cell(value: Any) -> str:
    """A table cell: a `|` inside the text (the verdict's |p - 0.5|) would start a new column."""
    text = value if isinstance(value, str) else shown(value)
    return text.replace("\\|", "|").replace("|", "\\|")


def table(rows: list[tuple[str, Any]]) -> str:
    return "| fact | value |\n|---|---|\n" + "\n".join(f"| {k} | {cell(v)} |" for k, v in rows)


# ---------------------------------------------------------------------------------------------- the card

@dataclasses.dataclass
class Exported:
    """The dataset a card describes."""

    name: str  # "sft" | "preferences"
    count: int  # rows exported
    columns: dict[str, Any]
    layout: str  # "prompt-completion" | "messages" | "preference"
    data_files: str | None  # the file the Hub's `configs` points at (None: a save_to_disk directory)
    made: str | None = None  # the dates the records were written ("2026-12-01" or "2026-12-01 to 2026-12-07")
    mean_p_chosen: float | None = None  # over the rows (preferences)


def dataset_card(dataset: Exported, facts: RunFacts) -> str:
    """README.md for `dataset`, exported from the run `facts` describe."""
    prompts_run = facts.source_run or facts
    source, prompts_file = prompt_source(prompts_run.config)
    front: dict[str, Any] = {"license": source.license, "pretty_name": f"caikit {dataset.name} ({facts.path.name})"}
    if source.language:
        front["language"] = [source.language]
    front["task_categories"] = ["text-generation"]
    front["size_categories"] = [size_category(dataset.count)]
    front["tags"] = ["caikit", "constitutional-ai"] + (["rlaif", "dpo", "reward-modeling"]
                                                        if dataset.name == "preferences" else ["sft"])
    if dataset.data_files:
        front["configs"] = [{"config_name": "default",
                             "data_files": [{"split": "train", "path": dataset.data_files}]}]
    sections = preference_sections(dataset, facts) if dataset.name == "preferences" else sft_sections(dataset, facts)
    sections.append(("Source data", f"**Prompts** (`{prompts_file}`): {source.description}\n\n"
                                    f"**Their licence**: {source.attribution}"))
    sections.append(("Licence", licence(source)))
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections)
    title = "SL-CAI revisions (SFT)" if dataset.name == "sft" else "AI-judged preference pairs"
    return (f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n"
            f"# Dataset card: caikit {title}\n\nExported by `caikit export` from `{facts.path.name}`.\n\n{body}\n")


def made_with(facts: RunFacts, dataset: Exported) -> list[tuple[str, Any]]:
    """The rows every card has: the constitution, the run, the caikit that exported it and when."""
    identity = facts.identity
    constitution = identity.get("constitution") or facts.config.get("constitution") or NOT_MEASURED
    return [("constitution", f"{constitution} (sha256 `{identity.get('constitution_hash') or '?'}`)"),
            ("run directory", f"`{facts.path.name}` (`caikit {facts.stage}`)"),
            ("records written", dataset.made or NOT_MEASURED),
            ("exported", f"{time.strftime('%Y-%m-%d', time.gmtime())} by caikit {caikit.__version__}"),
            ("tokens, estimated cost", spent(facts.usage))] + (
               [("policy tokens, estimated cost", spent(facts.usage["policy"]))] if "policy" in facts.usage else [])


def spent(usage: dict[str, Any]) -> str:
    if usage.get("total_tokens") is None:
        return NOT_MEASURED
    cost = f"${usage.get('cost_usd', 0):.4f}" if usage.get("price_known", True) else "price unknown"
    return f"{usage['total_tokens']:,} tokens, {cost}"


def model_rows(role: str, backend: str, model: str, base_url: str,
               probe: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Which endpoint and model played `role` ("judge", "policy"; "" for the generate run's one model)."""
    kind, name = endpoint(backend, model, base_url, probe)
    rows = [(f"{role} endpoint".strip(), kind), (f"{role} model".strip(), f"`{name}`")]
    if probe:
        rows.append((f"{role} server".strip(), probe_in_words(probe)))
    return rows


def generation_rows(run: RunFacts, role: str = "") -> list[tuple[str, Any]]:
    identity = run.identity
    rows = model_rows(role, identity.get("backend", ""), identity.get("model", ""), run.config.get("base_url", ""),
                      run.probe)
    if "rounds" in identity:
        rows.append((f"{role} critique -> revision rounds".strip(), identity["rounds"]))
    if "temperature" in identity:
        rows.append((f"{role} sampling".strip(), f"temperature {shown(identity['temperature'])}, at most "
                                                 f"{shown(identity.get('max_tokens'))} new tokens per answer, seed "
                                                 f"{shown(identity.get('seed'))}"))
    return rows


def sft_sections(dataset: Exported, facts: RunFacts) -> list[tuple[str, str]]:
    stats, identity = facts.stats, facts.identity
    rounds = f" ({identity['rounds']} round(s))" if "rounds" in identity else ""
    summary = (f"{dataset.count} examples of supervised learning from Constitutional AI (SL-CAI): a model "
               "answered each prompt, critiqued its answer under a principle of the constitution "
               f"`{facts.config.get('constitution') or identity.get('constitution') or '?'}` and rewrote it{rounds}; "
               "each row pairs the conversation with the final revision.")
    if dataset.layout == "messages":
        structure = ("Layout: conversational language modelling (`--sft-layout messages`).\n\n"
                     "- `messages`: the conversation, then the final revision as its last assistant turn "
                     "(list of {role, content})")
        use = ("- TRL `SFTTrainer` trains on **every token** of a `messages` row (its `assistant_only_loss` is off by "
               "default and needs a chat template with generation markers): earlier assistant turns of a multi-turn "
               "prompt are learned too. Export with the default `--sft-layout prompt-completion` to train on the "
               "revision alone.\n"
               "- caikit: `caikit train sft --data <this directory>` takes the last assistant turn as the completion "
               "and trains on its tokens (and EOS) only.")
    else:
        structure = ("Layout: conversational prompt-completion (TRL).\n\n"
                     "- `prompt`: the conversation up to and including its last user turn (list of {role, content})\n"
                     "- `completion`: `[{\"role\": \"assistant\", \"content\": <the final revision>}]`")
        use = ("- TRL `SFTTrainer`: pass the dataset as it is. For a prompt-completion dataset TRL computes the loss "
               "on the completion only (`completion_only_loss` is on for this layout), so the model learns the "
               "revision and none of the conversation's earlier turns.\n"
               "- caikit: `caikit train sft --data <this directory>` trains on the completion's tokens (and EOS) "
               "only; the prompt is context.")
    kept = {"truncated": stats.get("keep_truncated"), "degenerate": stats.get("keep_degenerate")}

    def fate(key: str, flag: str) -> str:
        n = stats.get(key)
        if n is None:
            return NOT_MEASURED
        return f"{n}, " + ("kept (--keep-" + flag + ")" if kept[key] else "left out")

    reasons = stats.get("degenerate_by_reason") or {}
    degenerate = fate("degenerate", "degenerate") + (
        " (" + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")" if reasons else "")
    counts = [("prompts", stats.get("prompts")), ("traces (prompts answered, critiqued and revised)", stats.get("traces")),
              ("failed after retries (failures.jsonl)", stats.get("failures")),
              *missing_rows(stats, "missing_prompts", "prompts"),
              ("revisions cut at --max-tokens (truncated)", fate("truncated", "truncated")),
              ("degenerate revisions (unchanged, the critique again, empty)", degenerate),
              ("rows in this dataset", dataset.count)]
    guard = stats.get("guard") or {}
    if guard:  # caikit generate --guard
        counts.insert(-1, (f"flagged by the guard {guard.get('path')} ({guard.get('target')}, --guard-action "
                           f"{guard.get('action')})", guard.get("flagged")))
    return [("Dataset summary", summary), ("Dataset structure", structure), ("How to use", use),
            ("How it was made", table(generation_rows(facts) + made_with(facts, dataset))),
            ("Counts", table(counts))]


def missing_rows(stats: dict[str, Any], key: str, unit: str) -> list[tuple[str, Any]]:
    """A merge of some shards only (`caikit merge --allow-partial`): which shards, and how many items they held
    (counted among the failures above)."""
    shards = stats.get("missing_shards")
    if not shards:
        return []
    held = stats.get(key)
    return [(f"**missing shards {', '.join(map(str, shards))}** (not merged: {unit} never run, among the failures)",
             NOT_MEASURED if held is None else held)]


METHODS = {"logprob": "logprob (P(A better) from the log-probs of the answer letter)",
           "vote": "vote (sampled verdicts counted)", "cot": "cot (reasoning, then a verdict)",
           "parsed": "parsed (one sampled verdict per order)"}
SKIPPED = {"revision_unchanged": "traces whose revision equals the initial answer (not judged)",
           "truncated": "revisions cut at --max-tokens (not judged)",
           "truncated_initial": "initial answers cut at --max-tokens (not judged)",
           "degenerate": "degenerate revisions (not judged)",
           "too_few_distinct_samples": "prompts with fewer than 2 distinct samples (not judged)",
           "truncated_samples": "samples cut at --policy-max-tokens (left out)"}
GATE_WARNINGS = {"failed": "**The judge failed its quality gate: these labels are not to be trusted.**",
                 "allowed-weak": "**The judge did not pass its quality gate; the run went on because "
                                 "--allow-weak-judge was given. Read the judge quality section first.**"}


# gate.json's `length_baseline_rule` in words (gates written before it existed used "shorter")
LENGTH_RULES = {"shorter": "the shorter answer wins, ties count half", "longer": "the longer answer wins, ties count half"}


def judge_rows(facts: RunFacts) -> list[tuple[str, Any]]:
    identity = facts.identity
    rows = model_rows("judge", identity.get("backend", ""), identity.get("model", ""),
                      facts.config.get("base_url", ""), facts.probe)
    rows += [("judge method", METHODS.get(identity.get("method"), identity.get("method"))),
             ("order swap (position-bias control)", identity.get("swap")),
             ("judge principles per pair", identity.get("principles"))]
    if identity.get("method") == "vote":
        rows.append(("votes per order", identity.get("votes")))
    if identity.get("pairs") == "samples":
        rows += model_rows("policy", identity.get("policy_backend", ""), identity.get("policy_model", ""),
                           identity.get("policy_base_url", ""), None)
        rows += [("samples per prompt", identity.get("n")),
                 ("policy sampling", f"temperature {shown(identity.get('policy_temperature'))}, at most "
                                     f"{shown(identity.get('policy_max_tokens'))} new tokens")]
    elif facts.source_run:
        rows.append(("responses", f"final revision vs initial answer of `{facts.source_run.path.name}` "
                                  "(`caikit generate`)"))
        rows += generation_rows(facts.source_run, "responses")
    else:
        rows.append(("responses", f"final revision vs initial answer of `{facts.config.get('from_dir', '?')}` "
                                  "(not found at export time: how its responses were made is not recorded here)"))
    return rows


def quality_rows(facts: RunFacts) -> list[tuple[str, Any]]:
    stats, gate = facts.stats, facts.gate
    checked = stats.get("position_checked")
    rows = [("position consistency (same verdict in both orders)",
             percent(stats.get("position_consistency_rate")) + (f" of {checked} pairs" if checked else "")),
            ("mean \\|p - 0.5\\| (judge confidence)", stats.get("mean_abs_margin")),
            ("longer response preferred by the judge", percent(stats.get("longer_preferred_rate")))]
    if stats.get("bounded_by_top_k"):
        rows.append(("judgments with an option missing from the top-k log-probs (its probability set to the "
                     "smallest listed one, the bound)", stats["bounded_by_top_k"]))
    if "revision_preferred_rate" in stats:
        rows.append(("revision preferred over the initial answer", percent(stats["revision_preferred_rate"])))
    human = None
    if gate:
        rows += [("quality gate", f"**{gate.get('status')}** (min position consistency "
                                  f"{shown((gate.get('thresholds') or {}).get('min_consistency'))})"),
                 ("quality gate verdict", str(gate.get("verdict") or "").replace("\n", " ") or NOT_MEASURED),
                 ("calibration pairs judged by the gate", gate.get("calibrated_pairs")),
                 ("position consistency on them", percent(gate.get("position_consistency"))),
                 ("unparseable judge answers on them", percent(gate.get("unparseable_rate")))]
        human = gate.get("human")
    else:
        rows.append(("quality gate", f"{NOT_MEASURED} (no gate.json in the run)"))
    if human:
        lo, hi = (human.get("interval") or [None, None])[:2]
        rows += [("agreement with human labels (gate)", f"{percent(human.get('accuracy'))} on {human.get('n')} pairs "
                                                        f"(interval {percent(lo)} to {percent(hi)}), kappa "
                                                        f"{shown(human.get('kappa'))}"),
                 (f"length-only baseline ({LENGTH_RULES.get(human.get('length_baseline_rule', 'shorter'), '?')})",
                  percent(human.get("length_baseline"))),
                 ("longer answer preferred: judge / humans", f"{percent(gate.get('judge_longer_rate'))} / "
                                                             f"{percent(human.get('human_longer_rate'))}")]
    agreement = facts.agreement
    if agreement:
        rows += [("agreement with human labels (`caikit eval judge`)",
                  f"{shown(agreement.get('accuracy'))} on {agreement.get('n')} pairs ({agreement.get('pairs_file')})"),
                 ("position consistency (`caikit eval judge`)", agreement.get("position_consistency_rate")),
                 ("expected calibration error (`caikit eval judge`)", agreement.get("ece"))]
    if not human and not agreement:
        rows.append(("agreement with human labels", NOT_MEASURED))
    return rows


def soft_labels(dataset: Exported) -> str:
    """mean p_chosen, and epsilon = mean(1 - p_chosen) with where it goes in caikit and in TRL."""
    mean_p = dataset.mean_p_chosen
    if mean_p >= 1:
        return "Every pair carries a hard label (`p_chosen` = 1: a human or rule label)."
    eps = f"{1 - mean_p:.3f}"
    return (f"Over the {dataset.count} pairs, mean `p_chosen` = {mean_p:.3f}, so "
            f"**epsilon = mean(1 - p_chosen) = {eps}**: the share of the labels that one label-smoothing value "
            "stands for.\n\n"
            "- caikit: `caikit train reward --data <this directory>` trains on `p_chosen` as a per-pair soft label "
            "by default; `caikit train dpo --loss cdpo --use-soft-labels` uses a per-pair epsilon = 1 - p_chosen.\n"
            "- TRL `DPOTrainer` reads no per-pair label; one epsilon stands for the whole set: "
            f"`DPOConfig(loss_type=\"robust\", label_smoothing={eps})` (robust DPO reads `label_smoothing` as the "
            "probability that a label is flipped; it must stay below 0.5). In TRL 1.16 the default "
            "`loss_type=\"sigmoid\"` ignores `label_smoothing`.\n"
            "- TRL `RewardTrainer` reads no soft label: every pair is trained as a hard preference. To lean on the "
            "judge's confidence, keep the confident pairs, e.g. `ds.filter(lambda r: r[\"p_chosen\"] >= 0.7)`.")


def preference_sections(dataset: Exported, facts: RunFacts) -> list[tuple[str, str]]:
    stats, identity = facts.stats, facts.identity
    origin = ("the final revision of a `caikit generate` run against its initial answer"
              if identity.get("pairs", "revision") == "revision" else
              f"{shown(identity.get('n'))} samples per prompt from a policy, the best against the worst by mean "
              "win probability")
    summary = (f"{dataset.count} AI-labelled preference pairs (RLAIF): {origin}, compared by an AI judge "
               f"under principles of the constitution `{identity.get('constitution') or '?'}`.")
    warning = GATE_WARNINGS.get((facts.gate or {}).get("status"))
    if warning:
        summary += "\n\n" + warning
    structure = ("Layout: conversational preference (TRL `DPOTrainer` / `RewardTrainer`, alignment-handbook).\n\n"
                 "- `prompt`: the conversation up to and including its last user turn (list of {role, content})\n"
                 "- `chosen`, `rejected`: one assistant message each\n"
                 "- `p_chosen`: the judge's P(chosen is better), averaged over both orders and the principles "
                 "(the soft label; above 0.5)\n"
                 "- `source`: revision-vs-initial | judged-samples | human\n\n"
                 "No column is named `margin`: TRL's `RewardTrainer` subtracts a column of that name from the reward "
                 "difference inside its loss.")
    skipped = stats.get("skipped") or {}
    counts = [("pairs to judge", stats.get("pairs")), ("judged", stats.get("judged")),
              ("failed after retries (failures.jsonl)", stats.get("failures")),
              *missing_rows(stats, "missing_items", "traces / prompts"),
              *[(SKIPPED.get(k, k.replace("_", " ")), v) for k, v in skipped.items()],
              *([("pairs with a side cut at --max-tokens (kept: --keep-truncated; see provenance "
                  "`cut_at_max_tokens`)", stats["with_cut_side"])] if stats.get("with_cut_side") else []),
              ("ties (p_chosen = 0.5, dropped)", stats.get("ties")),
              (f"dropped below --min-margin {stats.get('min_margin', '')}".strip(), stats.get("dropped_below_min_margin")),
              ("rows in this dataset", dataset.count)]
    if facts.source_run:
        counts.insert(0, ("prompts that failed in the generate run", facts.source_run.stats.get("failures")))
    return [("Dataset summary", summary), ("Dataset structure", structure), ("Soft labels: p_chosen", soft_labels(dataset)),
            ("How it was made", table(judge_rows(facts) + made_with(facts, dataset))),
            ("Judge quality", table(quality_rows(facts))), ("Judge principles", principle_rows(stats)),
            ("Counts", table(counts))]


def principle_rows(stats: dict[str, Any]) -> str:
    """The per-principle table of stats.json (caikit/principle_stats.py) as Markdown."""
    rows = stats.get("per_principle")
    if not rows:
        return f"Per-principle figures: {NOT_MEASURED} (a judge run from before they were recorded)."

    def rate(value: dict[str, Any] | None) -> str:
        if not value or value.get("rate") is None:
            return NOT_MEASURED
        lo, hi = value.get("interval") or (None, None)
        return percent(value["rate"]) + (f" ({percent(lo)}-{percent(hi)})" if lo is not None else "") + \
            f" of {value.get('n')}"

    lines = ["Each principle's own verdicts (`caikit constitution stats` recomputes this table): how many pairs it "
             "judged, how often both orders agreed, how often its pick was the judgment's (on how many pairs it "
             "shared the decision with other principles), and how often it picked what people picked (95 % "
             "intervals).", "",
             "| principle | pairs | position consistency | decided the pair | shared with others | agreement with "
             "people |", "|---|---|---|---|---|---|"]
    lines += [f"| {cell(r.get('principle_id'))} | {shown(r.get('pairs'))} | {rate(r.get('position_consistency'))} | "
              f"{rate(r.get('decided'))} | {shown(r.get('with_others'))} | "
              f"{rate(r.get('human_agreement')) if r.get('human_agreement') else 'no human labels'} |" for r in rows]
    return "\n".join(lines)


def licence(source: PromptSource) -> str:
    responses = ("The responses were written by the model(s) named above; the terms of their provider apply to "
                 "them.")
    if source.license == "unknown":
        return ("The licence of the prompts is not known to caikit: the `license` field above says `unknown` until "
                f"whoever publishes this dataset states it. {responses}")
    return f"`{source.license}`: the licence of the prompts. {responses}"
