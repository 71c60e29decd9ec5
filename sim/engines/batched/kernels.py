"""Hand-written batched kernels for dense stacks (``Flatten``, ``Linear``, ``ReLU``).

``logreg`` and ``mlp`` are such stacks. For them one SGD step of B peers is a few ``bmm``
calls over ``[B, rows, features]``, forward and backward written out, instead of
``torch.func.vmap(grad(functional_call))``. Why our own: measured in
``benchmarks/bench_engine.py`` the vmapped autograd graph costs 2–3x the arithmetic for these
small layers (per-op dispatch through the functorch layers, and a backward that materialises
per-sample intermediates), and its first call imports ``torch._dynamo`` (1.5 s). Models that
are not dense stacks keep the ``vmap`` path, which handles any module.

The gradient is the one ``vmap(grad(...))`` computes: the mean cross-entropy over a peer's
real rows (a mask marks padding), so both paths agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseStack:
    """The layers of a ``Flatten``/``Linear``/``ReLU`` sequence over flat parameter rows.

    ``layers``: per ``Linear``, (offset of its weight in the flat vector, out, in, whether a
    bias follows the weight, whether a ReLU follows the layer).
    """

    def __init__(self, layers: list[tuple[int, int, int, bool, bool]], numel: int) -> None:
        self.layers = layers
        self.numel = numel

    @classmethod
    def of(cls, module: nn.Module, names: list[str]) -> DenseStack | None:
        """The stack of ``module`` whose flat layout is ``names`` (exchanged tensor order),
        or None when it is not a dense stack."""
        if not isinstance(module, nn.Sequential):
            return None
        children = list(module.children())
        layers: list[tuple[int, int, int, bool, bool]] = []
        expected: list[str] = []
        offset = 0
        seen_linear = False
        for index, child in enumerate(children):
            if isinstance(child, nn.Flatten):
                if seen_linear:
                    return None
            elif isinstance(child, nn.Linear):
                seen_linear = True
                relu = index + 1 < len(children) and isinstance(children[index + 1], nn.ReLU)
                bias = child.bias is not None
                layers.append((offset, child.out_features, child.in_features, bias, relu))
                offset += child.weight.numel() + (child.out_features if bias else 0)
                expected.append(f"{index}.weight")
                if bias:
                    expected.append(f"{index}.bias")
            elif isinstance(child, nn.ReLU):
                if index == 0 or not isinstance(children[index - 1], nn.Linear):
                    return None
            else:
                return None
        if not layers or expected != names:
            return None
        return cls(layers, offset)

    def _views(
        self, w: torch.Tensor, layer: tuple[int, int, int, bool, bool]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        offset, out, inp, bias, _ = layer
        b = w.shape[0]
        weight = w[:, offset : offset + out * inp].view(b, out, inp)
        vec = w[:, offset + out * inp : offset + out * inp + out] if bias else None
        return weight, vec

    def forward(self, w: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of B models: ``x`` is ``[B, T, in]`` (each model its own rows) or
        ``[T, in]`` (the same rows for all). Returns every layer's input and the logits."""
        h = x
        acts = [h]
        for layer in self.layers:
            weight, vec = self._views(w, layer)
            if h.dim() == 2:
                z = torch.matmul(h, weight.transpose(1, 2))
            else:
                z = torch.bmm(h, weight.transpose(1, 2))
            if vec is not None:
                z = z + vec.unsqueeze(1)
            if layer[4]:
                z = torch.relu(z)
            h = z
            acts.append(h)
        return acts

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, classes]`` for flattened inputs ``x`` (``[T, in]`` or ``[B, T, in]``)."""
        return self.forward(w, x)[-1]

    @property
    def width(self) -> int:
        """The widest layer output (what one row of activations costs)."""
        return max(out for _, out, _, _, _ in self.layers)

    def grad(
        self,
        w: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        m: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, P]``: each model's gradient of its mean cross-entropy over its real rows.

        ``x``: ``[B, T, in]`` flattened inputs, ``y``: ``[B, T]`` labels, ``m``: ``[B, T]``
        1.0 for real rows, 0.0 for padding. ``out``: a ``[B, P]`` buffer to write into."""
        acts = self.forward(w, x)
        logits = acts[-1]
        b = w.shape[0]
        # d(mean CE)/d(logits) = (softmax - onehot) * m / sum(m), per model.
        # softmax written out: torch.softmax over a last dimension of 10 is 6x slower on CPU.
        g = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        g.div_(g.sum(dim=-1, keepdim=True))
        g.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(g[..., :1], -1.0))
        scale = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        g = g * scale.unsqueeze(-1)
        if out is None:
            out = torch.empty(b, self.numel, dtype=w.dtype, device=w.device)
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            offset, o, i, bias, _ = layer
            h_in = acts[index]
            out[:, offset : offset + o * i].view(b, o, i).copy_(torch.bmm(g.transpose(1, 2), h_in))
            if bias:
                out[:, offset + o * i : offset + o * i + o].copy_(g.sum(dim=1))
            if index > 0:
                weight, _ = self._views(w, layer)
                g = torch.bmm(g, weight)
                if self.layers[index - 1][4]:
                    g = g * (h_in > 0)
        return out
