"""Curvature-vector products of one chunk of rows, optionally reusing the chunk's autograd graph.

A Gauss-Newton product ``Jᵀ diag(c) J v`` over a chunk is a forward pass, one backward pass
that builds the graph of ``Jᵀ u`` (``create_graph``), and two more backward passes per vector:
``J v`` (the double-vjp trick, so only reverse mode is needed) and ``Jᵀ (c ⊙ J v)``. The first
two depend only on the parameters and the rows, not on ``v``, so a solver that makes many
products at the same parameters (CG: 10–50 per solve, several solves a job) can keep them and
pay only the last two per product: on the Adult MLP (8.8 k parameters, 30 k rows) a product took
104 instead of 192 ms, with bit-identical results. The exact Hessian's product keeps the graph of
the gradient the same way. Keeping costs memory, :data:`GRAPH_COPIES` activation widths per row,
so the caller decides (:func:`kept_graph_bytes`).

Every backward pass here takes a scalar (:func:`vector_jacobian_product`): handing
``torch.autograd.grad`` a tensor of ``grad_outputs`` makes its first call import
``torch.fx.experimental.symbolic_shapes`` and sympy, 0.5 s of a few-second job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GRAPH_COPIES", "ChunkProduct", "GaussNewtonGraph", "hessian_product", "kept_graph_bytes",
           "vector_jacobian_product"]

ChunkProduct = Callable[[torch.Tensor], torch.Tensor]
"""``v ↦`` one chunk's curvature-vector product (flat, float64)."""

GRAPH_COPIES = 2
"""Values a kept graph holds per row and per float of activation width (the layers' inputs and
outputs): measured 0.7–1.4 on ReLU MLPs from 296 to 6,248 floats wide; 2 is margin."""


def kept_graph_bytes(rows: int, width: int, itemsize: int = 8) -> int:
    """Bytes the kept graphs of ``rows`` rows take for a network ``width`` floats of activation
    wide, in a dtype of ``itemsize`` bytes (float64 by default)."""
    return GRAPH_COPIES * rows * width * itemsize


def vector_jacobian_product(outputs: torch.Tensor, inputs: torch.Tensor, cotangent: torch.Tensor,
                            retain_graph: bool | None = None, create_graph: bool = False) -> torch.Tensor:
    """``∂(cotangentᵀ outputs)/∂inputs``: ``torch.autograd.grad(outputs, inputs, cotangent)`` with
    the same numbers (the backward of the sum and product multiplies by exactly 1), taken as the
    gradient of a scalar so torch does not load its symbolic-shape machinery. As there, the graph
    is retained by default exactly when ``create_graph``."""
    (gradient,) = torch.autograd.grad((outputs * cotangent).sum(), inputs, retain_graph=retain_graph,
                                      create_graph=create_graph)
    return gradient


class GaussNewtonGraph:
    """One chunk's Gauss-Newton product ``v ↦ Jᵀ diag(coefficients) J v``, J the Jacobian of
    ``logits`` with respect to the leaf ``theta``; with ``keep`` the graphs survive every call,
    otherwise the product may be taken once. Kept, it also gives ``J v`` alone (one backward
    pass: the rows' directional derivatives ``∇zᵢᵀ v``) and the chunk's logits."""

    def __init__(self, theta: torch.Tensor, logits: torch.Tensor, coefficients: torch.Tensor,
                 keep: bool) -> None:
        self.theta, self.logits, self.coefficients, self.keep = theta, logits, coefficients, keep
        self._dummy = torch.zeros_like(logits, requires_grad=True)
        self._transposed = vector_jacobian_product(logits, theta, self._dummy, create_graph=True)

    def logit_jvp(self, vector: torch.Tensor) -> torch.Tensor:
        """``J v`` (one value per row), by the double-vjp trick."""
        with torch.enable_grad():
            return vector_jacobian_product(self._transposed, self._dummy, vector, retain_graph=self.keep)

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        forward = self.logit_jvp(vector)
        with torch.enable_grad():
            return vector_jacobian_product(self.logits, self.theta, self.coefficients * forward,
                                           retain_graph=self.keep)


def hessian_product(theta: torch.Tensor, gradient: torch.Tensor, keep: bool) -> ChunkProduct:
    """``v ↦ ∇_θ(gradientᵀ v)``, the Hessian-vector product of a ``gradient`` built with
    ``create_graph`` from the leaf ``theta``; with ``keep`` its graph survives every call."""
    def product(vector: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return vector_jacobian_product(gradient, theta, vector, retain_graph=keep)
    return product
