"""The curvature of a trained net's loss: the Hessian's largest algebraic eigenvalue and its trace.

H is the Hessian of the mean cross-entropy over a fixed image set with respect to every trainable
parameter, batch norm in eval mode with the trained statistics, in fp32. It is never formed: a
Hessian-vector product is a double backward (Pearlmutter 1994), the gradient's graph built once and kept.

  - top eigenvalue: Lanczos (scipy's eigsh, which='LA', ARPACK's implicitly restarted Lanczos) over a
    LinearOperator of Hessian-vector products, float64 vectors on scipy's side. `which='LA'` finds the
    largest algebraic eigenvalue; power iteration would find the largest in magnitude, which can be a
    negative one. Its residual ||Hv - lambda v|| (v of unit norm) says how far the pair is from exact.
  - trace: Hutchinson's estimator, the mean of z^T H z over Rademacher vectors z, with its standard error.

Under batch norm, a filter that feeds a batch norm can be scaled by any c > 0 without changing the function,
and the loss's curvature along that filter then scales as 1/c^2: a net's raw curvature depends on how large
its weights have grown (weight decay shrinks them, raising it). Both quantities are therefore also given for
D H D, D diagonal holding for each parameter entry the L2 norm of its filter (a conv's output filter, a
linear layer's row): the curvature per unit of relative change of each filter, free of that scale. Biases
and batch norm's scale and shift (tensors of dim <= 1) have D = 1: no batch norm makes the function
invariant to their scale, so their curvature is no artefact of it and is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

from experiments.errors import UserError

Batches = list[tuple[Tensor, Tensor]]
Progress = Callable[[], None]
LANCZOS_TOL = 1e-3  # ARPACK's stopping rule: the Ritz pair's residual within this share of |lambda|


@dataclass
class Hessian:
    """Hessian-vector products of a net's mean loss over a fixed image set, on flat vectors."""

    parameters: list[Tensor]
    gradients: list[tuple[float, tuple[Tensor, ...]]]  # (share of the images, gradient with its graph)
    scale: Tensor  # D: 1 for the raw Hessian, the filter norms for the normalised one
    progress: Progress

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def __call__(self, vector: Tensor) -> Tensor:
        """D H D `vector` (a flat tensor on the parameters' device)."""
        pieces = (vector * self.scale).split([p.numel() for p in self.parameters])
        pieces = [piece.view_as(p) for piece, p in zip(pieces, self.parameters, strict=True)]
        product = torch.zeros_like(vector)
        for share, gradient in self.gradients:
            parts = torch.autograd.grad(gradient, self.parameters, pieces, retain_graph=True)
            product += share * torch.cat([part.reshape(-1) for part in parts])
        self.progress()
        return product * self.scale


def hessian(net: nn.Module, batches: Batches, normalised: bool, progress: Progress) -> Hessian:
    """The Hessian of `net`'s mean cross-entropy over `batches` (net in eval mode, its trainable
    parameters), or D H D with `normalised`; the gradients' graphs are built here, once."""
    parameters = [p for p in net.parameters() if p.requires_grad]
    device = parameters[0].device
    total = sum(len(labels) for _, labels in batches)
    gradients = []
    for images, labels in batches:
        loss = F.cross_entropy(net(images.to(device, parameters[0].dtype)), labels.to(device))
        gradients.append((len(labels) / total, torch.autograd.grad(loss, parameters, create_graph=True)))
    scale = filter_norms(parameters) if normalised else torch.ones(sum(p.numel() for p in parameters))
    return Hessian(parameters, gradients, scale.to(device, parameters[0].dtype), progress)


def filter_norms(parameters: list[Tensor]) -> Tensor:
    """D's diagonal, flat: each entry of a tensor of dim >= 2 its filter's (first index's) L2 norm, each
    entry of a tensor of dim <= 1 one."""
    pieces = []
    for p in parameters:
        p = p.detach()
        if p.dim() <= 1:
            pieces.append(torch.ones(p.numel(), device=p.device, dtype=p.dtype))
        else:
            norms = p.flatten(1).norm(dim=1)
            pieces.append(norms[:, None].expand(p.shape[0], p[0].numel()).reshape(-1))
    return torch.cat(pieces)


