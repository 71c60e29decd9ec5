"""Helpers shared by the tests that run real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peers.node import Node
    from peers.node_config import NodeConfig

NodeFactory = Callable[..., Awaitable["Node"]]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS considers free now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def lone_node_config(tmp_path: Path, **kw: Any) -> NodeConfig:
    """A node on a free port whose only peer is down and whose gossip period is an hour:
    nothing changes its model but a push. ``kw`` overrides any field."""
    from peers.node_config import NodeConfig

    port, dead = free_ports(2)
    peers = tmp_path / f"peers-{port}.txt"
    peers.write_text(f"127.0.0.1:{port} n{port}\n127.0.0.1:{dead} dead\n")
    fields: dict[str, Any] = dict(
        peers=str(peers), host="127.0.0.1", port=port, id=f"n{port}", dataset="digits",
        node_index=0, num_nodes=2, model="logreg", period=3600.0, device="cpu", eval_every=0,
    )  # fmt: skip
    fields.update(kw)
    return NodeConfig(**fields)


def self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed (CA) certificate and key for 127.0.0.1, as PEM files in ``tmp_path``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "node.crt", tmp_path / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the server closes the connection within ``timeout`` (data before is skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True
