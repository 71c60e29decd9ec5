"""The compute pass of the batched engine: every peer's parameters as one ``[N, P]`` tensor.

A wave is a handful of batched operations: gather the snapshots a wave merges and ``lerp``
them into their receivers' rows with the schedule's weights; one SGD step for all training
peers at once, with per-sample gradients of each peer's own loss from
``torch.func.vmap(grad(...))`` over ``functional_call`` (any model without buffers or
randomness); then copy the wave's snapshots into the pool. Evaluations run the stacked
models over the test set with ``vmap`` too. Nothing here loops over peers in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gossip.state import exchanged_tensors
from sim.engines.batched.kernels import DenseStack
from sim.engines.batched.schedule import Schedule
from sim.engines.batched.waves import Wave

# The largest copy of the training data laid out by peer (see StackedPeers.x_peer); above it
# (an mlp's data at 1,000,000 peers: 4 GB) a wave gathers sample by sample from the data.
PEER_LAYOUT_BYTES = 1 << 30

# The rows of a wave's chunk hold about this many parameters (1 MiB of float32: a chunk's
# buffers, its data and activations stay near the 1 MiB L2 cache of a core). Measured at
# 10,000 peers, waves of logreg ran 20% faster than with 8 MiB chunks, mlp 64-100-10 35%.
CHUNK_FLOATS = 1 << 18

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LearningRates = Callable[[np.ndarray], np.ndarray]  # TRAIN events -> [k, steps] rates


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
        self.pool = torch.empty(0)
        self.reserve_pool(pool_size)
        self.x, self.y = x.to(device), y.to(device)
        self.weight_decay = weight_decay
        sizes = [len(p) for p in parts]
        width = max([min(batch_size, s) for s in sizes] + [1])
        # Peers whose whole shard is one batch: their rows, padded, with a mask of real rows.
        self.full = torch.tensor([0 < s <= batch_size for s in sizes], device=device)
        # (Scattered in one numpy step: a loop over 1,000,000 shards took 10 s.)
        count = np.array(sizes, dtype=np.int64)
        whole = (count > 0) & (count <= batch_size)
        idx = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.float32)
        if whole.any():
            peers = np.nonzero(whole)[0]
            rows = np.concatenate([np.asarray(parts[i], dtype=np.int64) for i in peers.tolist()])
            owner = np.repeat(peers, count[peers])
            column = np.arange(len(rows)) - np.repeat(np.cumsum(count[peers]) - count[peers],
                                                      count[peers])  # fmt: skip
            idx[owner, column] = rows
            mask[owner, column] = 1.0
        self.rows, self.mask = torch.from_numpy(idx).to(device), torch.from_numpy(mask).to(device)
        # Every peer's padded shard laid out as one row ([N, width, *sample]) when that copy
        # is small enough: a wave then gathers one row of width samples per peer instead of
        # width rows of one sample (2.7x faster for 16 samples of 64 features).
        self.x_peer = self.y_peer = None
        if self.x.element_size() * self.x[:1].numel() * n * width <= PEER_LAYOUT_BYTES:
            flat = self.rows.reshape(-1)
            self.x_peer = self.x.index_select(0, flat).view(n, width, *self.x.shape[1:])
            self.y_peer = self.y.index_select(0, flat).view(n, width)
        self.minibatch = np.array([0 < batch_size < s for s in sizes], dtype=bool)
        self._batch_rows: torch.Tensor | None = None  # the schedule's minibatches, moved here
        self.any_minibatch = bool(self.minibatch.any())
        # Dense stacks (logreg, mlp) get the hand-written kernel; anything else vmap(grad).
        self.dense = DenseStack.of(self.module, [name for name, _, _ in self.specs])
        self._grad = vmap(grad(self._loss))
        # A wave runs in chunks of rows through two preallocated [chunk, P] buffers (about
        # 1 MiB each, see CHUNK_FLOATS): a fresh [B, P] temporary per operation costs page
        # faults on every touch once it is large (an mlp wave of 2,000 peers: 450 MB per
        # temporary), and a chunk that fits the cache runs its elementwise steps faster.
        numel = self.W.shape[1]
        self.chunk = max(16, CHUNK_FLOATS // max(numel, 1))
        self.wbuf = torch.empty(self.chunk, numel, device=device)
        self.on_cpu = device.type == "cpu"  # row scatters through numpy (see _scatter)
        self.gbuf = torch.empty(self.chunk, numel, device=device)

    def reserve_pool(self, size: int) -> None:
        """The pool of in-flight snapshots: ``size`` rows (the plan's ``pool_size``)."""
        self.pool = torch.empty(max(size, 1), self.W.shape[1], device=self.device)

    def gradient(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        """``[B, P]``: each row's gradient of its mean loss on its rows ``x`` ``[B, T, ...]``."""
        if self.dense is not None:
            out = self.gbuf[: w.shape[0]] if w.shape[0] <= self.chunk else None
            return self.dense.grad(w, x.reshape(x.shape[0], x.shape[1], -1), y, m, out=out)
        return self._flat(self._grad(self._params(w), x, y, m), len(w))

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
        if self.dense is not None:
            return self.dense.logits(flats, x.reshape(x.shape[0], -1))
        out: torch.Tensor = vmap(lambda p: functional_call(self.module, p, (x,)))(
            self._params(flats)
        )
        return out

    # ------------------------------------------------------------------ one wave

    def _chunks(self, count: int) -> list[slice]:
        return [slice(i, min(i + self.chunk, count)) for i in range(0, count, self.chunk)]

    def run_wave(self, wave: Wave, schedule: Schedule, lrs: LearningRates) -> None:
        """One wave, in chunks of its rows: gather the rows once, ``lerp`` the merging ones
        toward their snapshots, step the training ones, write the rows back and copy the
        snapshots into the pool. The phases are contiguous runs of the rows (see
        :class:`.waves.Wave`), so each is a slice of the chunk, not another gather."""
        dev = self.device
        k_all = len(wave.peer)
        if k_all == 0:
            return
        peer_all = torch.from_numpy(wave.peer).to(dev)
        if wave.merge_end:
            slot_m = torch.from_numpy(wave.merge_slot).to(dev)
            a_m = torch.from_numpy(wave.merge_weight).to(dev, self.W.dtype).unsqueeze(1)
        t0, t1 = wave.train_start, wave.train_end
        if t1 > t0:
            rates_all = torch.from_numpy(lrs(wave.train_event)).to(dev, self.W.dtype)
        sends = len(wave.send_pos)
        if sends:
            bounds = np.searchsorted(wave.send_pos, np.arange(0, k_all + self.chunk, self.chunk))
            send_slot = torch.from_numpy(wave.send_slot).to(dev)
            send_pos = torch.from_numpy(wave.send_pos).to(dev)
        for index, c in enumerate(self._chunks(k_all)):
            lo, hi = c.start, c.stop
            peers = peer_all[lo:hi]
            rows = self.wbuf[: hi - lo]
            torch.index_select(self.W, 0, peers, out=rows)
            a, b = lo, min(hi, wave.merge_end)
            if b > a:
                theirs = self.gbuf[: b - a]
                torch.index_select(self.pool, 0, slot_m[a:b], out=theirs)
                rows[: b - a].lerp_(theirs, a_m[a:b])
            a, b = max(lo, t0), min(hi, t1)
            if b > a:
                self._train(rows[a - lo : b - lo], peers[a - lo : b - lo], wave.peer[a:b],
                            wave.train_event[a - t0 : b - t0], rates_all[a - t0 : b - t0],
                            schedule)  # fmt: skip
            self._scatter(self.W, peers, wave.peer[lo:hi], rows)
            if sends:
                s0, s1 = int(bounds[index]), int(bounds[index + 1])
                if s1 > s0:
                    pos = send_pos[s0:s1] - lo
                    slots, slots_np = send_slot[s0:s1], wave.send_slot[s0:s1]
                    if s1 - s0 == hi - lo:  # every row of the chunk sends: no gather
                        self._scatter(self.pool, slots, slots_np, rows)
                    elif self.on_cpu:
                        self.pool.numpy()[slots_np] = rows.numpy()[wave.send_pos[s0:s1] - lo]
                    else:
                        self.pool.index_copy_(0, slots, rows.index_select(0, pos))

    def _scatter(
        self, target: torch.Tensor, index: torch.Tensor, index_np: np.ndarray, rows: torch.Tensor
    ) -> None:
        """``target[index] = rows`` (``target`` is ``W`` or the pool). On the CPU through
        numpy views: numpy's row assignment runs at memory speed, ``index_copy_`` copies
        element by element (measured: 1.7-3.2x slower for rows of 2.6 to 30 KB, and as slow
        as a ``_foreach_copy_`` of every row for 216 KB rows)."""
        if self.on_cpu:
            target.numpy()[index_np] = rows.numpy()
        else:
            target.index_copy_(0, index, rows)

    def _train(
        self,
        w: torch.Tensor,
        peers: torch.Tensor,
        peer_ids: np.ndarray,
        events: np.ndarray,
        rates: torch.Tensor,
        schedule: Schedule,
    ) -> None:
        """``schedule.steps`` SGD steps, in place, on the rows ``w`` of ``peers``: a peer
        whose shard is one batch takes its padded rows and mask, one that draws minibatches
        the rows the schedule drew for that TRAIN event."""
        mini = self.minibatch[peer_ids] if self.any_minibatch else None
        batch = pick = None
        if mini is not None and mini.any():
            assert schedule.batch_rows is not None and schedule.batch_at is not None
            pick = torch.from_numpy(np.nonzero(mini)[0]).to(self.device)
            if self._batch_rows is None:  # once per run: every minibatch, on the device
                self._batch_rows = schedule.batch_rows.to(self.device)
            at = torch.from_numpy(schedule.batch_at[events[mini]]).to(self.device)
            batch = self._batch_rows.index_select(0, at)
        # index_select, not x[rows]: advanced indexing is 7x slower on CPU here.
        mask = self.mask.index_select(0, peers)
        if self.x_peer is not None and self.y_peer is not None:
            xs = self.x_peer.index_select(0, peers)
            ys = self.y_peer.index_select(0, peers)
        else:
            flat = self.rows.index_select(0, peers).reshape(-1)
            xs = self.x.index_select(0, flat).view(len(peers), -1, *self.x.shape[1:])
            ys = self.y.index_select(0, flat).view(len(peers), -1)
        if pick is not None:
            mask.index_fill_(0, pick, 1.0)
        for s in range(schedule.steps):
            if batch is not None and pick is not None:
                # A minibatch has exactly batch_size rows, the padded width here.
                drawn = batch[:, s].reshape(-1)
                xs.index_copy_(0, pick, self.x.index_select(0, drawn).view(-1, *xs.shape[1:]))
                ys.index_copy_(0, pick, self.y.index_select(0, drawn).view(-1, ys.shape[1]))
            g = self.gradient(w, xs, ys, mask)
            if self.weight_decay:
                g.add_(w, alpha=self.weight_decay)
            w.addcmul_(rates[:, s : s + 1], g, value=-1.0)

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
        # Rows per chunk so that the widest activation ([chunk, n, width]) stays ~16 MB.
        width = self.dense.width if self.dense is not None else 16
        chunk = chunk or max(1, (1 << 22) // max(n * width, 1))
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

    def _float64_chunks(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        """``rows`` in chunks promoted to float64 in one reused buffer (a fresh float64 copy
        per chunk page-faulted on every touch; ``sum(dtype=float64)`` and a mixed-dtype
        ``sub`` were 2-8x slower than a plain conversion copy)."""
        step = self.chunk
        buf = torch.empty(min(step, rows.shape[0]), rows.shape[1], dtype=torch.float64,
                          device=self.device)  # fmt: skip
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            out = buf[: part.shape[0]]
            out.copy_(part)
            yield out

    def _rows(self, peers: Sequence[int] | None) -> torch.Tensor:
        if peers is None:
            return self.W
        return self.W.index_select(0, torch.as_tensor(list(peers), device=self.device))

    @torch.no_grad()
    def average(self, peers: Sequence[int] | None = None) -> torch.Tensor:
        """The mean of the listed peers' models (all when None), summed in float64."""
        rows = self._rows(peers)
        total = torch.zeros(rows.shape[1], dtype=torch.float64, device=self.device)
        ones = torch.ones(min(self.chunk, rows.shape[0]), dtype=torch.float64, device=self.device)
        for part in self._float64_chunks(rows):
            # A matrix-vector product sums the columns at BLAS speed (a column reduction
            # over a [chunk, P] float64 tensor was 1.5x slower).
            total.addmv_(part.t(), ones[: part.shape[0]])
        return total / max(rows.shape[0], 1)

    @torch.no_grad()
    def consensus(self, peers: Sequence[int] | None = None) -> float:
        """``mean_i ||w_i - w̄||²`` in float64 (as :func:`sim.observer.consensus_distance`)."""
        rows = self._rows(peers)
        if rows.shape[0] == 0:
            return float("nan")
        mean = self.average(peers)
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for part in self._float64_chunks(rows):
            flat = part.sub_(mean).view(-1)
            sq += torch.dot(flat, flat)
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

    @torch.no_grad()
    def nonfinite_peers(self) -> list[int]:
        """The peers with a non-finite parameter. A row's sum is finite when all its entries
        are (one streaming pass instead of a boolean [N, P]); rows whose sum is not are
        checked entry by entry (a sum can overflow although every entry is finite)."""
        suspect = (~torch.isfinite(self.W.sum(dim=1))).nonzero().flatten()
        if len(suspect) == 0:
            return []
        rows = self.W.index_select(0, suspect)
        return suspect[~torch.isfinite(rows).all(dim=1)].tolist()
