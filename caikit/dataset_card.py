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
from pathlib import Path
from typing import Any

import yaml

import caikit
from caikit.errors import UserError
from caikit.rundir import RunDir
from caikit.store import read_json

DATA_DIR = Path(caikit.__file__).resolve().parent / "data"
NOT_MEASURED = "not measured"
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))
PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}


@dataclasses.dataclass(frozen=True)
class PromptSource:
    description: str
    license: str  # Hugging Face licence id: mit | apache-2.0 | unknown
    attribution: str
    language: str = ""  # "en" where known


HH_RLHF = ("Anthropic's [hh-rlhf](https://github.com/anthropics/hh-rlhf) dataset (Bai et al. 2022, \"Training a "
           "Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback\", arXiv:2204.05862)")
# caikit/data/NOTICE.md is the source of these lines: keep them in step with it
BUNDLED_PROMPTS = {
    "red_team_prompts.jsonl": PromptSource(
        "caikit's bundled red-team sample: 50 first human turns, verbatim, from the `harmless-base` test split of "
        f"{HH_RLHF}. They are harmful requests collected by red-teaming, kept to measure harmlessness; they do not "
        "express the views of Anthropic or of caikit's authors.",
        "mit", "MIT License, Copyright (c) 2022 Anthropic (caikit/data/NOTICE.md holds the licence text).", "en"),
    "benign_prompts.jsonl": PromptSource(
        "caikit's bundled benign sample: about 20 ordinary requests written for caikit, for measuring over-refusal.",
        "apache-2.0", "caikit's own licence, Apache-2.0 (caikit/data/NOTICE.md).", "en"),
}
USER_PROVIDED = "user-provided, licence unknown"


@dataclasses.dataclass
class RunFacts:
    """What a run directory records about how its data was made (every part optional)."""

    path: Path
    stage: str
    identity: dict[str, Any]
    config: dict[str, Any]
    stats: dict[str, Any]
    usage: dict[str, Any]
    probe: dict[str, Any] | None
    gate: dict[str, Any] | None
    agreement: dict[str, Any] | None
    source_run: "RunFacts | None" = None  # the generate run a judge of revision pairs read (--from)


def read_run(path: Path, agreement: dict[str, Any] | None = None) -> RunFacts:
    config_file = path / RunDir.CONFIG
    try:
        config = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}) if config_file.exists() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError("unreadable YAML (was it edited by hand?)", path=str(config_file)) from None
    if not isinstance(config, dict):
        raise UserError("is not a mapping of settings", path=str(config_file))
    run = read_json(path / RunDir.RUN) or {}
    facts = RunFacts(path, run.get("stage", ""), run.get("identity") or {}, config,
                     read_json(path / RunDir.STATS) or {}, read_json(path / RunDir.USAGE) or {},
                     read_json(path / RunDir.PROBE), read_json(path / RunDir.GATE), agreement)
    source = config.get("from_dir")
    if facts.stage == "judge" and facts.identity.get("pairs", "revision") == "revision" and source:
        # as given to `caikit judge --from` (relative to where it ran), else a sibling of this run directory
        found = [p for p in (Path(source), path.parent / Path(source).name) if (p / RunDir.RUN).exists()]
        if found:
            facts.source_run = read_run(found[0])
    return facts


# ---------------------------------------------------------------------------------------------- facts in words

def shown(v: Any) -> str:
    if v is None:
        return NOT_MEASURED
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def percent(v: float | None) -> str:
    return NOT_MEASURED if v is None else f"{100 * v:.1f} %"


def endpoint(backend: str, model: str, base_url: str, probe: dict[str, Any] | None) -> tuple[str, str]:
    """(what kind of endpoint answered, the model's name) in words."""
    from caikit.backends.registry import PROVIDERS, provider_class

    if backend not in PROVIDERS:
        return "not recorded (run.json names no provider)", model or "not recorded"
    if backend == "local":
        return "local model, run in process by caikit (transformers)", f"local:{model or 'smollm2'}"

    cls, provider = provider_class(backend), PROVIDER_NAMES.get(backend, backend)
    name = f"{backend}:{model or cls.default_model}"
    if probe:
        return f"self-hosted {provider}-compatible server", name
    if cls.is_cloud(base_url):
        return f"cloud API ({provider})", name
    return f"self-hosted {provider}-compatible server (not probed)", name


def probe_in_words(probe: dict[str, Any]) -> str:
    logprobs = f"yes (top {probe.get('top_logprobs')})" if probe.get("logprobs") else "no"
    slots = probe.get("slots")
    at_once = f"{slots} ({probe.get('slots_from')})" if slots else "unknown"
    speed = probe.get("tokens_per_second")
    return (f"probed {str(probe.get('probed_at', ''))[:10]}: log-probs {logprobs}; honours `n` "
            f"{shown(probe.get('honours_n'))}; requests served at once {at_once}; system message "
            f"{probe.get('system_message', 'unknown')}; {speed or '?'} tokens/s")


