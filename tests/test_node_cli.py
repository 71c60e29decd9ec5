"""``gossip-node`` as a user runs it: one-line errors, TOML config, own data from an .npz."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from netutil import free_ports
from typer.testing import CliRunner

from gossip.errors import ConfigError
from peers.cli import app
from peers.node import Node
from peers.node_config import NodeConfig

runner = CliRunner()


def _one_error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    bad_port = tmp_path / "bad.txt"
    bad_port.write_text("127.0.0.1:99999\n")
    assert "bad.txt:1" in _one_error_line(["--peers", str(bad_port)])
    assert "not found" in _one_error_line(["--peers", str(tmp_path / "missing.txt")])
    peers = tmp_path / "peers.txt"
    peers.write_text("127.0.0.1:18001 a\n127.0.0.1:18002 b\n")
    assert "--num-nodes" in _one_error_line(["--peers", str(peers), "--node-index", "0"])
    assert "--node-index" in _one_error_line(
        ["--peers", str(peers), "--node-index", "5", "--num-nodes", "2"]
    )
    assert "mnist" in _one_error_line(
        ["--peers", str(peers), "--id", "a", "--dataset", "mnist", "--data-dir", str(tmp_path)]
    )
    assert "unknown field" in _one_error_line(
        ["--config", str(_toml(tmp_path, "colour = 'red'\n"))]
    )
    assert "already exists" in _one_error_line(["keygen", "shared", str(peers)])


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_toml_fields_with_flags_winning(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[node]\nport = 9100\nmodel = "logreg"\nlr = 0.3\n')
    config = NodeConfig.from_toml(path, lr=0.7)
    assert (config.port, config.model, config.lr) == (9100, "logreg", 0.7)
    with pytest.raises(ConfigError, match="not valid TOML"):
        NodeConfig.from_toml(_toml(tmp_path, "port = \n"))


def test_keygen_ed25519_prints_the_public_key(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keygen", "ed25519", str(tmp_path / "a.key")])
    assert result.exit_code == 0 and result.output.startswith("ed25519:")
    assert (tmp_path / "a.key").stat().st_mode & 0o077 == 0


def test_a_node_trains_on_its_own_npz_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = tmp_path / "local.npz"
    np.savez(data, x=x, y=y)
    port, other = free_ports(2)
    peers = tmp_path / "peers.txt"
    peers.write_text(f"127.0.0.1:{port} me\n127.0.0.1:{other} them\n")
    node = Node(
        NodeConfig(
            peers=str(peers), id="me", port=port, data=str(data), model="logreg", device="cpu"
        )
    )
    # The whole file is this node's: 80% of it for training (the rest is its test split).
    assert len(node.learner.data) == 48 and node.dataset.num_classes == 2
    assert [e.peer_id for e in node.others] == ["them"]
    node.learner.train(steps=3)
    assert node.learner.state.age == 3 * 32


# --------------------------------------------------------------------------- option validation

# (field, a value at the boundary that is fine, a value just past it): each bad value breaks
# exactly one rule, so the error must name that option.
BOUNDARIES: list[tuple[str, object, object]] = [
    ("port", 1, 0),
    ("port", 65535, 65536),
    ("period", 1e-9, 0.0),
    ("period", 1e9, float("inf")),
    ("period", 1.0, float("nan")),
    ("lr", 1e-9, 0.0),
    ("lr", 1e-9, -1e-9),
    ("checkpoint_every", 1e-9, 0.0),
    ("status_every", 1e-9, 0.0),
    ("auth_window", 1e-9, 0.0),
    ("auth_window", 1e9, float("inf")),
    ("connect_timeout", 1e-9, 0.0),
    ("read_timeout", 1e-9, 0.0),
    ("batch_size", 1, 0),
    ("inbox_size", 1, 0),
    ("local_steps", 0, -1),
    ("eval_every", 0, -1),
    ("threads", 0, -1),
    ("jitter", 0.0, -1e-9),
    ("jitter", 0.999, 1.0),
    ("seed", 0, -1),
    ("seed", 2**64 - 1, 2**64),
    ("device", "cuda:0", "cuda:"),
    ("device", "cpu", "gpu"),
    ("codec", "int8", "fp64"),
    ("codec", "fp16", "off"),  # the simulator's in-memory hand-over, not a wire codec
    ("optimizer", "adam", "rmsprop"),
    ("model", "cnn", "vgg"),
    ("model", "mlp:hidden=100,layers=1", "mlp:hidden=0"),
    ("partition", "dirichlet:0.5", "dirichlet:0"),
    ("mode", "push-pull", "gossip"),
    ("merge", "average", "sum"),
    ("age_guard", "refuse", "block"),
    ("log_format", "json", "xml"),
    ("train_on", "receive", "always"),
    ("order", "train-merge", "sideways"),
    ("merge_k", 1, 0),
    ("momentum", 0.99, 1.0),
    ("weight_decay", 0.0, -1e-9),
    ("lr_schedule", "cosine:1000", "cosine"),  # a node has no run length to take it from
    ("lr_schedule", "inverse:1", "inverse:0"),
]


@pytest.mark.parametrize(("name", "ok", "bad"), BOUNDARIES)
def test_every_option_is_checked_at_its_boundary(name: str, ok: object, bad: object) -> None:
    assert getattr(NodeConfig(**{name: ok}), name) == ok
    with pytest.raises(ConfigError) as info:
        NodeConfig(**{name: bad})
    message = str(info.value)
    assert "\n" not in message
    shown = name.replace("_", "-") if not isinstance(bad, str) else bad
    assert shown in message, message


@pytest.mark.parametrize(
    ("nodes", "index", "expected"),
    [
        (1, 0, None),
        (0, 0, "--num-nodes"),
        (3, 2, None),
        (3, 3, "--node-index"),
        (3, -1, "--node-index"),
    ],
)
def test_shard_options_at_their_boundaries(nodes: int, index: int, expected: str | None) -> None:
    if expected is None:
        assert NodeConfig(num_nodes=nodes, node_index=index).num_nodes == nodes
    else:
        with pytest.raises(ConfigError, match=expected):
            NodeConfig(num_nodes=nodes, node_index=index)


def test_bad_options_on_the_command_line_are_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    peers = tmp_path / "peers.txt"
    peers.write_text("127.0.0.1:18001 a\n127.0.0.1:18002 b\n")
    base = ["--peers", str(peers), "--id", "a"]
    assert "--codec must be one of fp32, fp16, int8, got 'fp64'" in _one_error_line(
        [*base, "--codec", "fp64"]
    )
    assert "--lr" in _one_error_line([*base, "--lr", "0"])
    assert "--batch-size" in _one_error_line([*base, "--batch-size", "0"])
    assert "--auth-window" in _one_error_line([*base, "--auth-window", "0"])
    assert "--read-timeout" in _one_error_line([*base, "--read-timeout", "-1"])
    assert "--device" in _one_error_line([*base, "--device", "tpu"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port = 'abc'\n", "port must be an integer, got 'abc'"),
        ("port = 80.5\n", "port must be an integer, got 80.5"),
        ("port = true\n", "port must be an integer, got True"),
        ("[node]\nlr = 'fast'\n", "lr must be a number, got 'fast'"),
        ("download = 1\n", "download must be true or false, got 1"),
        ("id = 7\n", "id must be a string, got 7"),
        ("codec = ['fp32']\n", "codec must be a string, got ['fp32']"),
        ("node = 3\n", "node must be a table ([node]), got 3"),
        ("lr = 0.0\n", "--lr must be a finite number > 0, got 0.0"),
        ("codec = 'fp64'\n", "--codec must be one of"),
    ],
)
def test_wrong_types_in_a_toml_file_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = _toml(tmp_path, text)
    line = _one_error_line(["--config", str(path)])
    assert expected in line, line
    if not expected.startswith("--"):  # a type error names the file; a range error the option
        assert f"config file {path}: " in line


def test_toml_numbers_fit_their_fields(tmp_path: Path) -> None:
    config = NodeConfig.from_toml(
        _toml(tmp_path, "lr = 1\nperiod = 2\nnum_nodes = 2\nnode_index = 1\n")
    )
    assert (config.lr, config.period) == (1.0, 2.0) and isinstance(config.lr, float)
    assert (config.num_nodes, config.node_index) == (2, 1)


def test_errors_while_the_node_starts_are_one_line(tmp_path: Path) -> None:
    peers = tmp_path / "peers.txt"
    port, other = free_ports(2)
    peers.write_text(f"127.0.0.1:{port} a\n127.0.0.1:{other} b\n")
    base = ["--peers", str(peers), "--id", "a", "--port", str(port), "--device", "cpu"]
    base += ["--model", "logreg"]
    a_file = tmp_path / "state"
    a_file.write_text("not a directory")
    assert "is a file" in _one_error_line([*base, "--checkpoint-dir", str(a_file)])
    missing = tmp_path / "missing.key"
    assert "key file not found" in _one_error_line([*base, "--auth-key-file", str(missing)])
    holder = socket.socket()  # Node.start(): the port is taken
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        ckpt = tmp_path / "ckpt"
        assert "pick another --port" in _one_error_line([*base, "--checkpoint-dir", str(ckpt)])
    finally:
        holder.close()


def test_the_event_loop_is_uvloop_by_default_when_installed_and_asyncio_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from gossip.errors import ConfigError
    from peers.cli import run_loop

    seen: list[str] = []

    async def which() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    pytest.importorskip("uvloop")
    run_loop(which(), "auto")
    run_loop(which(), "uvloop")
    run_loop(which(), "asyncio")
    assert seen == ["uvloop", "uvloop", "asyncio"]
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    run_loop(which(), "auto")
    assert seen[-1] == "asyncio"
    coro = which()
    with pytest.raises(ConfigError, match=r"needs uvloop: pip install 'gossip-learning\[fast\]'"):
        run_loop(coro, "uvloop")
    coro.close()


def test_a_bad_event_loop_is_one_line() -> None:
    with pytest.raises(Exception, match="--event-loop must be auto, asyncio or uvloop"):
        NodeConfig(event_loop="trio")
