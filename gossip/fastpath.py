"""A hand-written training step for Flatten/Linear/ReLU stacks (``logreg``, ``mlp``).

Why: a simulated peer takes one small SGD step per received model. For a 64-200-200-10 MLP
on 32 samples the arithmetic takes tens of microseconds, but autograd's graph building and
per-operation dispatch cost several times that. Here forward and backward are written out
with ``addmm``/``mm`` and the gradients land directly in the flat gradient buffer of
:class:`~gossip.optim.FlatSGD` (``out=`` views, no allocation per layer), without autograd.
The gradients equal autograd's up to float rounding (tested); any other architecture uses
autograd as usual.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearStackStep:
    """Cross-entropy loss and gradients of ``nn.Sequential(Flatten?, (Linear, ReLU?)*)``."""

    def __init__(self, layers: list[tuple[nn.Linear, bool]]) -> None:
        self.layers = layers  # (linear, followed by ReLU)
        self._ones: torch.Tensor | None = None

    def _minus_ones(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """A cached ``(batch, 1)`` tensor of -1 (subtracts the one-hot targets)."""
        if self._ones is None or self._ones.shape[0] != batch or self._ones.device != like.device:
            self._ones = torch.full((batch, 1), -1.0, dtype=like.dtype, device=like.device)
        return self._ones

    @classmethod
    def build(cls, model: nn.Module) -> LinearStackStep | None:
        """The fast step for ``model``, or None if it is not a plain Linear/ReLU stack."""
        if not isinstance(model, nn.Sequential):
            return None
        modules = list(model)
        if modules and isinstance(modules[0], nn.Flatten) and modules[0].start_dim == 1:
            modules = modules[1:]
        layers: list[tuple[nn.Linear, bool]] = []
        for m in modules:
            if isinstance(m, nn.Linear) and m.bias is not None:
                layers.append((m, False))
            elif isinstance(m, nn.ReLU) and layers and not layers[-1][1]:
                layers[-1] = (layers[-1][0], True)
            else:
                return None
        if not layers or layers[-1][1]:
            return None
        for linear, _ in layers:
            if linear.weight.grad is None or linear.bias.grad is None:
                return None  # gradients must already be views of a flat buffer
        return cls(layers)

    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on ``(x, y)``; writes (overwrites) every parameter's ``.grad``."""
        h = x.reshape(x.shape[0], -1)
        inputs, pre = [], []
        for linear, relu in self.layers:
            inputs.append(h)
            z = torch.addmm(linear.bias, h, linear.weight.t())
            pre.append(z if relu else None)
            h = torch.relu(z) if relu else z
        log_p = torch.log_softmax(h, dim=1)
        loss = torch.nn.functional.nll_loss(log_p, y)
        # d loss / d logits = (softmax - onehot) / batch
        batch = y.shape[0]
        dz = log_p.exp_()
        dz.scatter_add_(1, y.unsqueeze(1), self._minus_ones(batch, dz))
        dz.div_(batch)
        for i in range(len(self.layers) - 1, -1, -1):
            linear, _ = self.layers[i]
            assert linear.weight.grad is not None and linear.bias.grad is not None
            torch.mm(dz.t(), inputs[i], out=linear.weight.grad)
            torch.sum(dz, dim=0, out=linear.bias.grad)
            if i > 0:
                dh = torch.mm(dz, linear.weight)
                z_prev = pre[i - 1]
                dz = dh if z_prev is None else dh.mul_(z_prev > 0)
        return loss
