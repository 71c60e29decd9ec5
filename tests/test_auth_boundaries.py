"""Every check of message authentication, pinned at its boundary (issue 13).

Each refused input here is a valid one with exactly one thing changed, so that the check
under test is the only one it fails: removing that check, or moving its bound by one, makes
the test fail. Refusals assert the :class:`AuthReason` and a piece of the detail (or of the
:class:`ConfigError` message), so that a different check refusing the input does not pass
for this one. Limits are probed at the limit (accepted) and one step past it (refused).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gossip.errors import ConfigError
from peers.auth import (
    AUTH_HEADER,
    DOMAIN,
    MAX_HEADER_CHARS,
    MAX_KEY_FILE_BYTES,
    MIN_SHARED_KEY_BYTES,
    AuthConfig,
    AuthError,
    AuthReason,
    KeyFile,
    MessageSigner,
    MessageVerifier,
    format_private_key,
    generate_shared_key,
    load_key_file,
    public_key_of,
    restart_floor,
    signed_message,
    write_key_file,
)

SHARED = bytes(range(100, 132))
SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))
PUB_A = public_key_of(SEED_A)
PUB_B = public_key_of(SEED_B)
BODY = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{"nonce":"n1"}}' + bytes(64)
T0 = 1_700_000_000.0
WINDOW = 60.0

HMAC_CFG = AuthConfig(shared_key=SHARED, window_s=WINDOW)
ED_CFG = AuthConfig(public_keys={"alice": PUB_A, "bob": PUB_B}, window_s=WINDOW)
BOTH_CFG = AuthConfig(shared_key=SHARED, public_keys={"alice": PUB_A}, window_s=WINDOW)


def _header(config: AuthConfig, body: bytes = BODY) -> str:
    return MessageSigner(config).headers(body)[AUTH_HEADER]


HMAC_HEADER = _header(AuthConfig(shared_key=SHARED))
ED_HEADER_A = _header(AuthConfig(private_key=SEED_A))  # alice's signature of BODY
HMAC_HEX = HMAC_HEADER.partition("=")[2]
SIG_A = ED_HEADER_A.partition("=")[2]


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


def _refuse(
    config_or_verifier: AuthConfig | MessageVerifier,
    header: str | None,
    reason: AuthReason,
    detail: str,
    **kw: Any,
) -> MessageVerifier:
    verifier = (
        config_or_verifier
        if isinstance(config_or_verifier, MessageVerifier)
        else MessageVerifier(config_or_verifier)
    )
    before = len(verifier)
    with pytest.raises(AuthError) as info:
        _verify(verifier, header, **kw)
    assert info.value.reason is reason, info.value
    assert detail in info.value.detail, info.value
    assert len(verifier) == before  # a refused message never enters the nonce cache
    return verifier


def _accept(
    config_or_verifier: AuthConfig | MessageVerifier, header: str | None, **kw: Any
) -> MessageVerifier:
    verifier = (
        config_or_verifier
        if isinstance(config_or_verifier, MessageVerifier)
        else MessageVerifier(config_or_verifier)
    )
    _verify(verifier, header, **kw)
    # an accepted message is remembered at once: the very same message is now a replay
    with pytest.raises(AuthError) as info:
        _verify(verifier, header, **kw)
    assert info.value.reason is AuthReason.REPLAY, info.value
    return verifier


def test_the_base_headers_are_valid() -> None:
    digest = hmac.new(SHARED, DOMAIN + hashlib.sha256(BODY).digest(), "sha256").hexdigest()
    assert HMAC_HEADER.partition("=") == ("hmac-sha256", "=", digest)
    assert len(base64.b64decode(SIG_A, validate=True)) == 64
    _accept(HMAC_CFG, HMAC_HEADER)
    _accept(ED_CFG, ED_HEADER_A)
    _accept(BOTH_CFG, ED_HEADER_A)
    _accept(BOTH_CFG, HMAC_HEADER, sender="carol")  # carol has no public key


# --------------------------------------------------------------------------- configuration


def test_shared_key_of_15_bytes_is_refused_16_accepted() -> None:
    assert MIN_SHARED_KEY_BYTES == 16
    with pytest.raises(ConfigError, match="shared key has 15 bytes"):
        AuthConfig(shared_key=bytes(15))
    key = bytes(range(16))
    config = AuthConfig(shared_key=key)
    _accept(config, _header(config))
    with pytest.raises(ConfigError, match="shared key has 0 bytes"):
        AuthConfig(shared_key=b"")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_private_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ConfigError, match=f"private key has {size} bytes, not 32"):
        AuthConfig(private_key=bytes(size))


@pytest.mark.parametrize("size", [0, 31, 33])
def test_public_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ConfigError, match=f"public key of 'bob' has {size} bytes, not 32"):
        AuthConfig(public_keys={"alice": PUB_A, "bob": bytes(size)})


def test_keys_of_the_right_size_are_accepted() -> None:
    config = AuthConfig(private_key=SEED_A, public_keys={"alice": PUB_A})
    assert config.private_key == SEED_A and dict(config.public_keys) == {"alice": PUB_A}


@pytest.mark.parametrize("window", [0.0, -0.0, -1.0, -math.inf, math.inf, math.nan])
def test_window_must_be_positive_and_finite(window: float) -> None:
    with pytest.raises(ConfigError, match="window"):
        AuthConfig(shared_key=SHARED, window_s=window)


def test_smallest_positive_window_is_accepted() -> None:
    config = AuthConfig(shared_key=SHARED, window_s=5e-324)
    _accept(config, HMAC_HEADER)
    _refuse(config, HMAC_HEADER, AuthReason.STALE, "outside", now=math.nextafter(T0, math.inf))


def test_require_follows_the_verifying_keys() -> None:
    assert AuthConfig(shared_key=SHARED).require
    assert AuthConfig(public_keys={"alice": PUB_A}).require
    assert not AuthConfig(private_key=SEED_A).require  # signs, but checks nothing
    assert not AuthConfig(public_keys={}).require
    assert not AuthConfig().require


def test_without_verifying_keys_nothing_is_checked() -> None:
    verifier = MessageVerifier(AuthConfig(private_key=SEED_A))
    for header in (None, "", "garbage", "x" * 5000):
        _verify(verifier, header, timestamp=math.nan, now=T0)
    assert len(verifier) == 0


def test_max_nonces_of_0_is_refused_1_accepted() -> None:
    with pytest.raises(ConfigError, match="max_nonces 0"):
        MessageVerifier(HMAC_CFG, max_nonces=0)
    with pytest.raises(ConfigError, match="max_nonces -1"):
        MessageVerifier(HMAC_CFG, max_nonces=-1)
    verifier = MessageVerifier(HMAC_CFG, max_nonces=1)
    _accept(verifier, HMAC_HEADER, nonce="a")
    _accept(verifier, HMAC_HEADER, nonce="b")
    assert len(verifier) == 1


def test_no_keys_sign_nothing_and_both_keys_sign_both() -> None:
    assert MessageSigner(AuthConfig()).headers(BODY) == {}
    assert MessageSigner(AuthConfig(public_keys={"alice": PUB_A})).headers(BODY) == {}
    both = _header(AuthConfig(shared_key=SHARED, private_key=SEED_A))
    assert both == f"{ED_HEADER_A}, {HMAC_HEADER}"
    assert signed_message(BODY) == DOMAIN + hashlib.sha256(BODY).digest()


# --------------------------------------------------------------------------- header parsing


def test_header_of_1024_characters_is_accepted_1025_refused() -> None:
    assert MAX_HEADER_CHARS == 1024
    at_limit = " " * (MAX_HEADER_CHARS - len(HMAC_HEADER)) + HMAC_HEADER
    assert len(at_limit) == 1024
    _accept(HMAC_CFG, at_limit)
    _refuse(HMAC_CFG, " " + at_limit, AuthReason.BAD_AUTH, "longer than 1024")


def test_item_without_equals_sign_is_malformed() -> None:
    _refuse(HMAC_CFG, HMAC_HEADER + ", future", AuthReason.BAD_AUTH, "malformed")


def test_item_with_empty_scheme_is_malformed() -> None:
    _refuse(HMAC_CFG, HMAC_HEADER + ", =abc", AuthReason.BAD_AUTH, "malformed")
    _refuse(HMAC_CFG, HMAC_HEADER + ",  = abc", AuthReason.BAD_AUTH, "malformed")


def test_empty_item_is_malformed() -> None:
    _refuse(HMAC_CFG, HMAC_HEADER + ",", AuthReason.BAD_AUTH, "malformed")
    _refuse(HMAC_CFG, "," + HMAC_HEADER, AuthReason.BAD_AUTH, "malformed")


def test_duplicate_scheme_is_malformed() -> None:
    _refuse(HMAC_CFG, f"{HMAC_HEADER}, {HMAC_HEADER}", AuthReason.BAD_AUTH, "malformed")
    # schemes are case-insensitive, so a different spelling is still a duplicate
    _refuse(HMAC_CFG, f"{HMAC_HEADER},HMAC-SHA256={HMAC_HEX}", AuthReason.BAD_AUTH, "malformed")
    _refuse(ED_CFG, f"{ED_HEADER_A}, {ED_HEADER_A}", AuthReason.BAD_AUTH, "malformed")


def test_scheme_case_spaces_and_unknown_schemes_are_tolerated() -> None:
    verifier = _accept(HMAC_CFG, f"  HMAC-SHA256 = {HMAC_HEX}  ")
    _accept(verifier, f"x-future=1, {HMAC_HEADER}", nonce="n2")
    _accept(verifier, f"hmac-sha256={HMAC_HEX.upper()}", nonce="n3")
    _accept(ED_CFG, f"Ed25519 ={SIG_A}")


@pytest.mark.parametrize("header", [None, "", " ", " \t "])
@pytest.mark.parametrize("config", [HMAC_CFG, ED_CFG], ids=["hmac", "ed25519"])
def test_missing_or_blank_header_is_missing_auth(config: AuthConfig, header: str | None) -> None:
    _refuse(config, header, AuthReason.MISSING_AUTH, "no X-Gossip-Auth header")


# --------------------------------------------------------------------------- ed25519


def test_known_sender_without_ed25519_is_refused_even_with_a_good_hmac() -> None:
    _refuse(BOTH_CFG, HMAC_HEADER, AuthReason.BAD_AUTH, "has a public key but sent no ed25519")


def test_ed25519_signature_with_a_non_base64_character_is_refused() -> None:
    # without strict base64 the '*' would be skipped and the signature would verify
    forged = SIG_A[:10] + "*" + SIG_A[10:]
    _refuse(ED_CFG, f"ed25519={forged}", AuthReason.BAD_AUTH, "bad ed25519 signature")


@pytest.mark.parametrize("size", [0, 63, 65])
def test_ed25519_signature_of_the_wrong_length_is_refused(size: int) -> None:
    raw = base64.b64decode(SIG_A)
    sig = (raw + b"\0")[:size] if size <= 64 else raw + bytes(size - 64)
    header = "ed25519=" + base64.b64encode(sig).decode()
    _refuse(ED_CFG, header, AuthReason.BAD_AUTH, "bad ed25519 signature")


@pytest.mark.parametrize("value", ["é" + SIG_A[1:], "\x00" + SIG_A[1:], SIG_A + "é"])
def test_ed25519_signature_with_a_non_ascii_character_is_a_clean_refusal(value: str) -> None:
    _refuse(ED_CFG, f"ed25519={value}", AuthReason.BAD_AUTH, "bad ed25519 signature")


def test_hmac_with_a_non_ascii_character_is_a_clean_refusal() -> None:
    _refuse(HMAC_CFG, f"hmac-sha256=é{HMAC_HEX[1:]}", AuthReason.BAD_AUTH, "bad hmac-sha256")


def test_ed25519_signature_with_one_bit_flipped_is_refused() -> None:
    raw = bytearray(base64.b64decode(SIG_A))
    raw[0] ^= 1
    header = "ed25519=" + base64.b64encode(bytes(raw)).decode()
    _refuse(ED_CFG, header, AuthReason.BAD_AUTH, "bad ed25519 signature")


def test_ed25519_signature_of_another_senders_key_is_refused() -> None:
    by_b = _header(AuthConfig(private_key=SEED_B))
    _refuse(ED_CFG, by_b, AuthReason.BAD_AUTH, "bad ed25519 signature")  # presented as alice's
    _accept(ED_CFG, by_b, sender="bob")


def test_ed25519_signature_without_the_domain_tag_is_refused() -> None:
    sig = Ed25519PrivateKey.from_private_bytes(SEED_A).sign(hashlib.sha256(BODY).digest())
    header = "ed25519=" + base64.b64encode(sig).decode()
    _refuse(ED_CFG, header, AuthReason.BAD_AUTH, "bad ed25519 signature")


def test_ed25519_of_a_changed_body_is_refused() -> None:
    _refuse(ED_CFG, ED_HEADER_A, AuthReason.BAD_AUTH, "bad ed25519", body=BODY[:-1] + b"\1")


def test_a_good_ed25519_signature_decides_for_a_known_sender() -> None:
    # a known sender is judged by its signature alone: a bad hmac beside it does not matter
    _accept(BOTH_CFG, f"{ED_HEADER_A}, hmac-sha256={'0' * 64}")


def test_ed25519_from_a_sender_without_public_key_is_unknown_sender() -> None:
    _refuse(
        ED_CFG, ED_HEADER_A, AuthReason.UNKNOWN_SENDER, "no public key for 'carol'", sender="carol"
    )
    _refuse(HMAC_CFG, ED_HEADER_A, AuthReason.UNKNOWN_SENDER, "no public key for 'alice'")


# --------------------------------------------------------------------------- hmac


@pytest.mark.parametrize(
    "value",
    [
        HMAC_HEX[:-1],  # one hex digit short
        HMAC_HEX + "0",  # one hex digit more
        HMAC_HEX[:-1] + ("0" if HMAC_HEX[-1] != "0" else "1"),  # last digit changed
        "",
    ],
)
def test_hmac_that_differs_in_one_digit_is_refused(value: str) -> None:
    _refuse(HMAC_CFG, f"hmac-sha256={value}", AuthReason.BAD_AUTH, "bad hmac-sha256")


def test_hmac_without_the_domain_tag_is_refused() -> None:
    undomained = hmac.new(SHARED, hashlib.sha256(BODY).digest(), "sha256").hexdigest()
    _refuse(HMAC_CFG, f"hmac-sha256={undomained}", AuthReason.BAD_AUTH, "bad hmac-sha256")


def test_hmac_of_a_changed_body_is_refused() -> None:
    _refuse(HMAC_CFG, HMAC_HEADER, AuthReason.BAD_AUTH, "bad hmac-sha256", body=BODY + b"\0")


def test_hmac_to_a_node_without_a_shared_key_is_a_clean_refusal() -> None:
    # the node checks only signatures: an hmac header is no usable scheme (not a TypeError
    # from hashing with a missing key)
    _refuse(ED_CFG, HMAC_HEADER, AuthReason.BAD_AUTH, "no usable scheme", sender="carol")
    _refuse(ED_CFG, HMAC_HEADER, AuthReason.BAD_AUTH, "sent no ed25519", sender="alice")


def test_only_unknown_schemes_is_no_usable_scheme() -> None:
    _refuse(HMAC_CFG, "x-future=abc", AuthReason.BAD_AUTH, "no usable scheme")


def test_good_hmac_beside_an_unverifiable_signature_is_accepted() -> None:
    # carol has no public key: her signature cannot be checked, the shared key can
    _accept(BOTH_CFG, f"{ED_HEADER_A}, {HMAC_HEADER}", sender="carol")


# --------------------------------------------------------------------------- timestamp window


@pytest.mark.parametrize("offset", [WINDOW, -WINDOW])
def test_timestamp_at_the_window_edge_is_accepted_one_ulp_past_refused(offset: float) -> None:
    edge = T0 + offset  # now - timestamp is exactly ±window
    _accept(HMAC_CFG, HMAC_HEADER, now=edge)
    past = math.nextafter(edge, math.inf if offset > 0 else -math.inf)
    assert abs(past - T0) > WINDOW
    _refuse(HMAC_CFG, HMAC_HEADER, AuthReason.STALE, "outside ±60 s", now=past)


def test_a_custom_window_is_inclusive() -> None:
    config = AuthConfig(shared_key=SHARED, window_s=10.0)
    _accept(config, HMAC_HEADER, timestamp=T0 - 10.0)
    _refuse(
        config,
        HMAC_HEADER,
        AuthReason.STALE,
        "outside ±10 s",
        timestamp=math.nextafter(T0 - 10.0, -math.inf),
    )


@pytest.mark.parametrize("timestamp", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamp_is_stale(timestamp: float) -> None:
    _refuse(HMAC_CFG, HMAC_HEADER, AuthReason.STALE, "outside", timestamp=timestamp)


def test_the_window_is_checked_after_the_signature() -> None:
    # a forged and stale message is refused for its signature
    _refuse(HMAC_CFG, f"hmac-sha256={'0' * 64}", AuthReason.BAD_AUTH, "bad hmac", now=T0 + 1e6)


# --------------------------------------------------------------------------- replay floor


def test_timestamp_at_the_floor_is_refused_just_above_accepted() -> None:
    verifier = MessageVerifier(HMAC_CFG, floor=T0)
    _refuse(verifier, HMAC_HEADER, AuthReason.STALE, "replay floor")
    _accept(verifier, HMAC_HEADER, timestamp=math.nextafter(T0, math.inf))


def test_floor_is_raised_never_lowered() -> None:
    verifier = MessageVerifier(HMAC_CFG, floor=T0)
    verifier.raise_floor(T0 - 100)
    assert verifier.floor == T0
    verifier.raise_floor(-math.inf)
    assert verifier.floor == T0
    verifier.raise_floor(T0 + 1)
    assert verifier.floor == T0 + 1
    _refuse(verifier, HMAC_HEADER, AuthReason.STALE, "replay floor", timestamp=T0 + 1)


@pytest.mark.parametrize("floor", [math.nan, math.inf])
def test_floor_must_be_finite_or_minus_infinity(floor: float) -> None:
    with pytest.raises(ValueError, match="replay floor"):
        MessageVerifier(HMAC_CFG, floor=floor)
    with pytest.raises(ValueError, match="replay floor"):
        MessageVerifier(HMAC_CFG).raise_floor(floor)
    assert MessageVerifier(HMAC_CFG, floor=-math.inf).floor == -math.inf


def test_high_water_is_the_larger_of_floor_and_accepted() -> None:
    verifier = MessageVerifier(HMAC_CFG)
    assert verifier.high_water == -math.inf
    _accept(verifier, HMAC_HEADER, timestamp=T0 + 5)
    assert verifier.high_water == T0 + 5
    _accept(verifier, HMAC_HEADER, nonce="older", timestamp=T0 + 1)
    assert verifier.high_water == T0 + 5
    _refuse(verifier, HMAC_HEADER, AuthReason.STALE, "outside", nonce="x", timestamp=T0 + 61)
    _refuse(verifier, "hmac-sha256=00", AuthReason.BAD_AUTH, "bad hmac", timestamp=T0 + 9)
    assert verifier.high_water == T0 + 5  # refused messages do not count
    verifier.raise_floor(T0 + 7)
    assert verifier.high_water == T0 + 7


def test_restart_floor() -> None:
    assert restart_floor(start=T0, window_s=WINDOW) == T0
    assert restart_floor(start=T0, window_s=WINDOW, high_water=T0 + 1) == T0 + 1
    assert restart_floor(start=T0, window_s=WINDOW, high_water=T0 - 1) == T0
    crash = restart_floor(start=T0, window_s=WINDOW, high_water=T0 + 1, clean_stop=False)
    assert crash == T0 + WINDOW
    crash = restart_floor(start=T0, window_s=WINDOW, high_water=T0 + 61, clean_stop=False)
    assert crash == T0 + 61
    # a high-water mark that is not a finite time (a damaged checkpoint) is ignored
    for high_water in (-math.inf, math.inf, math.nan):
        assert restart_floor(start=T0, window_s=WINDOW, high_water=high_water) == T0


@pytest.mark.parametrize(
    ("start", "window"),
    [(math.nan, 60.0), (math.inf, 60.0), (T0, 0.0), (T0, -1.0), (T0, math.inf), (T0, math.nan)],
)
def test_restart_floor_refuses_non_finite_start_or_bad_window(start: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        restart_floor(start=start, window_s=window)


# --------------------------------------------------------------------------- nonce cache


def test_replay_is_refused_per_sender_and_nonce() -> None:
    verifier = _accept(HMAC_CFG, HMAC_HEADER)
    _refuse(verifier, HMAC_HEADER, AuthReason.REPLAY, "nonce 'n1' of 'alice' seen")
    _accept(verifier, HMAC_HEADER, sender="bob")
    _accept(verifier, HMAC_HEADER, nonce="n2")
    assert len(verifier) == 3


def test_a_nonce_is_remembered_until_its_timestamp_leaves_the_window() -> None:
    verifier = _accept(HMAC_CFG, HMAC_HEADER)  # remembered until T0 + 60
    # at exactly T0 + 60 the message is still inside the window, and still remembered
    _refuse(verifier, HMAC_HEADER, AuthReason.REPLAY, "seen", now=T0 + WINDOW)
    # one ulp later it is stale (refused before the cache is looked at)
    past = math.nextafter(T0 + WINDOW, math.inf)
    _refuse(verifier, HMAC_HEADER, AuthReason.STALE, "outside", now=past)
    assert len(verifier) == 1
    # the next accepted message expires it
    _accept(verifier, HMAC_HEADER, nonce="n2", timestamp=past, now=past)
    assert len(verifier) == 1


def test_a_future_dated_nonce_is_remembered_until_its_own_expiry() -> None:
    verifier = _accept(HMAC_CFG, HMAC_HEADER, timestamp=T0 + WINDOW)  # at the window's edge
    _accept(verifier, HMAC_HEADER, nonce="n2", timestamp=T0 + 2 * WINDOW, now=T0 + 2 * WINDOW)
    _refuse(
        verifier,
        HMAC_HEADER,
        AuthReason.REPLAY,
        "seen",
        timestamp=T0 + WINDOW,
        now=T0 + 2 * WINDOW,
    )
    assert len(verifier) == 2


def test_a_full_cache_holds_max_nonces_and_evicts_the_soonest_to_expire() -> None:
    verifier = MessageVerifier(HMAC_CFG, max_nonces=3)
    stamps = {"a": T0 + 3, "b": T0 + 1, "c": T0 + 2}  # "b" expires first, "a" came first
    for nonce, ts in stamps.items():
        _accept(verifier, HMAC_HEADER, nonce=nonce, timestamp=ts, now=T0 + 3)
    assert len(verifier) == 3
    _accept(verifier, HMAC_HEADER, nonce="d", timestamp=T0 + 4, now=T0 + 3)
    assert len(verifier) == 3
    for nonce, ts in {**stamps, "d": T0 + 4}.items():
        if nonce != "b":
            _refuse(
                verifier,
                HMAC_HEADER,
                AuthReason.REPLAY,
                "seen",
                nonce=nonce,
                timestamp=ts,
                now=T0 + 3,
            )
    _accept(verifier, HMAC_HEADER, nonce="b", timestamp=T0 + 1, now=T0 + 3)  # evicted: replayable
    assert len(verifier) == 3


def test_refused_messages_leave_the_cache_alone() -> None:
    verifier = MessageVerifier(ED_CFG)
    forged = _header(AuthConfig(private_key=SEED_B))  # signed with bob's key, sent as alice
    _refuse(verifier, forged, AuthReason.BAD_AUTH, "bad ed25519", nonce="fresh")
    _refuse(verifier, None, AuthReason.MISSING_AUTH, "no X-Gossip-Auth", nonce="fresh")
    _refuse(verifier, ED_HEADER_A, AuthReason.STALE, "outside", nonce="fresh", now=T0 + 61)
    _accept(verifier, ED_HEADER_A, nonce="fresh")
    assert len(verifier) == 1


# --------------------------------------------------------------------------- key files


def _key_file(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "test.key"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _refuse_key(path: Path, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_key_file(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_key_file_of_16_kib_is_read_one_byte_more_refused(tmp_path: Path) -> None:
    assert MAX_KEY_FILE_BYTES == 16 * 1024
    text = SHARED.hex()
    path = _key_file(tmp_path, text + "\n" * (MAX_KEY_FILE_BYTES - len(text)))
    assert path.stat().st_size == MAX_KEY_FILE_BYTES
    assert load_key_file(path) == KeyFile("hmac-sha256", SHARED)
    path = _key_file(tmp_path, text + "\n" * (MAX_KEY_FILE_BYTES + 1 - len(text)))
    _refuse_key(path, "larger than 16384 bytes")


def test_key_file_with_a_non_ascii_byte_is_refused(tmp_path: Path) -> None:
    _refuse_key(_key_file(tmp_path, SHARED.hex().encode() + b"\xe9"), "non-ASCII")


def test_missing_or_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    _refuse_key(tmp_path / "absent.key", "key file not found")
    _refuse_key(tmp_path, "cannot read the key file")


@pytest.mark.parametrize("encode", [bytes.hex, lambda b: base64.b64encode(b).decode()])
def test_shared_key_of_15_bytes_is_refused_16_read(tmp_path: Path, encode: Any) -> None:
    key = bytes(range(200, 216))
    assert load_key_file(_key_file(tmp_path, encode(key))) == KeyFile("hmac-sha256", key)
    _refuse_key(_key_file(tmp_path, encode(key[:15])), "shared key of 15 bytes is too short")


def test_even_hex_text_is_read_as_hex_not_base64(tmp_path: Path) -> None:
    text = "00" * 16  # valid base64 too (24 bytes), but hex wins
    assert load_key_file(_key_file(tmp_path, f"  {text}\n")) == KeyFile("hmac-sha256", bytes(16))
    assert load_key_file(_key_file(tmp_path, SHARED.hex().upper())).key == SHARED


def test_base64_shared_key_with_a_stray_character_is_refused(tmp_path: Path) -> None:
    text = base64.b64encode(SHARED).decode()
    assert load_key_file(_key_file(tmp_path, text)).key == SHARED
    _refuse_key(_key_file(tmp_path, text[:8] + "*" + text[8:]), "not a key")


@pytest.mark.parametrize("size", [0, 31, 33])
def test_ed25519_seed_must_be_32_bytes(tmp_path: Path, size: int) -> None:
    text = format_private_key(bytes(range(size)))
    _refuse_key(_key_file(tmp_path, text), "expected ed25519: followed by")


def test_ed25519_seed_of_32_bytes_is_read(tmp_path: Path) -> None:
    path = _key_file(tmp_path, format_private_key(SEED_A) + "\n")
    assert load_key_file(path) == KeyFile("ed25519", SEED_A)


def test_ed25519_seed_with_a_stray_character_is_refused(tmp_path: Path) -> None:
    text = format_private_key(SEED_A)
    _refuse_key(_key_file(tmp_path, text[:12] + "*" + text[12:]), "expected ed25519: followed by")


def _pem(key: Any, encryption: Any = None) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )
    return data


def test_ed25519_pem_is_read(tmp_path: Path) -> None:
    pem = _pem(Ed25519PrivateKey.from_private_bytes(SEED_B))
    assert load_key_file(_key_file(tmp_path, pem)) == KeyFile("ed25519", SEED_B)


@pytest.mark.parametrize(
    "key",
    [
        x25519.X25519PrivateKey.from_private_bytes(SEED_A),  # also a 32-byte raw key
        ed448.Ed448PrivateKey.from_private_bytes(bytes(range(57))),
        ec.derive_private_key(12345, ec.SECP256R1()),
    ],
    ids=["x25519", "ed448", "p256"],
)
def test_pem_key_that_is_not_ed25519_is_refused(tmp_path: Path, key: Any) -> None:
    _refuse_key(_key_file(tmp_path, _pem(key)), "the PEM key is not an Ed25519 key")


def test_encrypted_or_public_pem_is_refused(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.from_private_bytes(SEED_A)
    encrypted = _pem(private, serialization.BestAvailableEncryption(b"secret"))
    _refuse_key(_key_file(tmp_path, encrypted), "not an unencrypted PEM private key")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _refuse_key(_key_file(tmp_path, public), "not an unencrypted PEM private key")


def test_generate_shared_key_never_goes_below_16_bytes() -> None:
    assert len(generate_shared_key(15)) == 16
    assert len(generate_shared_key(16)) == 16
    assert len(generate_shared_key(17)) == 17


def test_write_key_file_is_private_and_does_not_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, format_private_key(SEED_A) + "\n\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == format_private_key(SEED_A) + "\n"
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(path, format_private_key(SEED_B))
    assert load_key_file(path).key == SEED_A
    path.chmod(0o644)
    write_key_file(path, format_private_key(SEED_B), overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and load_key_file(path).key == SEED_B
    with pytest.raises(ConfigError, match="cannot create the key file"):
        write_key_file(tmp_path / "no-such-dir" / "k.key", "x")


def test_key_file_to_auth_config() -> None:
    ed = KeyFile("ed25519", SEED_A).auth_config({"bob": PUB_B}, window_s=5.0)
    assert (ed.private_key, ed.shared_key, ed.window_s) == (SEED_A, None, 5.0)
    assert dict(ed.public_keys) == {"bob": PUB_B}
    shared = KeyFile("hmac-sha256", SHARED).auth_config()
    assert (shared.shared_key, shared.private_key, shared.window_s) == (SHARED, None, 60.0)


# --------------------------------------------------------------------------- what is said


def test_an_auth_error_reads_reason_then_detail() -> None:
    error = AuthError(AuthReason.REPLAY, "nonce 'n1' seen")
    assert str(error) == "replay: nonce 'n1' seen"
    assert error.reason is AuthReason.REPLAY and error.detail == "nonce 'n1' seen"


def test_the_default_nonce_cache_holds_100000() -> None:
    assert MessageVerifier(HMAC_CFG).max_nonces == 100_000


@pytest.mark.parametrize(("offset", "shown"), [(-100.0, "+100.0"), (100.0, "-100.0")])
def test_the_stale_detail_gives_the_signed_offset(offset: float, shown: str) -> None:
    _refuse(
        HMAC_CFG, HMAC_HEADER, AuthReason.STALE,
        f"timestamp is {shown} s from now, outside ±60 s", timestamp=T0 + offset,
    )  # fmt: skip


def test_the_floor_detail_gives_how_far_below_it() -> None:
    verifier = MessageVerifier(HMAC_CFG, floor=T0 + 2.5)
    _refuse(verifier, HMAC_HEADER, AuthReason.STALE, "replay floor (by 2.5 s)", timestamp=T0)


def test_the_signature_failures_say_which_scheme() -> None:
    bad_sig = base64.b64encode(bytes(64)).decode()
    _refuse(ED_CFG, f"ed25519={bad_sig}", AuthReason.BAD_AUTH, "bad ed25519 signature")
    _refuse(HMAC_CFG, "hmac-sha256=" + "0" * 64, AuthReason.BAD_AUTH, "bad hmac-sha256")
    with pytest.raises(AuthError) as info:
        _verify(MessageVerifier(HMAC_CFG), "hmac-sha256=" + "0" * 64)
    assert info.value.detail == "bad hmac-sha256"
    with pytest.raises(AuthError) as info:
        _verify(MessageVerifier(ED_CFG), f"ed25519={bad_sig}")
    assert info.value.detail == "bad ed25519 signature"


def test_among_nonces_that_expire_together_the_oldest_is_forgotten_first() -> None:
    # A full cache forgets what expires soonest; ties (same timestamp) go in arrival order.
    verifier = MessageVerifier(HMAC_CFG, max_nonces=2)
    for nonce in ("n-b", "n-a", "n-c"):  # the third evicts one of the first two
        _verify(verifier, HMAC_HEADER, nonce=nonce)
    _verify(verifier, HMAC_HEADER, nonce="n-b")  # forgotten: accepted again
    with pytest.raises(AuthError) as info:
        _verify(verifier, HMAC_HEADER, nonce="n-c")
    assert info.value.reason is AuthReason.REPLAY


def test_a_restart_floor_with_a_window_below_one_second() -> None:
    assert restart_floor(start=T0, window_s=0.5, clean_stop=False) == T0 + 0.5


def test_a_key_file_config_carries_the_public_keys_and_window() -> None:
    hmac_file = KeyFile("hmac-sha256", SHARED)
    config = hmac_file.auth_config({"alice": PUB_A}, window_s=5.0)
    assert config.shared_key == SHARED and config.window_s == 5.0
    assert dict(config.public_keys) == {"alice": PUB_A}
    ed_file = KeyFile("ed25519", SEED_A)
    config = ed_file.auth_config({"bob": PUB_B}, window_s=7.0)
    assert config.private_key == SEED_A and config.window_s == 7.0
    assert dict(config.public_keys) == {"bob": PUB_B}


def test_a_bad_ed25519_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("ed25519:AAAA\n")
    with pytest.raises(ConfigError) as info:
        load_key_file(path)
    assert str(info.value) == (
        f"{path}: expected ed25519: followed by the base64 of a 32-byte private seed; make one"
        " with the key generation command"
    )


def test_overwriting_a_key_file_that_does_not_exist_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    write_key_file(path, generate_shared_key().hex(), overwrite=True)
    assert load_key_file(path).kind == "hmac-sha256"


def test_a_key_text_ending_in_x_is_written_whole(tmp_path: Path) -> None:
    # Base64 may end in any letter: only newlines are trimmed before the one final newline.
    path = tmp_path / "k"
    write_key_file(path, "ed25519:abcX\n\n")
    assert path.read_text() == "ed25519:abcX\n"
