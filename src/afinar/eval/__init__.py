"""Evaluation: metrics per task type, base-vs-custom comparison, reports."""
