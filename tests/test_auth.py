"""Message authentication: HMAC and Ed25519 round trips, tampering, staleness, replay."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path
from typing import Any

import pytest

from gossip.errors import ConfigError
from peers.auth import (
    AUTH_HEADER,
    AuthConfig,
    AuthError,
    AuthReason,
    KeyFile,
    MessageSigner,
    MessageVerifier,
    format_private_key,
    format_public_key,
    format_shared_key,
    generate_ed25519_keypair,
    generate_shared_key,
    load_key_file,
    public_key_of,
    write_key_file,
)
from peers.peersfile import parse_peers, public_keys

SHARED = bytes(range(100, 132))
SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))
PUB_A = public_key_of(SEED_A)
PUB_B = public_key_of(SEED_B)
BODY = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{"nonce":"n1"}}' + bytes(64)
T0 = 1_700_000_000.0


def _header(config: AuthConfig, body: bytes = BODY) -> str:
    return MessageSigner(config).headers(body)[AUTH_HEADER]


def _verify(
    verifier: MessageVerifier,
    header: str | None,
    *,
    sender: str = "alice",
    nonce: str = "n1",
    timestamp: float = T0,
    body: bytes = BODY,
    now: float = T0,
) -> None:
    verifier.verify(
        sender=sender, nonce=nonce, timestamp=timestamp, body=body, header=header, now=now
    )


def _reason(verifier: MessageVerifier, header: str | None, **kw: Any) -> AuthReason:
    with pytest.raises(AuthError) as info:
        _verify(verifier, header, **kw)
    return AuthReason(info.value.reason)


HMAC_CFG = AuthConfig(shared_key=SHARED)
ED_RECEIVER = AuthConfig(public_keys={"alice": PUB_A, "bob": PUB_B})


# --------------------------------------------------------------------------- round trips


def test_hmac_round_trip_and_format() -> None:
    header = _header(HMAC_CFG)
    digest = hmac.new(SHARED, b"gossip-v1\n" + hashlib.sha256(BODY).digest(), "sha256")
    assert header == "hmac-sha256=" + digest.hexdigest()
    verifier = MessageVerifier(HMAC_CFG)
    _verify(verifier, header)
    _verify(verifier, header.upper().replace("HMAC-SHA256", "hmac-sha256"), nonce="n2")
    assert len(verifier) == 2


def test_ed25519_round_trip_and_format() -> None:
    header = _header(AuthConfig(private_key=SEED_A))
    scheme, _, sig = header.partition("=")
    assert scheme == "ed25519" and len(base64.b64decode(sig)) == 64
    _verify(MessageVerifier(ED_RECEIVER), header)


def test_no_keys_no_header() -> None:
    assert MessageSigner(AuthConfig()).headers(BODY) == {}
    assert not AuthConfig().require and not AuthConfig(private_key=SEED_A).require
    assert HMAC_CFG.require and ED_RECEIVER.require
    verifier = MessageVerifier(AuthConfig())
    _verify(verifier, None)
    _verify(verifier, None)  # authentication off: no replay bookkeeping either
    _verify(verifier, "garbage")
    assert len(verifier) == 0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("config", [HMAC_CFG, AuthConfig(private_key=SEED_A)])
def test_tampered_body_is_bad_auth(config: AuthConfig) -> None:
    header = _header(config)
    receiver = HMAC_CFG if config.shared_key else ED_RECEIVER
    for body in (BODY[:-1] + b"\x01", BODY + b"\x00", BODY[:-1]):
        assert _reason(MessageVerifier(receiver), header, body=body) == AuthReason.BAD_AUTH


def test_wrong_keys_are_bad_auth() -> None:
    other = AuthConfig(shared_key=bytes(32))
    assert _reason(MessageVerifier(HMAC_CFG), _header(other)) == AuthReason.BAD_AUTH
    signed_by_b = _header(AuthConfig(private_key=SEED_B))
    # bob's signature presented as alice's message
    assert _reason(MessageVerifier(ED_RECEIVER), signed_by_b) == AuthReason.BAD_AUTH
    _verify(MessageVerifier(ED_RECEIVER), signed_by_b, sender="bob")


@pytest.mark.parametrize(
    "header",
    [
        "ed25519=",
        "ed25519=not base64!",
        "ed25519=" + base64.b64encode(bytes(63)).decode(),
        "ed25519=" + base64.b64encode(bytes(64)).decode(),
        "hmac-sha256=00",
        "nonsense",
        "=abc",
        "ed25519=AAAA, ed25519=AAAA",
        "x" * 2000,
    ],
)
def test_malformed_headers_are_bad_auth(header: str) -> None:
    assert _reason(MessageVerifier(ED_RECEIVER), header) == AuthReason.BAD_AUTH


def test_missing_header_when_required() -> None:
    for config in (HMAC_CFG, ED_RECEIVER):
        assert _reason(MessageVerifier(config), None) == AuthReason.MISSING_AUTH
        assert _reason(MessageVerifier(config), "  ") == AuthReason.MISSING_AUTH


def test_unknown_sender_for_ed25519() -> None:
    header = _header(AuthConfig(private_key=SEED_A))
    assert _reason(MessageVerifier(ED_RECEIVER), header, sender="mallory") == (
        AuthReason.UNKNOWN_SENDER
    )
    # a receiver with only a shared key cannot check an Ed25519 signature either
    assert _reason(MessageVerifier(HMAC_CFG), header) == AuthReason.UNKNOWN_SENDER


def test_hmac_cannot_stand_in_for_a_known_senders_signature() -> None:
    both = AuthConfig(shared_key=SHARED, public_keys={"alice": PUB_A})
    hmac_only = _header(HMAC_CFG)
    assert _reason(MessageVerifier(both), hmac_only) == AuthReason.BAD_AUTH
    _verify(MessageVerifier(both), hmac_only, sender="carol")  # carol has no public key


def test_signer_with_both_keys_satisfies_either_receiver() -> None:
    header = _header(AuthConfig(shared_key=SHARED, private_key=SEED_A))
    assert header.startswith("ed25519=") and ", hmac-sha256=" in header
    _verify(MessageVerifier(HMAC_CFG), header)
    _verify(MessageVerifier(ED_RECEIVER), header)


# --------------------------------------------------------------------------- stale / replay


def test_stale_either_side() -> None:
    header = _header(HMAC_CFG)
    verifier = MessageVerifier(AuthConfig(shared_key=SHARED, window_s=60.0))
    assert _reason(verifier, header, now=T0 + 60.5) == AuthReason.STALE
    assert _reason(verifier, header, now=T0 - 60.5) == AuthReason.STALE
    assert _reason(verifier, header, timestamp=float("nan")) == AuthReason.STALE
    assert len(verifier) == 0
    _verify(verifier, header, now=T0 + 60.0)  # the edge is inside
    _verify(verifier, header, nonce="n2", now=T0 - 60.0)


def test_replay_detected() -> None:
    header = _header(HMAC_CFG)
    verifier = MessageVerifier(HMAC_CFG)
    _verify(verifier, header)
    assert _reason(verifier, header, now=T0 + 30) == AuthReason.REPLAY
    assert _reason(verifier, header, now=T0 + 60) == AuthReason.REPLAY
    _verify(verifier, header, sender="bob")  # nonces are per sender
    _verify(verifier, header, nonce="n2")
    # once the message has left the window, a replay is stale and the nonce is forgotten
    assert _reason(verifier, header, now=T0 + 61) == AuthReason.STALE
    _verify(verifier, _header(HMAC_CFG, b"x"), nonce="z", body=b"x", timestamp=T0 + 61, now=T0 + 61)
    assert len(verifier) == 1


def test_replay_cache_expires_by_window() -> None:
    header = _header(HMAC_CFG)
    verifier = MessageVerifier(AuthConfig(shared_key=SHARED, window_s=10.0))
    for i in range(50):
        _verify(verifier, header, nonce=f"a{i}", timestamp=T0 + i, now=T0 + i)
    # nonce a_i is kept until T0 + i + 10: at T0 + 49 that is a39..a49 (plus the new one)
    _verify(verifier, header, nonce="last", timestamp=T0 + 49, now=T0 + 49)
    assert len(verifier) == 12
    # future-dated messages are remembered until their own timestamp leaves the window
    _verify(verifier, header, nonce="future", timestamp=T0 + 59, now=T0 + 49)
    _verify(verifier, header, nonce="tick", timestamp=T0 + 65, now=T0 + 65)
    assert len(verifier) == 2
    assert _reason(verifier, header, nonce="future", timestamp=T0 + 59, now=T0 + 65) == (
        AuthReason.REPLAY
    )


def test_replay_cache_is_capped() -> None:
    header = _header(HMAC_CFG)
    verifier = MessageVerifier(HMAC_CFG, max_nonces=5)
    for i in range(20):
        _verify(verifier, header, nonce=f"n{i}", timestamp=T0 + i / 100, now=T0)
    assert len(verifier) == 5
    # the five latest are still refused; the evicted (soonest to expire) could be replayed
    for i in range(15, 20):
        assert _reason(verifier, header, nonce=f"n{i}", timestamp=T0 + i / 100) == (
            AuthReason.REPLAY
        )
    _verify(verifier, header, nonce="n0", timestamp=T0)
    assert len(verifier) == 5
    with pytest.raises(ConfigError):
        MessageVerifier(HMAC_CFG, max_nonces=0)


def test_forged_message_does_not_poison_the_nonce_cache() -> None:
    verifier = MessageVerifier(ED_RECEIVER)
    forged = _header(AuthConfig(private_key=SEED_B))  # mallory signs as alice with bob's key
    assert _reason(verifier, forged, nonce="fresh") == AuthReason.BAD_AUTH
    assert _reason(verifier, None, nonce="fresh") == AuthReason.MISSING_AUTH
    assert len(verifier) == 0
    _verify(verifier, _header(AuthConfig(private_key=SEED_A)), nonce="fresh")
    assert len(verifier) == 1


# --------------------------------------------------------------------------- config and keys


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        AuthConfig(shared_key=b"short")
    with pytest.raises(ConfigError, match="private key"):
        AuthConfig(private_key=bytes(31))
    with pytest.raises(ConfigError, match="public key of 'x'"):
        AuthConfig(public_keys={"x": bytes(5)})
    for window in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="window"):
            AuthConfig(shared_key=SHARED, window_s=window)
    keys = {"alice": PUB_A}
    config = AuthConfig(public_keys=keys)
    keys["bob"] = PUB_B
    assert dict(config.public_keys) == {"alice": PUB_A}  # a snapshot, not a live view


def test_keypair_and_formats_work_with_peers_file() -> None:
    seed, pub = generate_ed25519_keypair()
    assert len(seed) == 32 and pub == public_key_of(seed)
    assert seed != generate_ed25519_keypair()[0]
    entries = parse_peers(f"10.0.0.1:8000 alice {format_public_key(pub)}\n10.0.0.2:8000 bob\n")
    config = AuthConfig(public_keys=public_keys(entries))
    assert dict(config.public_keys) == {"alice": pub}
    header = _header(AuthConfig(private_key=seed))
    _verify(MessageVerifier(config), header)
    assert len(generate_shared_key()) == 32 and len(generate_shared_key(4)) == 16


def test_key_files_round_trip(tmp_path: Path) -> None:
    seed, _ = generate_ed25519_keypair()
    private = tmp_path / "node.key"
    write_key_file(private, format_private_key(seed))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_key_file(private) == KeyFile("ed25519", seed)
    shared = tmp_path / "shared.key"
    write_key_file(shared, format_shared_key(SHARED))
    assert load_key_file(shared) == KeyFile("hmac-sha256", SHARED)
    b64 = tmp_path / "b64.key"
    b64.write_text(base64.b64encode(SHARED).decode() + "\n")
    assert load_key_file(str(b64)).key == SHARED
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(private, "x")
    private.chmod(0o644)
    write_key_file(private, format_private_key(SEED_A), overwrite=True)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_key_file(private).key == SEED_A


def test_key_file_to_config() -> None:
    ed = KeyFile("ed25519", SEED_A).auth_config({"bob": PUB_B}, window_s=5.0)
    assert ed.private_key == SEED_A and ed.shared_key is None and ed.window_s == 5.0
    assert KeyFile("hmac-sha256", SHARED).auth_config().shared_key == SHARED


def test_pem_private_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.from_private_bytes(SEED_B).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "k.pem"
    path.write_bytes(pem)
    assert load_key_file(path) == KeyFile("ed25519", SEED_B)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "too short"),
        (b"abcd", "too short"),
        (b"not a key at all!", "not a key"),
        (b"ed25519:AAAA", "expected ed25519:"),
        (b"ed25519:!!!", "expected ed25519:"),
        (b"\xff\xfe", "not a text key file"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not an unencrypted PEM",
        ),
        (b"0" * 20000, "larger than"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as info:
        load_key_file(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key file not found"):
        load_key_file(tmp_path / "none.key")
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path)
