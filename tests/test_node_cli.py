"""``gossip-node`` as a user runs it: one-line errors, TOML config, own data from an .npz."""

from __future__ import annotations

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
