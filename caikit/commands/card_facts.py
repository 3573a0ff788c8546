"""What a dataset card states, read from a run directory: where the data came from (prompt source and licence,
endpoint, models), what was measured (stats, usage, probe, the judge's gate, agreement) -- and nothing guessed.
caikit/commands/dataset_card.py turns these facts into the card."""

from __future__ import annotations

import dataclasses
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


