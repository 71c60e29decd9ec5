"""Ed25519 keys learned on first use (issue 10): a node with a dynamic sampler meets peers no
peers file names, so it binds each new id to the key that id's first valid signed message
announced, never overwrites a binding, and checks every later message against it.

Each refusal changes one thing of an accepted message, and asserts the reason and a piece of
the detail, so that another check refusing it does not pass for this one.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gossip.errors import ConfigError
from peers.auth import (
    AUTH_HEADER,
    KEY_ITEM,
    AuthConfig,
    AuthError,
    AuthReason,
    MessageSigner,
    MessageVerifier,
    format_public_key,
    parse_public_key,
    public_key_of,
)

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))
SEED_M = bytes(range(2, 34))
PUB_A, PUB_B, PUB_M = (public_key_of(s) for s in (SEED_A, SEED_B, SEED_M))
BODY = b"a message body"
T0 = 1_700_000_000.0
LEARN = AuthConfig(private_key=SEED_B, learn_keys=True)


def _header(seed: bytes, body: bytes = BODY, *, announce: bool = True) -> str:
    return MessageSigner(AuthConfig(private_key=seed, learn_keys=announce)).headers(body)[
        AUTH_HEADER
    ]


def _verify(verifier: MessageVerifier, header: str, sender: str = "alice", **kw: Any) -> None:
    args: dict[str, Any] = dict(nonce="n1", timestamp=T0, body=BODY, now=T0)
    args.update(kw)
    verifier.verify(sender=sender, header=header, **args)


def _refused(verifier: MessageVerifier, header: str, reason: AuthReason, detail: str, **kw: Any):
    with pytest.raises(AuthError) as info:
        _verify(verifier, header, **kw)
    assert info.value.reason is reason, info.value
    assert detail in info.value.detail, info.value
    return info.value


def test_a_learning_signer_announces_its_public_key_and_a_pinned_one_does_not() -> None:
    header = _header(SEED_A)
    items = dict(item.strip().split("=", 1) for item in header.split(","))
    assert items[KEY_ITEM] == base64.b64encode(PUB_A).decode()
    assert set(items) == {"ed25519", KEY_ITEM}
    assert KEY_ITEM not in _header(SEED_A, announce=False)


def test_first_valid_message_binds_the_sender_to_its_announced_key() -> None:
    verifier = MessageVerifier(LEARN)
    assert verifier.key_of("alice") is None
    _verify(verifier, _header(SEED_A))
    assert verifier.key_of("alice") == PUB_A
    assert verifier.learned_keys() == {"alice": PUB_A}
    # Later messages are checked against the binding, announced key or not.
    _verify(verifier, _header(SEED_A, announce=False), nonce="n2")


def test_a_binding_is_never_overwritten_by_another_key() -> None:
    verifier = MessageVerifier(LEARN)
    _verify(verifier, _header(SEED_A))
    # mallory signs as alice with her own key and announces it: refused, binding kept
    _refused(verifier, _header(SEED_M), AuthReason.BAD_AUTH, "another key", nonce="n2")
    _refused(
        verifier, _header(SEED_M, announce=False), AuthReason.BAD_AUTH, "bad ed25519",
        nonce="n3",
    )  # fmt: skip
    assert verifier.key_of("alice") == PUB_A


def test_a_pinned_key_wins_over_an_announced_one() -> None:
    verifier = MessageVerifier(AuthConfig(private_key=SEED_B, public_keys={"alice": PUB_A},
                                          learn_keys=True))  # fmt: skip
    _refused(verifier, _header(SEED_M), AuthReason.BAD_AUTH, "another key")
    assert verifier.learned_keys() == {}
    _verify(verifier, _header(SEED_A))
    assert verifier.learned_keys() == {}  # pinned keys are not "learned"
    assert verifier.key_of("alice") == PUB_A


def test_without_learning_an_announced_key_is_unknown_sender() -> None:
    verifier = MessageVerifier(AuthConfig(private_key=SEED_B, public_keys={"bob": PUB_B}))
    _refused(verifier, _header(SEED_A), AuthReason.UNKNOWN_SENDER, "no public key for 'alice'")
    assert verifier.key_of("alice") is None


def test_learning_without_an_announced_key_is_unknown_sender() -> None:
    verifier = MessageVerifier(LEARN)
    _refused(
        verifier, _header(SEED_A, announce=False), AuthReason.UNKNOWN_SENDER,
        "announced none",
    )  # fmt: skip


def test_an_announced_key_that_does_not_sign_the_message_binds_nothing() -> None:
    verifier = MessageVerifier(LEARN)
    sig_a = _header(SEED_A).split(",")[0]
    forged = f"{sig_a}, {KEY_ITEM}={base64.b64encode(PUB_M).decode()}"
    _refused(verifier, forged, AuthReason.BAD_AUTH, "bad ed25519 signature")
    assert verifier.key_of("alice") is None and len(verifier) == 0


@pytest.mark.parametrize(
    "value", ["", "not base64!", base64.b64encode(bytes(31)).decode(),
              base64.b64encode(bytes(33)).decode()],
)  # fmt: skip
def test_a_malformed_announced_key_is_bad_auth(value: str) -> None:
    sig_a = _header(SEED_A).split(",")[0]
    verifier = MessageVerifier(LEARN)
    _refused(verifier, f"{sig_a}, {KEY_ITEM}={value}", AuthReason.BAD_AUTH, KEY_ITEM)
    assert verifier.key_of("alice") is None


def test_a_stale_or_replayed_message_binds_nothing() -> None:
    verifier = MessageVerifier(LEARN)
    _refused(verifier, _header(SEED_A), AuthReason.STALE, "outside", timestamp=T0 - 61)
    assert verifier.key_of("alice") is None
    verifier.raise_floor(T0)
    _refused(verifier, _header(SEED_A), AuthReason.STALE, "replay floor")
    assert verifier.key_of("alice") is None


def test_learned_bindings_are_capped_and_the_least_recently_seen_goes() -> None:
    verifier = MessageVerifier(LEARN, max_learned_keys=2)
    for i, (sender, seed) in enumerate([("alice", SEED_A), ("mallory", SEED_M)]):
        _verify(verifier, _header(seed), sender=sender, nonce=f"n{i}")
    _verify(verifier, _header(SEED_A), sender="alice", nonce="n9")  # alice seen again
    assert list(verifier.learned_keys()) == ["mallory", "alice"]
    _verify(verifier, _header(SEED_B), sender="bob", nonce="nb")  # the cap is 2: mallory goes
    assert verifier.learned_keys() == {"alice": PUB_A, "bob": PUB_B}


def test_max_learned_keys_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_learned_keys"):
        MessageVerifier(LEARN, max_learned_keys=0)
    MessageVerifier(LEARN, max_learned_keys=1)


def test_bind_restores_a_binding_but_never_replaces_one() -> None:
    verifier = MessageVerifier(AuthConfig(private_key=SEED_B, public_keys={"bob": PUB_B},
                                          learn_keys=True))  # fmt: skip
    assert verifier.bind("alice", PUB_A) is True
    assert verifier.bind("alice", PUB_A) is True  # the same again: consistent
    assert verifier.bind("alice", PUB_M) is False
    assert verifier.bind("bob", PUB_M) is False  # pinned
    assert verifier.key_of("alice") == PUB_A and verifier.key_of("bob") == PUB_B
    _verify(verifier, _header(SEED_A, announce=False))


def test_learning_requires_authentication() -> None:
    assert AuthConfig(private_key=SEED_B, learn_keys=True).require
    assert not AuthConfig(private_key=SEED_B).require


def test_public_key_text_round_trips_and_bad_text_is_none() -> None:
    assert parse_public_key(format_public_key(PUB_A)) == PUB_A
    for bad in ["", "ed25519:", "ed25519:!!!!", "rsa:" + base64.b64encode(PUB_A).decode(),
                "ed25519:" + base64.b64encode(bytes(31)).decode()]:  # fmt: skip
        assert parse_public_key(bad) is None


# ------------------------------------------------------------- boundaries (mutation testing)


def test_a_key_with_a_character_outside_base64_is_refused_not_skipped() -> None:
    text = base64.b64encode(PUB_A).decode()
    broken = text[:10] + "!" + text[10:]  # a lenient decoder would skip the "!"
    assert base64.b64decode(broken) == PUB_A  # (as lenient decoding shows)
    assert parse_public_key("ed25519:" + broken) is None
    sig_a = _header(SEED_A).split(",")[0]
    verifier = MessageVerifier(LEARN)
    _refused(verifier, f"{sig_a}, {KEY_ITEM}={broken}", AuthReason.BAD_AUTH, KEY_ITEM)


def test_key_files_learn_keys_only_when_asked() -> None:
    from peers.auth import KeyFile

    key_file = KeyFile("ed25519", SEED_B)
    assert key_file.auth_config().learn_keys is False
    assert key_file.auth_config(learn_keys=True).learn_keys is True
    assert KeyFile("hmac-sha256", bytes(32)).auth_config(learn_keys=True).learn_keys is False


def test_the_default_cap_on_learned_keys_is_65536() -> None:
    assert MessageVerifier(LEARN).max_learned_keys == 65_536


def test_refusals_name_a_long_sender_in_at_most_128_characters() -> None:
    sender = "s" * 200
    verifier = MessageVerifier(LEARN)
    _verify(verifier, _header(SEED_A), sender=sender)
    error = _refused(verifier, _header(SEED_M), AuthReason.BAD_AUTH, "another key",
                     sender=sender, nonce="n2")  # fmt: skip
    assert repr("s" * 128) in error.detail and repr("s" * 129) not in error.detail
    error = _refused(MessageVerifier(LEARN), _header(SEED_A, announce=False),
                     AuthReason.UNKNOWN_SENDER, "announced none", sender=sender)  # fmt: skip
    assert repr("s" * 128) in error.detail and repr("s" * 129) not in error.detail


def test_without_learning_the_refusal_does_not_mention_an_announcement() -> None:
    verifier = MessageVerifier(AuthConfig(private_key=SEED_B, public_keys={"bob": PUB_B}))
    error = _refused(verifier, _header(SEED_A), AuthReason.UNKNOWN_SENDER, "no public key")
    assert error.detail == "no public key for 'alice' in the peers file"
