"""The learner: a model with its age, an optimizer and a peer's local data.

``train`` runs local SGD (or Adam) steps on minibatches drawn without replacement from the
local data (a fresh seeded permutation per epoch) and adds the number of samples seen to the
model's age. ``evaluate`` returns loss and accuracy on any dataset.

The local data is a view into tensors that live on the training device: a peer holds its
shard as an index tensor into the dataset's tensors (loaded once), so a thousand simulated
peers share one copy of the data and nothing is re-read from disk per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gossip.errors import ConfigError
from gossip.fastpath import LinearStackStep
from gossip.optim import FlatSGD
from gossip.schedule import LRSchedule
from gossip.state import ModelState

OPTIMIZERS = ("sgd", "adam")
MOMENTUM_MODES = ("local", "quasi-global")


@dataclass(frozen=True)
class LearnerConfig:
    """How a peer trains locally.

    optimizer: ``sgd`` (default, plain SGD as in Gossip Learning) or ``adam``.
    lr: base learning rate. lr_schedule: how the rate falls with the model's age
    (:mod:`gossip.schedule`; keyed on the age, so it carries across merges).
    momentum: SGD momentum (0 keeps SGD stateless, cheap per peer); after a merge the
    buffer is merged like the model with an unknown (zero) remote velocity, i.e. scaled by
    the local model's weight (:meth:`Learner.merged`). weight_decay: L2 penalty, part of the
    gradient, so it follows the schedule too. batch_size: samples per local step.
    device: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
    fast_path: train Linear/ReLU stacks (logreg, mlp) with SGD through the hand-written step
    of :mod:`gossip.fastpath` instead of autograd (same gradients, several times faster).
    momentum_mode: ``local`` (heavy ball over the local gradients, as above) or
    ``quasi-global`` (Lin, Karimireddy, Stich, Jaggi, "Quasi-global momentum", ICML 2021:
    the buffer follows the model's whole motion from one training round to the next,
    merges included, so that on skewed shards it points where the peers go together rather
    than where the local shard pulls; SGD only, two model sizes more per peer).
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    lr_schedule: str = "constant"
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    device: str = "auto"
    fast_path: bool = True
    momentum_mode: str = "local"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < float("inf"):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        LRSchedule.parse(self.lr_schedule)
        if self.momentum_mode not in MOMENTUM_MODES:
            raise ConfigError(
                f"unknown --momentum-mode {self.momentum_mode!r}; choose one of: "
                f"{', '.join(MOMENTUM_MODES)}"
            )
        if self.momentum_mode == "quasi-global" and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError(
                "--momentum-mode quasi-global needs --optimizer sgd and a --momentum above 0 "
                f"(got {self.optimizer}, momentum {self.momentum:g})"
            )


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks cuda when available; asking for cuda without one is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} requested but no CUDA GPU is available; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class LocalData:
    """A peer's training data: rows ``indices`` of the shared tensors ``x`` and ``y``.

    ``indices=None`` means all rows. All three live on the training device.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y) if self.indices is None else len(self.indices)

    def to(self, device: torch.device) -> LocalData:
        idx = None if self.indices is None else self.indices.to(device)
        return LocalData(self.x.to(device), self.y.to(device), idx)


@dataclass(frozen=True)
class TrainStats:
    steps: int
    samples: int
    loss: float  # mean training loss over the steps (nan when no step ran)


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    samples: int


class Learner:
    """A peer's model (bound to a :class:`ModelState` with age), optimizer and data."""

    def __init__(
        self,
        model: nn.Module,
        data: LocalData,
        config: LearnerConfig = LearnerConfig(),
        *,
        seed: int = 0,
        age: int = 0,
        grad_buffer: torch.Tensor | None = None,
    ) -> None:
        """``grad_buffer``: a gradient buffer shared with other learners whose steps never
        interleave with this one's (see :class:`~gossip.optim.FlatSGD`); SGD only."""
        self.config = config
        self._grad_buffer = grad_buffer
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.state = ModelState.bind(self.model, age=age)
        self.data = data.to(self.device)
        self._n = len(self.data)  # fixed; len() of a tensor is a Python call per use
        self.schedule = LRSchedule.parse(config.lr_schedule)
        self.optimizer = self._make_optimizer()
        self._fast = (
            LinearStackStep.build(self.model)
            if config.fast_path and isinstance(self.optimizer, FlatSGD)
            else None
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.model.train()  # once: walking the module tree every step is costly
        # Batch order comes from a CPU generator so that it is identical on every device.
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._prox: tuple[torch.Tensor, float] | None = None
        # Quasi-global momentum: the buffer, the model at the start of the last training
        # round and the sum of the rates that round's steps took (see _quasi_global_update).
        self._qg_momentum: torch.Tensor | None = None
        self._qg_start: torch.Tensor | None = None
        self._qg_lr_sum = 0.0

    def set_proximal_center(self, center: torch.Tensor | None, mu: float = 0.0) -> None:
        """FedProx (Li et al. 2020): add ``mu/2 ||w - center||^2`` to the local loss, i.e.
        ``mu (w - center)`` to every gradient, until called with None. SGD only."""
        if center is None or mu <= 0:
            self._prox = None
            return
        if not isinstance(self.optimizer, FlatSGD):
            raise ConfigError("the proximal term (--prox-mu) needs --optimizer sgd")
        self._prox = (center, float(mu))

    def _make_optimizer(self) -> torch.optim.Optimizer | FlatSGD:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        local = c.momentum if c.momentum_mode == "local" else 0.0
        return FlatSGD(
            self.model, self.state, lr=c.lr, momentum=local, weight_decay=c.weight_decay,
            grad=self._grad_buffer,
        )  # fmt: skip

    @torch.no_grad()
    def _quasi_global_update(self) -> None:
        """At the start of a training round: fold the model's motion since the last round's
        start (its steps and every merge since), per unit of learning rate, into the buffer:
        ``m = beta m + (1 - beta) (x_prev - x_now) / sum(lr)`` (QG-DSGDm's
        ``m = beta m + (1 - beta) (x_t - x_t+1) / lr``, with a round of steps as one step).
        The round's steps then descend along ``g + beta m``."""
        flat = self.state.flat
        if self._qg_start is not None and self._qg_lr_sum > 0:
            motion = (self._qg_start - flat).div_(self._qg_lr_sum)
            beta = self.config.momentum
            if self._qg_momentum is None:
                self._qg_momentum = motion.mul_(1.0 - beta)
            else:
                self._qg_momentum.mul_(beta).add_(motion, alpha=1.0 - beta)
        if self._qg_start is None:
            self._qg_start = flat.clone()
        else:
            self._qg_start.copy_(flat)
        self._qg_lr_sum = 0.0

    def _next_rows(self) -> torch.Tensor:
        """Dataset rows of the next minibatch. Once per epoch the local rows are permuted
        (on the device), so that a step is one slice and one gather."""
        n = self._n
        b = min(self.config.batch_size, n)
        if self._cursor + b > self._order.shape[0]:
            perm = torch.randperm(n, generator=self._generator).to(self.device, non_blocking=True)
            self._order = perm if self.data.indices is None else self.data.indices[perm]
            self._cursor = 0
        rows = self._order[self._cursor : self._cursor + b]
        self._cursor += b
        return rows

    def train(self, steps: int | None = None, epochs: float | None = None) -> TrainStats:
        """Run ``steps`` minibatch steps, or enough steps for ``epochs`` passes (default 1 step)."""
        n = self._n
        if n == 0:
            return TrainStats(0, 0, float("nan"))
        if epochs is not None:
            per_epoch = -(-n // min(self.config.batch_size, n))
            steps = max(1, round(epochs * per_epoch))
        steps = 1 if steps is None else steps
        total_loss = torch.zeros((), device=self.device)
        samples = 0
        scheduled = self.schedule.kind != "constant"
        quasi_global = self.config.momentum_mode == "quasi-global"
        if quasi_global:
            self._quasi_global_update()
        for _ in range(steps):
            if scheduled:
                self._set_lr(self.config.lr * self.schedule.factor(self.state.age + samples))
            rows = self._next_rows()
            x, y = self.data.x.index_select(0, rows), self.data.y.index_select(0, rows)
            if self._fast is not None:
                loss = self._fast.loss_and_grads(x, y)  # writes the gradients itself
            else:
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.model(x), y)
                loss.backward()
            if self._prox is not None:
                self._add_proximal_gradient()
            if quasi_global:
                assert isinstance(self.optimizer, FlatSGD)
                if self._qg_momentum is not None:
                    mask = self.optimizer.trainable_mask
                    m = self._qg_momentum if mask is None else self._qg_momentum * mask
                    self.optimizer.grad.add_(m, alpha=self.config.momentum)
                self._qg_lr_sum += self.optimizer.lr
            self.optimizer.step()
            total_loss += loss.detach()
            samples += len(y)
        self.state.age += samples
        return TrainStats(steps, samples, float(total_loss) / steps)

    def _add_proximal_gradient(self) -> None:
        assert self._prox is not None and isinstance(self.optimizer, FlatSGD)
        center, mu = self._prox
        pull = self.state.flat - center
        mask = self.optimizer.trainable_mask
        self.optimizer.grad.add_(pull if mask is None else pull * mask, alpha=mu)

    @property
    def lr(self) -> float:
        """The learning rate the next step takes (the schedule at the current age)."""
        return self.config.lr * self.schedule.factor(self.state.age)

    def _set_lr(self, lr: float) -> None:
        if isinstance(self.optimizer, FlatSGD):
            self.optimizer.lr = lr
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def merged(self, remote_weight: float) -> None:
        """The model was just merged, moving ``remote_weight`` of the way to another model.

        The merged model is ``(1 - a) w_l + a w_r``; its velocity is taken as the same
        combination of the local momentum and the remote one, which is not sent (taken as
        zero): the momentum buffer (Adam: the first moment) is scaled by ``1 - a``. So
        ``replace`` forgets the local momentum, a merge with an unaged model keeps it all,
        and a momentum built on a trajectory the model has left does not drag it back."""
        keep = min(max(1.0 - float(remote_weight), 0.0), 1.0)
        if keep == 1.0:
            return
        if isinstance(self.optimizer, FlatSGD):
            self.optimizer.scale_state(keep)
        else:
            for state in self.optimizer.state.values():
                if "exp_avg" in state:
                    state["exp_avg"].mul_(keep)

    def reset_optimizer_state(self) -> None:
        """Forget momentum / Adam moments (after the model was rolled back to a snapshot)."""
        self._qg_momentum, self._qg_start, self._qg_lr_sum = None, None, 0.0
        if isinstance(self.optimizer, FlatSGD):
            self.optimizer.reset_state()
        else:
            self.optimizer.state.clear()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> EvalStats:
        """Mean cross-entropy loss and accuracy of the current model on ``(x, y)``."""
        return evaluate_model(self.model, x, y, self.device, batch_size)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 4096
) -> EvalStats:
    """Loss and accuracy of ``model`` on ``(x, y)``, in batches, without touching gradients."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits = model(xb)
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    n = len(y)
    if n == 0:
        return EvalStats(float("nan"), float("nan"), 0)
    return EvalStats(float(loss_sum) / n, int(correct) / n, n)
