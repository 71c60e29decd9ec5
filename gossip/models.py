"""Model registry: the architectures a peer can train, built by name from the data's shape.

Every peer of a run builds its model with :func:`build_model` from the same name, input shape
and ``generator_seed``, so all peers start from bit-for-bit the same parameters and averaging
starts from a common point. Construction runs on the CPU inside a forked RNG, seeded from
``generator_seed``: it is deterministic and leaves the caller's global RNG untouched. Move the
model to its device afterwards, then :meth:`gossip.state.ModelState.bind` it.

Models (``input_shape`` excludes the batch dimension):

- ``logreg``: multinomial logistic regression on the flattened input.
- ``mlp``: ``layers`` (2) hidden ReLU layers of ``hidden`` (200) units, the "2NN" of McMahan
  et al. (199,210 parameters on MNIST); ``mlp:hidden=100,layers=1`` is gossipy's 64-100-10.
- ``cnn``: two conv blocks (``width`` and ``2*width`` channels, ``kernel`` x ``kernel``
  "same" convolutions, ReLU, 2x2 max-pooling while the feature map is at least 4 wide),
  then FC ``fc`` (128) + ReLU and the classifier. Images are ``(C, H, W)`` with H, W >= 3;
  a 1-D input ``(L,)`` (such as mnist1d's 40 features) is treated as a one-channel signal
  with ``Conv1d``. Feature maps larger than 8x8 (64 positions in 1-D) are average-pooled
  down to that size before the FC layer, so the FC layer stays small for large images.
- ``resnet18``: torchvision's ResNet-18 with GroupNorm instead of BatchNorm (``norm_groups``
  = 2 groups per layer, as in Hsieh et al. 2020, "The non-IID data quagmire"; every ResNet-18
  width is divisible by 2 and by 32), ``in_channels`` from the input. For images up to
  64x64 the stem is the CIFAR variant (3x3 stride-1 conv1, no max-pool); larger images keep
  the ImageNet stem (7x7 stride-2 conv1 + max-pool). Needs H, W >= 8. No pretrained weights.
- ``charlstm``: the LEAF Shakespeare model: Embedding(vocab, 8), 2-layer LSTM of 256 units,
  Linear(256, vocab) on the last position: predicts the next character of an int64
  ``(N, L)`` sequence. Needs ``vocab_size`` and ``num_classes == vocab_size``.

No model has BatchNorm (running statistics do not average well across peers) or integer
buffers; every exchanged tensor is a float parameter. ``vocab_size`` marks token data: only
``charlstm`` accepts it, and ``charlstm`` requires it.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from gossip.errors import ConfigError

if TYPE_CHECKING:
    from gossip.datasets import Dataset

# Feature maps above this size (per spatial dimension) are average-pooled to it before the
# CNN's FC layer; 1-D signals are capped at its square.
_CNN_MAX_SIDE = 8
# ResNet-18 with the CIFAR stem downsamples 8x; the stem is used up to this input side.
_RESNET_SMALL_STEM_MAX_SIDE = 64
_RESNET_MIN_SIDE = 8
_CNN_MIN_SIDE = 3


@dataclass(frozen=True)
class ModelSpec:
    """Everything a builder needs: the validated shape of one sample and the options."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None
    options: Mapping[str, int]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: what it is, which inputs suit it, and how to build it."""

    name: str
    description: str
    inputs: str
    builder: Callable[[ModelSpec], nn.Module] = field(repr=False)
    # Keyword options of build_model for this model, with their defaults.
    options: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


def _mismatch(spec: ModelSpec, why: str) -> ConfigError:
    return ConfigError(f"model {spec.name!r} does not fit input shape {spec.input_shape}: {why}")


def _reject_tokens(spec: ModelSpec) -> None:
    if spec.vocab_size is not None:
        raise _mismatch(
            spec, f"the data are token sequences (vocab_size={spec.vocab_size}); use 'charlstm'"
        )


def _build_logreg(spec: ModelSpec) -> nn.Module:
    _reject_tokens(spec)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), spec.num_classes))


def _build_mlp(spec: ModelSpec) -> nn.Module:
    _reject_tokens(spec)
    hidden = spec.options["hidden"]
    widths = [math.prod(spec.input_shape)] + [hidden] * spec.options["layers"]
    layers: list[nn.Module] = [nn.Flatten()]
    for inp, out in itertools.pairwise(widths):
        layers += [nn.Linear(inp, out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], spec.num_classes))


def _build_cnn(spec: ModelSpec) -> nn.Module:
    _reject_tokens(spec)
    shape = spec.input_shape
    if len(shape) == 1:
        channels, sides = 1, [shape[0]]
        conv: type[nn.Conv1d | nn.Conv2d] = nn.Conv1d
        pool: type[nn.MaxPool1d | nn.MaxPool2d] = nn.MaxPool1d
        layers: list[nn.Module] = [nn.Unflatten(1, (1, shape[0]))]
    elif len(shape) == 3:
        channels, sides = shape[0], list(shape[1:])
        conv, pool, layers = nn.Conv2d, nn.MaxPool2d, []
    else:
        raise _mismatch(spec, "'cnn' takes images (C, H, W) or 1-D signals (L,)")
    if min(sides) < _CNN_MIN_SIDE:
        raise _mismatch(
            spec, f"'cnn' needs at least {_CNN_MIN_SIDE} pixels per side; use 'mlp' instead"
        )
    width, kernel = spec.options["width"], spec.options["kernel"]
    if kernel % 2 == 0:
        raise ConfigError(f"cnn kernel must be odd (got {kernel}); use 3 or 5")
    for out_channels in (width, 2 * width):
        layers += [conv(channels, out_channels, kernel, padding=kernel // 2), nn.ReLU()]
        channels = out_channels
        if min(sides) >= 4:
            layers.append(pool(2))
            sides = [s // 2 for s in sides]
    if len(sides) == 1 and sides[0] > _CNN_MAX_SIDE**2:
        sides = [_CNN_MAX_SIDE**2]
        layers.append(nn.AdaptiveAvgPool1d(sides[0]))
    elif len(sides) == 2 and max(sides) > _CNN_MAX_SIDE:
        sides = [min(s, _CNN_MAX_SIDE) for s in sides]
        layers.append(nn.AdaptiveAvgPool2d((sides[0], sides[1])))
    fc = spec.options["fc"]
    layers += [
        nn.Flatten(),
        nn.Linear(channels * math.prod(sides), fc),
        nn.ReLU(),
        nn.Linear(fc, spec.num_classes),
    ]
    return nn.Sequential(*layers)


def _build_resnet18(spec: ModelSpec) -> nn.Module:
    from torchvision.models import resnet18  # heavy import, only when asked for

    _reject_tokens(spec)
    shape = spec.input_shape
    if len(shape) != 3:
        raise _mismatch(spec, "'resnet18' takes images (C, H, W)")
    channels, height, width = shape
    if min(height, width) < _RESNET_MIN_SIDE:
        raise _mismatch(
            spec, f"'resnet18' needs images of at least {_RESNET_MIN_SIDE}x{_RESNET_MIN_SIDE}"
        )
    groups = spec.options["norm_groups"]
    if 64 % groups != 0:
        raise ConfigError(f"resnet18 norm_groups must divide 64 (got {groups}); use 2 or 32")

    def group_norm(num_channels: int) -> nn.Module:
        return nn.GroupNorm(groups, num_channels)

    model = cast(
        nn.Module, resnet18(weights=None, num_classes=spec.num_classes, norm_layer=group_norm)
    )
    stem: nn.Conv2d | None = None
    if max(height, width) <= _RESNET_SMALL_STEM_MAX_SIDE:
        stem = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        stem = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if stem is not None:  # initialise a replaced stem as torchvision does its convolutions
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = stem
    return model


class CharLSTM(nn.Module):
    """Next-character model of LEAF Shakespeare: embed, stacked LSTM, classify last output."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        logits: torch.Tensor = self.head(out[:, -1, :])
        return logits


