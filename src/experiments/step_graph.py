"""A training step's forward, loss and backward captured once as a CUDA graph and replayed (`cuda_graph`).

A small CIFAR net on a fast GPU waits on the CPU: ResNet-56 runs a few hundred kernels a step and the GPU
finishes each sooner than Python, autograd and Lightning issue the next (docs/performance.md). Replaying
a graph issues the whole forward and backward, down to the writes into each `p.grad`, as one launch. The
optimiser's update stays outside the graph, so gradient clipping, the gradient-norm hook, the schedule
and checkpoints see an ordinary optimiser and ordinary gradients in `p.grad`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from experiments.errors import UserError

# Eager steps before the capture: cudnn.benchmark's autotuning, cuBLAS's workspace and any compilation
# must happen outside it. They run on the capture's stream, where cuBLAS keeps its handle.
WARMUP_STEPS = 3


class StepGraph:
    """Calls `forward(images, labels)`, whose first output is the loss, and backpropagates the loss into
    `params`' gradients (replacing, not adding to, the last step's): eagerly for the first steps, then as
    a replay of one captured graph. A batch of another shape (an epoch's short last batch), and a step the
    caller asks to be `eager` (hooks see nothing of a replay), run eagerly; on CPU tensors every step does.
    Returns `forward`'s outputs, detached."""

    def __init__(
        self, forward: Callable[..., tuple[torch.Tensor, ...]], params: Iterable[torch.nn.Parameter]
    ) -> None:
        self.forward = forward
        self.params = [p for p in params if p.requires_grad]
        self.eager_steps = self.replays = 0
        self.last_shape: torch.Size | None = None
        self.stream: torch.cuda.Stream | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        # set by the capture: the graph reads its inputs from the first two and writes the others
        self.images = self.labels = torch.empty(0)
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.grads: list[torch.Tensor | None] = []

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, eager: bool = False
    ) -> tuple[torch.Tensor, ...]:
        if not images.is_cuda:
            return self._eager(images, labels)
        # captured on a batch of the shape the steps before had: a full batch, not an epoch's short last
        if (
            not eager
            and self.graph is None
            and self.eager_steps >= WARMUP_STEPS
            and images.shape == self.last_shape
        ):
            self._capture(images, labels)
        fits = images.shape == self.images.shape and labels.shape == self.labels.shape
        if not eager and self.graph is not None and fits:
            return self._replay(images, labels)
        self.stream = self.stream or torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            outputs = self._eager(images, labels)
        torch.cuda.current_stream().wait_stream(self.stream)
        return outputs

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for p in self.params:
            p.grad = None  # backward assigns fresh gradients: no kernel to zero them, none to add to them
        # Autocast's cache would hand the capture casts made before it (the docs' advice for graphs); it is
        # off in the eager steps too, so that torch.compile sees the same state in both.
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            outputs = self.forward(images, labels)
            with torch.autocast(images.device.type, enabled=False):  # backward as Lightning runs it
                outputs[0].backward()
        finally:
            torch.set_autocast_cache_enabled(cache)
        return tuple(output.detach() for output in outputs)

    def _eager(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.eager_steps += 1
        self.last_shape = images.shape
        return self._forward_backward(images, labels)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a DataLoader's pin-memory thread may allocate meanwhile (as in torch.compile's
            # own captures)
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self.outputs = self._forward_backward(self.images, self.labels)
        except RuntimeError as error:
            raise UserError(
                f"cuda_graph: this training step cannot be captured as a CUDA graph "
                f"({str(error).splitlines()[0]}); run with cuda_graph=false"
            ) from error
        self.grads = [p.grad for p in self.params]
        self.graph = graph

    def _replay(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.images.copy_(images)
        self.labels.copy_(labels)
        for p, grad in zip(self.params, self.grads, strict=True):
            if p.grad is not grad:  # an eager step since (a short batch's, or anyone's) replaced it
                p.grad = grad
        self.graph.replay()
        self.replays += 1
        # the next replay overwrites the graph's outputs: callers get their own copies
        return tuple(output.clone() for output in self.outputs)
