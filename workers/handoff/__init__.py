"""Hand-offs of a succeeded job's outputs to other systems of an MLOps stack (MLflow).

A hand-off runs in the worker after the outputs are published and before the job is marked
succeeded. It never fails the correction: its outcome is recorded on the job
(``JobRecord.handoffs``) with a warning when it could not be done.
"""
