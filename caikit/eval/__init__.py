"""Evaluation: diversity of responses, judge-vs-human agreement, before/after comparisons."""
