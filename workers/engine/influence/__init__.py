"""Influence stage: how removing or reweighting each training sample would move a target. Closed-form
influence of the logistic head (``head``), influence over every network parameter (``full``) with
its inverse-Hessian-vector-product solvers (``ihvp``), and the correction scopes that wrap either
behind one interface for the pipeline: polish, target, influences, step (``scopes`` for the head,
``full_scope`` for the whole network).
"""
