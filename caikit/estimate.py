"""STUB (being written): expected requests, tokens and cost of a run, and the --max-cost gate."""

from __future__ import annotations


def estimate_generate(cfg, constitution, prompts):
    return None


def estimate_judge(cfg, constitution, pairs, method):
    return None


def confirm_cost(estimate, cfg) -> None:
    return None
