"""Unlearning methods that act on the whole network (issue 4), behind one interface.

Each method takes a :class:`~workers.engine.unlearning.methods.base.NetworkTask` (the model, the
training data and the per-sample weights ε) and returns a
:class:`~workers.engine.unlearning.methods.base.MethodOutcome` (a state dict with the input's keys,
shapes and dtypes). The head methods ``newton`` and ``refit`` live in
:mod:`workers.engine.unlearning.head_steps`.
"""
