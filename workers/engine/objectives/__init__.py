"""What a correction aims at: differentiable audit surrogates of fairness gaps, utility and
robustness (``surrogates``), the adversarial attacks behind robustness targets (``attacks``), and
the audit targets built for a given model version, including the acceptance attack (``targets``).
"""
