"""The compute pass of the batched engine: every peer's parameters as one ``[N, P]`` tensor.

A wave is a handful of batched operations: gather the snapshots a wave merges and ``lerp``
them into their receivers' rows with the schedule's weights; one SGD step for all training
peers at once, with per-sample gradients of each peer's own loss from
``torch.func.vmap(grad(...))`` over ``functional_call`` (any model without buffers or
randomness); then copy the wave's snapshots into the pool. Evaluations run the stacked
models over the test set with ``vmap`` too. Nothing here loops over peers in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gossip.state import exchanged_tensors
from sim.engines.batched.schedule import Schedule
from sim.engines.batched.waves import Wave

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StackedPeers:
    """The parameters of all peers of a run, their shards, and the in-flight snapshots."""

    def __init__(
        self,
        module: nn.Module,
        init: torch.Tensor,
        parts: Sequence[np.ndarray],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        weight_decay: float,
        pool_size: int,
        device: torch.device,
    ) -> None:
        self.device = device
        self.module = module.to(device)
        self.specs = [(name, t.shape, t.numel()) for name, t in exchanged_tensors(self.module)]
        n = len(parts)
        self.W = init.to(device).reshape(1, -1).repeat(n, 1)
        self.pool = torch.empty(max(pool_size, 1), self.W.shape[1], device=device)
        self.x, self.y = x.to(device), y.to(device)
        self.weight_decay = weight_decay
        sizes = [len(p) for p in parts]
        width = max([min(batch_size, s) for s in sizes] + [1])
        # Peers whose whole shard is one batch: their rows, padded, with a mask of real rows.
        self.full = torch.tensor([0 < s <= batch_size for s in sizes], device=device)
        idx = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width)
        for i, p in enumerate(parts):
            if 0 < len(p) <= batch_size:
                idx[i, : len(p)] = torch.as_tensor(p)
                mask[i, : len(p)] = 1.0
        self.rows, self.mask = idx.to(device), mask.to(device)
        self._grad = vmap(grad(self._loss))

    def _params(self, flats: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``[B, P]`` as a dict of ``[B, *shape]`` views, one per tensor. (Slicing a
        flat vector *inside* the vmapped function instead made the backward pass 10x
        slower: every slice's gradient is scattered into a full-size zero vector.)"""
        out, o = {}, 0
        b = flats.shape[0]
        for name, shape, numel in self.specs:
            out[name] = flats[:, o : o + numel].view(b, *shape)
            o += numel
        return out

    def _flat(self, grads: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        return torch.cat([grads[name].reshape(b, -1) for name, _, _ in self.specs], dim=1)

    def _loss(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        """One peer's mean cross-entropy over its real rows (``m`` marks them)."""
        logits = functional_call(self.module, params, (x,))
        ce = nn.functional.cross_entropy(logits, y, reduction="none")
        return (ce * m).sum() / m.sum()

    def logits(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, classes]``: each of the B models on the same inputs."""
        out: torch.Tensor = vmap(lambda p: functional_call(self.module, p, (x,)))(
            self._params(flats)
        )
        return out

    # ------------------------------------------------------------------ one wave

    def run_wave(self, wave: Wave, schedule: Schedule) -> None:
        dev = self.device
        if wave.merge_peer:
            dst = torch.tensor(wave.merge_peer, device=dev)
            slot = torch.tensor(wave.merge_slot, device=dev)
            a = torch.tensor(wave.merge_weight, dtype=self.W.dtype, device=dev).unsqueeze(1)
            rows = self.W.index_select(0, dst)
            rows.lerp_(self.pool.index_select(0, slot), a)
            self.W.index_copy_(0, dst, rows)
        if wave.train_peer:
            self._train(wave, schedule)
        if wave.send_peer:
            src = torch.tensor(wave.send_peer, device=dev)
            slot = torch.tensor(wave.send_slot, device=dev)
            self.pool.index_copy_(0, slot, self.W.index_select(0, src))

    def _train(self, wave: Wave, schedule: Schedule) -> None:
        steps = schedule.steps
        full = [(p, op) for p, op in zip(wave.train_peer, wave.train_op, strict=True)
                if op not in schedule.rows]  # fmt: skip
        mini = [(p, op) for p, op in zip(wave.train_peer, wave.train_op, strict=True)
                if op in schedule.rows]  # fmt: skip
        for group, minibatch in ((full, False), (mini, True)):
            if not group:
                continue
            peers = torch.tensor([p for p, _ in group], device=self.device)
            lrs = torch.tensor(
                [[schedule.lrs[schedule.arg[op] + s] for s in range(steps)] for _, op in group],
                dtype=self.W.dtype, device=self.device,
            )  # fmt: skip
            w = self.W.index_select(0, peers)
            for s in range(steps):
                if minibatch:
                    rows = torch.stack([schedule.rows[op][s] for _, op in group]).to(self.device)
                    mask = torch.ones(rows.shape, device=self.device)
                else:
                    rows, mask = self.rows.index_select(0, peers), self.mask.index_select(0, peers)
                g = self._flat(
                    self._grad(self._params(w), self.x[rows], self.y[rows], mask), len(w)
                )
                if self.weight_decay:
                    g = g.add(w, alpha=self.weight_decay)
                w = w - lrs[:, s : s + 1] * g
            self.W.index_copy_(0, peers, w)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(
        self, peers: Sequence[int], x: torch.Tensor, y: torch.Tensor, chunk: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, mean loss) of each listed peer's model on ``(x, y)``."""
        x, y = x.to(self.device), y.to(self.device)
        n = len(y)
        if n == 0 or not peers:
            return np.full(len(peers), np.nan), np.full(len(peers), np.nan)
        chunk = chunk or max(1, (1 << 22) // max(n, 1))
        accs, losses = [], []
        idx = torch.as_tensor(list(peers), device=self.device)
        for start in range(0, len(idx), chunk):
            flats = self.W.index_select(0, idx[start : start + chunk])
            logits = self.logits(flats, x)
            b = logits.shape[0]
            ce = nn.functional.cross_entropy(
                logits.reshape(b * n, -1), y.repeat(b), reduction="none"
            ).reshape(b, n)
            losses.append((ce.double().sum(1) / n).cpu())
            accs.append(((logits.argmax(-1) == y).sum(1).double() / n).cpu())
        return torch.cat(accs).numpy(), torch.cat(losses).numpy()

    @torch.no_grad()
    def average(self, peers: Sequence[int] | None = None) -> torch.Tensor:
        """The mean of the listed peers' models (all when None), summed in float64."""
        rows = self.W if peers is None else self.W.index_select(
            0, torch.as_tensor(list(peers), device=self.device)
        )  # fmt: skip
        total = torch.zeros(rows.shape[1], dtype=torch.float64, device=self.device)
        for start in range(0, rows.shape[0], 4096):
            total += rows[start : start + 4096].double().sum(0)
        return total / max(rows.shape[0], 1)

    @torch.no_grad()
    def consensus(self, peers: Sequence[int] | None = None) -> float:
        """``mean_i ||w_i - w̄||²`` in float64 (as :func:`sim.observer.consensus_distance`)."""
        rows = self.W if peers is None else self.W.index_select(
            0, torch.as_tensor(list(peers), device=self.device)
        )  # fmt: skip
        if rows.shape[0] == 0:
            return float("nan")
        mean = self.average(peers)
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, rows.shape[0], 4096):
            diff = rows[start : start + 4096].double() - mean
            sq += (diff * diff).sum()
        return float(sq) / rows.shape[0]

    @torch.no_grad()
    def average_model_stats(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        mean = self.average().to(self.W.dtype).unsqueeze(0)
        saved = self.W
        self.W = mean
        try:
            acc, loss = self.evaluate([0], x, y)
        finally:
            self.W = saved
        return float(acc[0]), float(loss[0])

    def nonfinite_peers(self) -> list[int]:
        bad = ~torch.isfinite(self.W).all(dim=1)
        return bad.nonzero().flatten().tolist()
