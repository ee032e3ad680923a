"""Evaluate and report stage: before/after metrics on audit and eval splits (``metrics``), paired
bootstrap intervals of their changes (``uncertainty``), the verdict on whether the target was met
with its warnings (``verdict``), and the JSON/HTML correction report (``report``).
"""
