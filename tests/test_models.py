"""Tests of the model registry: shapes, gradients, sizes, seeding, binding, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gossip.errors import ConfigError
from gossip.models import MODELS, build_model, build_model_for, model_names, parse_model_spec
from gossip.state import ModelState, exchanged_tensors

# (name, input_shape, num_classes, vocab_size): the typical uses of each model.
CASES = [
    ("logreg", (1, 8, 8), 10, None),
    ("logreg", (40,), 10, None),
    ("logreg", (3, 32, 32), 10, None),
    ("mlp", (40,), 10, None),
    ("mlp", (1, 28, 28), 10, None),
    ("mlp", (1, 8, 8), 10, None),
    ("cnn", (1, 8, 8), 10, None),
    ("cnn", (1, 28, 28), 10, None),
    ("cnn", (3, 32, 32), 100, None),
    ("cnn", (40,), 10, None),
    ("resnet18", (1, 8, 8), 10, None),
    ("charlstm", (80,), 80, 80),
]
# The same architectures, with ResNet-18 on 3-channel 8x8 images: the same parameters as on
# CIFAR's 32x32 (the CIFAR stem keeps every layer), a sixteenth of the compute.
LIGHT_CASES = [*CASES, ("resnet18", (3, 8, 8), 10, None)]


def _ids(cases: list[tuple[str, tuple[int, ...], int, int | None]]) -> list[str]:
    return [f"{n}-{'x'.join(map(str, s))}" for n, s, _, _ in cases]


def _batch(shape: tuple[int, ...], vocab: int | None, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if vocab is not None:
        return torch.randint(0, vocab, (n, *shape), generator=g)
    return torch.randn((n, *shape), generator=g)


def _build(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None, seed: int = 0
) -> nn.Module:
    return build_model(name, shape, classes, vocab_size=vocab, generator_seed=seed)


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_with_a_one_line_description() -> None:
    assert model_names() == ["logreg", "mlp", "cnn", "resnet18", "charlstm"]
    for name, info in MODELS.items():
        assert info.name == name
        assert info.description and "\n" not in info.description
        assert info.inputs and "\n" not in info.inputs


@pytest.mark.parametrize(
    ("name", "shape", "classes", "vocab"),
    [
        *CASES,
        # ResNet-18 on CIFAR: about 1 s on an idle 2-core machine, several when it is busy.
        pytest.param("resnet18", (3, 32, 32), 10, None, marks=pytest.mark.slow),
    ],
    ids=[*_ids(CASES), "resnet18-3x32x32"],
)
def test_forward_and_backward(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    model = _build(name, shape, classes, vocab)
    x = _batch(shape, vocab)
    out = model(x)
    assert out.shape == (2, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), LIGHT_CASES, ids=_ids(LIGHT_CASES))
def test_no_batchnorm_and_only_float_parameters_are_exchanged(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    model = _build(name, shape, classes, vocab)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert list(model.buffers()) == []  # no running stats, no integer counters
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_parameter_counts_match_the_reference_architectures() -> None:
    assert _numel(_build("logreg", (1, 28, 28), 10, None)) == 784 * 10 + 10
    # McMahan et al.'s 2NN on MNIST has 199,210 parameters.
    assert _numel(_build("mlp", (1, 28, 28), 10, None)) == 199_210
    assert _numel(_build("mlp", (40,), 10, None)) == 40 * 200 + 200 + 200 * 200 + 200 + 2010
    # cnn: conv 5x5 (1->32), (32->64), two 2x2 pools (28 -> 7), FC 128, classifier.
    convs = (25 * 1 * 32 + 32) + (25 * 32 * 64 + 64)
    assert _numel(_build("cnn", (1, 28, 28), 10, None)) == convs + 64 * 49 * 128 + 128 + 1290
    assert _numel(_build("cnn", (1, 8, 8), 10, None)) == convs + 64 * 4 * 128 + 128 + 1290
    conv1d = (5 * 1 * 32 + 32) + (5 * 32 * 64 + 64)  # 40 -> 20 -> 10 positions
    assert _numel(_build("cnn", (40,), 10, None)) == conv1d + 64 * 10 * 128 + 128 + 1290
    # ResNet-18 with the CIFAR stem (GroupNorm has the same parameters as BatchNorm).
    assert _numel(_build("resnet18", (3, 32, 32), 10, None)) == 11_173_962
    # LEAF Shakespeare: Embedding(80, 8), LSTM(8 -> 256) x2, Linear(256, 80).
    lstm = 4 * 256 * (8 + 256) + 8 * 256 + 4 * 256 * (256 + 256) + 8 * 256
    assert _numel(_build("charlstm", (80,), 80, 80)) == 80 * 8 + lstm + 256 * 80 + 80


def test_cnn_pools_large_images_down_to_a_small_fc_layer() -> None:
    small = _build("cnn", (3, 32, 32), 10, None)
    large = _build("cnn", (3, 96, 80), 10, None)
    assert _numel(large) == _numel(small)
    assert large(_batch((3, 96, 80), None)).shape == (2, 10)
    signal = _build("cnn", (1000,), 10, None)  # 1-D: capped at 64 positions
    assert _numel(signal) == _numel(_build("cnn", (256,), 10, None))


def test_resnet18_uses_groupnorm_and_the_small_image_stem() -> None:
    model = _build("resnet18", (1, 28, 28), 10, None)
    conv1 = model.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.in_channels == 1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 2 for m in norms)
    gn32 = build_model("resnet18", (3, 32, 32), 10, norm_groups=32)
    assert all(m.num_groups == 32 for m in gn32.modules() if isinstance(m, nn.GroupNorm))


def test_charlstm_follows_leaf_shakespeare() -> None:
    model = _build("charlstm", (80,), 80, 80)
    lstm = model.lstm
    assert isinstance(lstm, nn.LSTM)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (8, 256, 2)
    assert lstm.batch_first
    x = _batch((80,), 80)
    out = model(x)
    # The prediction is made from the last position: it depends on the last token.
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 80
    assert not torch.equal(model(y), out)


def test_options_change_the_architecture() -> None:
    small = build_model("mlp", (40,), 10, hidden=16)
    assert _numel(small) == 40 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    narrow = build_model("cnn", (1, 8, 8), 10, width=8, kernel=3, fc=32)
    assert _numel(narrow) == (9 * 8 + 8) + (9 * 8 * 16 + 16) + 16 * 4 * 32 + 32 + 330
    assert narrow(_batch((1, 8, 8), None)).shape == (2, 10)


@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), LIGHT_CASES, ids=_ids(LIGHT_CASES))
def test_same_seed_same_parameters_other_seed_different(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    a = _build(name, shape, classes, vocab, seed=7)
    b = _build(name, shape, classes, vocab, seed=7)
    c = _build(name, shape, classes, vocab, seed=8)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert pa.keys() == pb.keys() == pc.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # Every randomly initialised tensor differs (GroupNorm's ones/zeros do not).
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)
    weights = [k for k in pa if k.endswith("weight") and pa[k].dim() > 1]
    assert weights and all(not torch.equal(pa[k], pc[k]) for k in weights)


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    for name, shape, classes, vocab in CASES:
        if name != "resnet18":
            _build(name, shape, classes, vocab, seed=99)
    assert torch.equal(torch.rand(5), expected)


def test_seed_does_not_depend_on_the_global_rng() -> None:
    torch.manual_seed(1)
    a = _build("mlp", (40,), 10, None, seed=3)
    torch.manual_seed(2)
    torch.rand(100)
    b = _build("mlp", (40,), 10, None, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), LIGHT_CASES, ids=_ids(LIGHT_CASES))
def test_model_state_bind_keeps_the_function_and_shares_memory(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    model = _build(name, shape, classes, vocab)
    model.eval()
    x = _batch(shape, vocab, seed=1)
    with torch.no_grad():
        before = model(x)
    state = ModelState.bind(model)
    assert state.schema.numel == _numel(model)
    assert [n for n, _ in exchanged_tensors(model)] == [s.name for s in state.schema.specs]
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # An optimizer step on the module is seen in the flat buffer, and vice versa.
    flat_before = state.flat.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(state.flat, flat_before)
    with torch.no_grad():
        state.flat.zero_()
    assert all((p == 0).all() for p in model.parameters())


def _error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_unknown_name_lists_the_valid_names() -> None:
    message = _error("resnet50", (3, 32, 32), 10)
    assert "resnet50" in message
    for name in model_names():
        assert name in message


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (("charlstm", (80,), 80), {}, "vocab_size"),
        (("charlstm", (1, 28, 28), 80), {"vocab_size": 80}, "(L,)"),
        (("charlstm", (80,), 10), {"vocab_size": 80}, "num_classes"),
        (("mlp", (80,), 80), {"vocab_size": 80}, "charlstm"),
        (("cnn", (80,), 80), {"vocab_size": 80}, "charlstm"),
        (("cnn", (1, 2, 2), 10), {}, "at least 3"),
        (("cnn", (2,), 10), {}, "at least 3"),
        (("cnn", (28, 28), 10), {}, "(C, H, W)"),
        (("cnn", (1, 8, 8), 10), {"kernel": 4}, "odd"),
        (("resnet18", (40,), 10), {}, "(C, H, W)"),
        (("resnet18", (3, 4, 4), 10), {}, "8x8"),
        (("resnet18", (3, 32, 32), 10), {"norm_groups": 3}, "norm_groups"),
        (("mlp", (40,), 10), {"hiden": 100}, "hidden"),
        (("logreg", (40,), 10), {"hidden": 100}, "none"),
        (("mlp", (40,), 10), {"hidden": 0}, "hidden"),
        (("mlp", (40,), 1), {}, "num_classes"),
        (("mlp", (0,), 10), {}, "input dimension"),
        (("mlp", (), 10), {}, "input shape"),
        (("mlp", (40,), 10), {"generator_seed": -1}, "generator_seed"),
        (("mlp", (40,), 10), {"generator_seed": 1.5}, "generator_seed"),
    ],
)
def test_config_errors_are_one_clear_line(
    args: tuple[object, ...], kwargs: dict[str, object], needle: str
) -> None:
    assert needle in _error(*args, **kwargs)


def test_shapes_may_be_given_as_lists() -> None:
    model = build_model("logreg", [1, 8, 8], 10)  # type: ignore[arg-type]
    assert _numel(model) == 64 * 10 + 10
    linear = model[1]  # type: ignore[index]
    assert isinstance(linear, nn.Linear) and linear.in_features == math.prod((1, 8, 8))


def test_numpy_integers_are_accepted() -> None:
    import numpy as np

    model = build_model("charlstm", (np.int64(10),), np.int64(5), vocab_size=np.int32(5))  # type: ignore[arg-type]
    assert model(torch.zeros(2, 10, dtype=torch.int64)).shape == (2, 5)


def test_mlp_layers_option_sets_the_depth() -> None:
    one = build_model("mlp", (64,), 10, hidden=100, layers=1)
    assert _numel(one) == 64 * 100 + 100 + 100 * 10 + 10
    three = build_model("mlp", (40,), 10, hidden=8, layers=3)
    assert _numel(three) == 40 * 8 + 8 + 2 * (8 * 8 + 8) + 8 * 10 + 10
    assert sum(isinstance(m, nn.ReLU) for m in three) == 3


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("mlp", ("mlp", {})),
        ("mlp:hidden=100,layers=1", ("mlp", {"hidden": 100, "layers": 1})),
        (" cnn : width=8 , fc=16 ", ("cnn", {"width": 8, "fc": 16})),
    ],
)
def test_model_specs_parse(spec: str, parsed: tuple[str, dict[str, int]]) -> None:
    assert parse_model_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nope", "unknown model 'nope'"),
        ("mlp:", "KEY=VALUE"),
        ("mlp:hidden", "KEY=VALUE"),
        ("mlp:hidden=", "positive integer"),
        ("mlp:hidden=1.5", "positive integer"),
        ("mlp:hidden=0", "positive integer"),
        ("mlp:hidden=-3", "positive integer"),
        ("mlp:width=8", "its options are: hidden, layers"),
        ("logreg:hidden=8", "its options are: none"),
        ("mlp:hidden=8,hidden=9", "twice"),
        ("mlp:hidden=99999999999", "at most"),
    ],
)
def test_bad_model_specs_are_one_clear_line(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model_spec(spec)
    message = str(caught.value)
    assert needle in message and "\n" not in message


def test_build_model_for_takes_a_spec() -> None:
    from gossip.datasets import load_dataset

    data = load_dataset("digits")
    model = build_model_for("mlp:hidden=12,layers=1", data, 0)
    assert _numel(model) == 64 * 12 + 12 + 12 * 10 + 10
    assert torch.equal(
        next(model.parameters()),
        next(build_model("mlp", (64,), 10, hidden=12, layers=1).parameters()),
    )


def test_a_simulation_refuses_a_bad_model_spec_before_it_starts() -> None:
    from sim.config import SimConfig

    with pytest.raises(ConfigError, match="model 'mlp:layers=0'"):
        SimConfig(model="mlp:layers=0")
    assert SimConfig(model="mlp:hidden=100,layers=1").model == "mlp:hidden=100,layers=1"
