"""Benchmarks of the SoftUnlearn engine against hard unlearning, retraining and Fairlearn.

Not part of the test suite. Run ``python -m benchmarks.run --help``; see ``benchmarks/README.md``
and ``docs/BENCHMARKS.md`` for the measured results.
"""
