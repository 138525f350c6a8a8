"""Evaluation: accepted length, per-position acceptance, confidence calibration (STS) and reports.

Everything here is computed from `RoundRecord`s pooled over the prompts of a benchmark
(algorithms.md sections 1, 3 and 6); the `specserve eval` / `specserve calibrate` commands are thin
layers over these functions.
"""
