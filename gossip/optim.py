"""SGD on the flat parameter vector: the whole update is one or two vector operations.

``torch.optim.SGD`` loops over parameters in Python on every step; for the small models of
gossip learning simulations (a thousand peers, one step per received model) that loop costs
more than the arithmetic. Here every parameter's ``.grad`` is made a view into one flat
gradient buffer, laid out like :class:`~gossip.state.ModelState`'s flat parameters, so that
zeroing the gradients and applying the update (with momentum and weight decay) are single
vector operations. Results equal ``torch.optim.SGD`` up to float rounding (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from gossip.state import ModelState, exchanged_tensors


class FlatSGD:
    """SGD with optional momentum and L2 weight decay over a :class:`ModelState`."""

    def __init__(
        self,
        module: nn.Module,
        state: ModelState,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        grad: torch.Tensor | None = None,
    ) -> None:
        """``grad``: a gradient buffer to use instead of a fresh one, shaped like the flat
        parameters. Many learners may share one when their steps never interleave (the
        simulator's peers step one at a time in one thread): a step writes the whole
        gradient before it reads it (zeroed, or overwritten by the fast path), so nothing
        carries from one learner's step to another's, and each peer saves a model size."""
        self.state = state
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        if grad is not None and (
            grad.shape != state.flat.shape
            or grad.dtype != state.flat.dtype
            or grad.device != state.flat.device
        ):
            raise ValueError("a shared gradient buffer must match the flat parameters")
        self.grad = torch.zeros_like(state.flat) if grad is None else grad
        self._momentum_buf: torch.Tensor | None = None
        offsets = state.schema.offsets
        trainable = torch.zeros(state.flat.numel(), dtype=torch.bool, device=state.flat.device)
        for i, (_, t) in enumerate(exchanged_tensors(module)):
            if isinstance(t, nn.Parameter) and t.requires_grad:
                # Autograd accumulates into an existing .grad in place, so these stay views.
                t.grad = self.grad[offsets[i] : offsets[i + 1]].view(t.shape)
                trainable[offsets[i] : offsets[i + 1]] = True
        # Floating buffers live in the flat vector too but must not be decayed.
        self._decay_mask = None if bool(trainable.all()) else trainable.to(state.flat.dtype)

    def reset_state(self) -> None:
        """Drop the momentum buffer (its values may come from a model that was rolled back)."""
        self._momentum_buf = None

    @property
    def trainable_mask(self) -> torch.Tensor | None:
        """1 where the flat vector holds a trainable parameter, 0 at buffers (None: all 1)."""
        return self._decay_mask

    def scale_state(self, factor: float) -> None:
        """Scale the momentum buffer (after a merge, see :meth:`Learner.merged`)."""
        if self._momentum_buf is not None:
            self._momentum_buf.mul_(factor)

    def zero_grad(self) -> None:
        self.grad.zero_()

    def step(self) -> None:
        # No torch.no_grad() needed: ``flat`` itself does not require grad, and entering
        # the context costs more than the update for small models.
        flat, g = self.state.flat, self.grad
        if self.weight_decay:
            decay = flat if self._decay_mask is None else flat * self._decay_mask
            g = g.add(decay, alpha=self.weight_decay)
        if self.momentum:
            if self._momentum_buf is None:
                self._momentum_buf = g.clone()
            else:
                self._momentum_buf.mul_(self.momentum).add_(g)
            g = self._momentum_buf
        flat.add_(g, alpha=-self.lr)