def _build_charlstm(spec: ModelSpec) -> nn.Module:
    if spec.vocab_size is None:
        raise ConfigError(
            "model 'charlstm' needs vocab_size (token data such as Shakespeare); "
            "for other data use 'logreg', 'mlp', 'cnn' or 'resnet18'"
        )
    if len(spec.input_shape) != 1:
        raise _mismatch(spec, "'charlstm' takes token sequences (L,)")
    if spec.num_classes != spec.vocab_size:
        raise ConfigError(
            f"charlstm predicts the next token, so num_classes ({spec.num_classes}) must "
            f"equal vocab_size ({spec.vocab_size})"
        )
    o = spec.options
    return CharLSTM(spec.vocab_size, o["embed"], o["hidden"], o["layers"])


def _info(
    name: str,
    description: str,
    inputs: str,
    builder: Callable[[ModelSpec], nn.Module],
    **options: int,
) -> ModelInfo:
    return ModelInfo(name, description, inputs, builder, MappingProxyType(options))


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        _info(
            "logreg",
            "multinomial logistic regression: Flatten + Linear",
            "any float input, flattened (features, small images)",
            _build_logreg,
        ),
        _info(
            "mlp",
            "hidden ReLU layers (two of 200 units: McMahan et al.'s 2NN)",
            "any float input, flattened (features such as mnist1d, MNIST)",
            _build_mlp,
            hidden=200,
            layers=2,
        ),
        _info(
            "cnn",
            "two conv blocks (32, 64 channels) with max-pooling, FC 128, classifier",
            "images (C, H, W) of at least 3x3, or 1-D signals (L,) via Conv1d",
            _build_cnn,
            width=32,
            kernel=5,
            fc=128,
        ),
        _info(
            "resnet18",
            "ResNet-18 with GroupNorm and a CIFAR stem for small images",
            "images (C, H, W) of at least 8x8 (CIFAR-10/100, larger images)",
            _build_resnet18,
            norm_groups=2,
        ),
        _info(
            "charlstm",
            "LEAF Shakespeare next-character model: Embedding 8, 2x LSTM 256, Linear",
            "int64 token sequences (L,) with vocab_size",
            _build_charlstm,
            embed=8,
            hidden=256,
            layers=2,
        ),
    )
}


