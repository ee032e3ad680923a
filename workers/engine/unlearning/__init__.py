"""Unlearn stage: applying per-sample weights to the model. Newton and refit steps on the logistic
head (``head_steps``), the whole-network methods behind one interface (``methods``), and the guard
that tracks the target step by step, re-measures every step on the audit set and keeps it only if
it helps (``tracking``).
"""