def prompt_source(config: dict[str, Any]) -> tuple[PromptSource, str]:
    """(where the prompts of a run with this config.yaml came from, the file as the run named it)."""
    if "prompts" not in config:
        return PromptSource("not recorded (the run directory has no config.yaml naming them).", "unknown",
                            "unknown"), "?"
    prompts = config["prompts"]
    if not prompts:
        return BUNDLED_PROMPTS["red_team_prompts.jsonl"], "caikit's default"
    path = Path(prompts)
    try:
        bundled = path.resolve().parent == DATA_DIR and path.name in BUNDLED_PROMPTS
    except OSError:
        bundled = False
    if bundled:
        return BUNDLED_PROMPTS[path.name], path.name
    return PromptSource("a file given by the user.", "unknown", USER_PROVIDED), path.name


def size_category(n: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>10M")


def made_between(records: list[dict[str, Any]]) -> str | None:
    stamps = sorted(str(r["created_at"]) for r in records if r.get("created_at"))
    if not stamps:
        return None
    first, last = stamps[0][:10], stamps[-1][:10]
    return first if first == last else f"{first} to {last}"


def table(rows: list[tuple[str, Any]]) -> str:
    return "| fact | value |\n|---|---|\n" + "\n".join(f"| {k} | {shown(v) if not isinstance(v, str) else v} |"
                                                       for k, v in rows)


# ---------------------------------------------------------------------------------------------- the card

@dataclasses.dataclass
class Exported:
    """The dataset a card describes."""

    name: str  # "sft" | "preferences"
    rows: list[dict[str, Any]]  # as exported
    columns: dict[str, Any]
    layout: str  # "prompt-completion" | "messages" | "preference"
    data_files: str | None  # the file the Hub's `configs` points at (None: a save_to_disk directory)
    made: str | None = None  # the dates the records were written (made_between)


def dataset_card(dataset: Exported, facts: RunFacts) -> str:
    """README.md for `dataset`, exported from the run `facts` describe."""
    prompts_run = facts.source_run or facts
    source, prompts_file = prompt_source(prompts_run.config)
    front: dict[str, Any] = {"license": source.license, "pretty_name": f"caikit {dataset.name} ({facts.path.name})"}
    if source.language:
        front["language"] = [source.language]
    front["task_categories"] = ["text-generation"]
    front["size_categories"] = [size_category(len(dataset.rows))]
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
    summary = (f"{len(dataset.rows)} examples of supervised learning from Constitutional AI (SL-CAI): a model "
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
              ("revisions cut at --max-tokens (truncated)", fate("truncated", "truncated")),
              ("degenerate revisions (unchanged, the critique again, empty)", degenerate),
              ("rows in this dataset", len(dataset.rows))]
    return [("Dataset summary", summary), ("Dataset structure", structure), ("How to use", use),
            ("How it was made", table(generation_rows(facts) + made_with(facts, dataset))),
            ("Counts", table(counts))]


METHODS = {"logprob": "logprob (P(A better) from the log-probs of the answer letter)",
           "vote": "vote (sampled verdicts counted)", "cot": "cot (reasoning, then a verdict)",
           "parsed": "parsed (one sampled verdict per order)"}
SKIPPED = {"revision_unchanged": "traces whose revision equals the initial answer (not judged)",
           "truncated": "revisions cut at --max-tokens (not judged)",
           "degenerate": "degenerate revisions (not judged)",
           "too_few_distinct_samples": "prompts with fewer than 2 distinct samples (not judged)",
           "truncated_samples": "samples cut at --policy-max-tokens (left out)"}
GATE_WARNINGS = {"failed": "**The judge failed its quality gate: these labels are not to be trusted.**",
                 "allowed-weak": "**The judge did not pass its quality gate; the run went on because "
                                 "--allow-weak-judge was given. Read the judge quality section first.**"}


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
                 ("length-only baseline (the longer answer wins)", percent(human.get("length_baseline"))),
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
    mean_p = sum(float(r["p_chosen"]) for r in dataset.rows) / len(dataset.rows)
    if mean_p >= 1:
        return "Every pair carries a hard label (`p_chosen` = 1: a human or rule label)."
    eps = f"{1 - mean_p:.3f}"
    return (f"Over the {len(dataset.rows)} pairs, mean `p_chosen` = {mean_p:.3f}, so "
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
    summary = (f"{len(dataset.rows)} AI-labelled preference pairs (RLAIF): {origin}, compared by an AI judge "
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
              *[(SKIPPED.get(k, k.replace("_", " ")), v) for k, v in skipped.items()],
              ("ties (p_chosen = 0.5, dropped)", stats.get("ties")),
              (f"dropped below --min-margin {stats.get('min_margin', '')}".strip(), stats.get("dropped_below_min_margin")),
              ("rows in this dataset", len(dataset.rows))]
    if facts.source_run:
        counts.insert(0, ("prompts that failed in the generate run", facts.source_run.stats.get("failures")))
    return [("Dataset summary", summary), ("Dataset structure", structure), ("Soft labels: p_chosen", soft_labels(dataset)),
            ("How it was made", table(judge_rows(facts) + made_with(facts, dataset))),
            ("Judge quality", table(quality_rows(facts))), ("Counts", table(counts))]


def licence(source: PromptSource) -> str:
    responses = ("The responses were written by the model(s) named above; the terms of their provider apply to "
                 "them.")
    if source.license == "unknown":
        return ("The licence of the prompts is not known to caikit: the `license` field above says `unknown` until "
                f"whoever publishes this dataset states it. {responses}")
    return f"`{source.license}`: the licence of the prompts. {responses}"