def model_names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def _positive_int(what: str, value: object) -> int:
    """``value`` as an int (numpy integers welcome) if it is a positive integer."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ConfigError(f"{what} must be a positive integer (got {value!r})")
    return number


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    vocab_size: int | None = None,
    generator_seed: int = 0,
    **options: int,
) -> nn.Module:
    """Build the model ``name`` for samples of ``input_shape`` and ``num_classes`` classes.

    Parameters are initialised deterministically from ``generator_seed`` on the CPU; the
    global RNG state is left as it was. ``options`` are the model's keyword options (see
    ``MODELS[name].options``, e.g. ``hidden=`` for ``mlp``). A wrong name, option or a model
    that does not fit the input raises :class:`ConfigError`.
    """
    info = MODELS.get(name)
    if info is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        valid = ", ".join(info.options) or "none"
        raise ConfigError(
            f"model {name!r} has no option {', '.join(unknown)}; its options are: {valid}"
        )
    if not isinstance(input_shape, tuple | list) or not input_shape:
        raise ConfigError(f"input shape must be a non-empty tuple of sizes (got {input_shape!r})")
    shape = tuple(_positive_int("every input dimension", d) for d in input_shape)
    num_classes = _positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2 (got {num_classes})")
    if vocab_size is not None:
        vocab_size = _positive_int("vocab_size", vocab_size)
    if (
        isinstance(generator_seed, bool)
        or not isinstance(generator_seed, int)
        or not 0 <= generator_seed < 2**64
    ):
        raise ConfigError(
            f"generator_seed must be an integer in [0, 2**64) (got {generator_seed!r})"
        )
    merged = {
        k: _positive_int(f"{name} option {k}", options.get(k, v)) for k, v in info.options.items()
    }
    spec = ModelSpec(name, shape, num_classes, vocab_size, MappingProxyType(merged))
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(generator_seed)
        model = info.builder(spec)
    return model


# An option above this is a typo (a 2**31-unit layer does not fit any machine), and refusing
# it here keeps a huge allocation from being the error message.
_MAX_OPTION = 1 << 20


def parse_model_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` (e.g. ``mlp:hidden=100,layers=1``) as the name and
    its options, checked against the registry: a bad spec raises one-line :class:`ConfigError`.
    Options left out keep the model's defaults (``gossip-sim models`` lists them)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    info = MODELS.get(name)
    if info is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    options: dict[str, int] = {}
    if not sep:
        return name, options
    valid = ", ".join(info.options) or "none"
    for item in rest.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        why = None
        if not eq or not key:
            why = "options are KEY=VALUE separated by commas, e.g. mlp:hidden=100,layers=1"
        elif key not in info.options:
            why = f"{name} has no option {key}; its options are: {valid}"
        elif key in options:
            why = f"option {key} is given twice"
        elif not (value.isascii() and value.isdigit()) or int(value) < 1:
            why = f"option {key} must be a positive integer (got {value!r})"
        elif int(value) > _MAX_OPTION:
            why = f"option {key} must be at most {_MAX_OPTION} (got {value})"
        if why is not None:
            raise ConfigError(f"model {spec.strip()!r}: {why}")
        options[key] = int(value)
    return name, options


def build_model_for(spec: str, data: Dataset, seed: int) -> nn.Module:
    """:func:`build_model` from a model spec (see :func:`parse_model_spec`) sized for
    ``data``. Every peer of a run calls it with the run's seed, so that all start from the
    same initial model, as in Gossip Learning."""
    name, options = parse_model_spec(spec)
    return build_model(
        name,
        data.input_shape,
        data.num_classes,
        vocab_size=data.vocab_size,
        generator_seed=seed,
        **options,
    )