def weight_norm(net: nn.Module) -> float:
    """The global L2 norm of the trainable weights of dim >= 2 (convs and linear layers): the scale that
    batch norm makes the function blind to."""
    squares = sum(
        p.detach().double().square().sum() for p in net.parameters() if p.requires_grad and p.dim() >= 2
    )
    return math.sqrt(float(squares))


def top_eigenvalue(h: Hessian, iterations: int, seed: int) -> tuple[float, float, int]:
    """(largest algebraic eigenvalue, its residual ||Hv - lambda v||, Hessian-vector products used) by
    Lanczos over `iterations` basis vectors (fewer where H is smaller), restarted up to `iterations` times
    until the Ritz pair's residual is within LANCZOS_TOL of |lambda| (or, failing that, 1e-2 or 1e-1)."""
    device, dtype = h.parameters[0].device, h.parameters[0].dtype
    products = 0

    def product(vector: np.ndarray) -> np.ndarray:
        nonlocal products
        products += 1
        flat = torch.from_numpy(np.asarray(vector, dtype=np.float64).reshape(-1))
        return h(flat.to(device, dtype)).double().cpu().numpy()

    operator = LinearOperator((h.size, h.size), matvec=product, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(h.size)
    basis = min(h.size, max(3, iterations))
    for tol in (LANCZOS_TOL, 1e-2, 1e-1):  # a looser stop rather than nothing: the residual says how loose
        try:
            values, vectors = eigsh(
                operator, k=1, which="LA", v0=start, ncv=basis, maxiter=iterations, tol=tol
            )
            break
        except ArpackNoConvergence as error:
            if len(error.eigenvalues):
                values, vectors = error.eigenvalues, error.eigenvectors
                break
    else:
        raise UserError(f"Lanczos found no eigenvalue in {iterations} restarts: raise --iterations")
    value, vector = float(values[-1]), vectors[:, -1] / np.linalg.norm(vectors[:, -1])
    residual = float(np.linalg.norm(product(vector) - value * vector))
    return value, residual, products


def trace(h: Hessian, samples: int, seed: int) -> tuple[float, float]:
    """(Hutchinson's estimate of the trace, its standard error) over `samples` Rademacher vectors."""
    generator = torch.Generator().manual_seed(seed)
    device, dtype = h.parameters[0].device, h.parameters[0].dtype
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (h.size,), generator=generator) * 2 - 1).to(device, dtype)
        values.append(float(torch.dot(z.double(), h(z).double())))
    error = float(np.std(values, ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return float(np.mean(values)), error


def hessian_products(size: int, iterations: int) -> int:
    """About how many Hessian-vector products `curvature_rows` makes: Lanczos converging within about one
    basis (a trained net's top eigenvalue stands apart; more where it does not), its residual's product, and
    the trace's samples, each for H and for D H D."""
    return 2 * (min(size, max(3, iterations)) + 3 + iterations)


def curvature_rows(
    net: nn.Module, batches: Batches, iterations: int, seed: int, progress: Progress
) -> list[dict[str, Any]]:
    """curvature.csv's rows for `net` (a working copy, in eval mode, fp32 on its device)."""
    images = sum(len(labels) for _, labels in batches)
    rows = []
    for suffix, normalised in (("", False), ("_normalised", True)):
        h = hessian(net, batches, normalised, progress)
        value, residual, products = top_eigenvalue(h, iterations, seed)
        estimate, error = trace(h, iterations, seed)
        rows.append(_row(f"top_eigenvalue{suffix}", value, residual, images, products))
        rows.append(_row(f"trace{suffix}", estimate, error, images, iterations))
        del h  # its graphs are the largest thing held
    rows.append(_row("weight_norm", weight_norm(net), "", images, ""))
    return rows


def _row(
    quantity: str, value: float, error: float | str, images: int, iterations: int | str
) -> dict[str, Any]:
    return {"quantity": quantity, "value": value, "error": error, "images": images, "iterations": iterations}
