"""Optional authentication of gossip messages: shared-key HMAC or Ed25519 signatures.

What is signed is the HTTP body, i.e. the whole safetensors message, whose metadata carries
the sender, nonce and timestamp: the signature covers the header, the payload, the nonce and
the timestamp at once. Both schemes sign ``b"gossip-v1\\n" + sha256(body)`` and travel in
one HTTP header::

    X-Gossip-Auth: hmac-sha256=<hex>              (shared key, every node holds the same)
    X-Gossip-Auth: ed25519=<base64 signature>     (per-node private key; the receiver
                                                   checks it with the sender's public key
                                                   from peers.txt)

A node holding both keys sends both, comma separated. A receiver that knows the sender's
public key insists on its Ed25519 signature (a shared key, which every member holds, cannot
prove who sent a message); otherwise it checks the HMAC.

Keys learned on first use (``AuthConfig.learn_keys``, set by a node with a dynamic sampler,
whose peers are mostly not in its peers file). A learning signer also announces its public
key, ``X-Gossip-Auth: ed25519=<sig>, ed25519-key=<base64 public key>``. A learning verifier
that holds no key for the sender checks the signature with the announced key and, once the
whole message is accepted (signature, window, floor, nonce), *binds* the sender's id to that
key: from then on the id is that key, exactly as if the peers file had listed it. A binding
is never replaced, neither by another announced key (refused: ``bad_auth``) nor by anything
else; keys in the peers file are pinned and win over announced ones. What first use cannot
prevent: whoever first presents an id nobody has bound yet owns it at this node, so list the
keys of the peers that matter (seeds, say) in the peers file. The learned bindings are
bounded (``max_learned_keys``; the least recently seen one is forgotten, which opens first
use again for that id), and a node keeps the bindings of the peers in its view across
restarts (the checkpoint stores their keys with the view).

Against replay, a verified message is accepted only when ``|now - timestamp| <= window_s``
and its ``(sender, nonce)`` was not seen before. The nonce cache forgets a nonce once its
timestamp has left the window (a replay of it would be stale anyway) and never holds more
than ``max_nonces`` entries: when full it evicts the nonces that leave the window first.
Such an evicted nonce could be replayed, but only until its timestamp leaves the window;
choose ``max_nonces`` above the number of messages a node accepts per ``2 * window_s``.
Staleness and replay are checked only after the signature, so that forged messages can
neither fill the cache nor block a genuine nonce. Clocks of peers must agree to within the
window (use NTP).

Across restarts. The nonce cache lives in memory: a restarted node would accept again what its
previous run accepted. So the verifier also has a *floor*, and accepts only timestamps
strictly above it. The node stores :attr:`MessageVerifier.high_water` (the largest timestamp
it accepted, or its floor if larger) in every checkpoint, marks the checkpoint written by a
clean stop as such, writes a checkpoint as it starts (before it listens), and then, as it
starts, raises the floor to :func:`restart_floor` of the newest checkpoint::

    floor = max(high_water, start)              the previous run stopped cleanly
    floor = max(high_water, start + window_s)   it did not (crash, kill -9, power loss)
    floor = start                               no checkpoint (first start, no directory)

``start`` is the wall clock read after the checkpoint was loaded. Why this is complete, i.e.
why every message a previous run accepted is refused:

* Clean stop: the final checkpoint is written after the server stopped accepting (requests
  in flight finish first) and after the gossip loop (pulls) stopped, so its ``high_water`` is
  at least every timestamp the previous run accepted; all of them are <= the floor, whatever
  the wall clock did across the restart (it may even have stepped back: ``high_water`` does
  not depend on it).
* Crash: what was accepted before the newest checkpoint is covered by its ``high_water``. A
  message accepted after it was accepted at some time ``t <= crash <= start`` (our clock did
  not step back across the crash) with a timestamp ``ts <= t + window_s`` (a sender's clock
  may run ahead of ours by up to the window), so ``ts <= start + window_s``. The start-up
  checkpoint makes a crash before the first periodic checkpoint a crash too (the newest
  checkpoint is then not a clean one). The price: after a crash, a node refuses
  authenticated messages for up to one window.
* Chains of restarts: each run stores ``high_water >= floor``, so the floor never goes down.

What is refused that is genuine: messages in flight across a restart (sent to the previous
run, delivered to this one) and messages from a peer whose clock is behind ours by more than
the time since start; both are refused as stale, which gossip tolerates (the next period
brings a fresher model). A peer whose clock runs ahead by ``d`` raises ``high_water`` by up
to ``d``, so after a clean restart such messages are refused for up to ``d`` seconds. What
remains open: without a checkpoint directory nothing survives a restart, so messages
stamped ahead of this node's clock and accepted just before it restarted could be accepted
once more while they are inside the window; and a crash *together with* the wall clock
stepping back across it by more than the downtime.

The verifier takes ``sender``, ``nonce`` and ``timestamp`` as arguments: the caller must
pass the values read from the very body being verified (the signature binds them only
through the body). Nothing here reads the wall clock: the caller passes ``now``, and the
start time to :func:`restart_floor`.

Key files hold text: a shared key as hex or base64 (at least 16 bytes), or an Ed25519
private key as ``ed25519:<base64 of the 32-byte seed>`` (an unencrypted PKCS#8 PEM, as
``openssl genpkey -algorithm ed25519`` writes, is read too). Keep key files private to
their owner: :func:`write_key_file` creates them with mode 0600; :func:`load_key_file`
does not police permissions (container secret mounts are often 0644).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import math
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gossip.errors import ConfigError

AUTH_HEADER = "X-Gossip-Auth"
HMAC_SCHEME = "hmac-sha256"
ED25519_SCHEME = "ed25519"
KEY_ITEM = "ed25519-key"  # the public key a learning signer announces with its signature
KEY_PREFIX = "ed25519:"
DOMAIN = b"gossip-v1\n"
MIN_SHARED_KEY_BYTES = 16
ED25519_KEY_BYTES = 32
ED25519_SIG_BYTES = 64
MAX_HEADER_CHARS = 1024
MAX_KEY_FILE_BYTES = 16 * 1024
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")


class AuthReason(StrEnum):
    """Why a message failed authentication (stable names, used as metric labels)."""

    MISSING_AUTH = "missing_auth"
    BAD_AUTH = "bad_auth"
    UNKNOWN_SENDER = "unknown_sender"
    REPLAY = "replay"
    STALE = "stale"


class AuthError(Exception):
    """A message was refused; ``reason`` is one of :class:`AuthReason`."""

    def __init__(self, reason: AuthReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AuthConfig:
    """Authentication settings of a node.

    shared_key: HMAC key every node shares (>= 16 bytes). private_key: this node's raw
    32-byte Ed25519 seed (to sign). public_keys: peer id -> raw Ed25519 public key (from
    peers.txt, to verify). window_s: accepted ``|now - timestamp|`` in seconds; also how
    long nonces are remembered. learn_keys: announce this node's public key and bind
    unknown senders to the key they announce (see the module docstring). With a shared key,
    any public key or learning, unauthenticated messages are refused (:attr:`require`).
    """

    shared_key: bytes | None = None
    private_key: bytes | None = None
    public_keys: Mapping[str, bytes] = field(default_factory=dict)
    window_s: float = 60.0
    learn_keys: bool = False

    def __post_init__(self) -> None:
        if self.shared_key is not None and len(self.shared_key) < MIN_SHARED_KEY_BYTES:
            raise ConfigError(
                f"shared key has {len(self.shared_key)} bytes; use at least"
                f" {MIN_SHARED_KEY_BYTES} random bytes (e.g. 32)"
            )
        if self.private_key is not None and len(self.private_key) != ED25519_KEY_BYTES:
            raise ConfigError(
                f"Ed25519 private key has {len(self.private_key)} bytes, not {ED25519_KEY_BYTES}"
            )
        for peer_id, key in self.public_keys.items():
            if len(key) != ED25519_KEY_BYTES:
                raise ConfigError(
                    f"public key of {peer_id!r} has {len(key)} bytes, not {ED25519_KEY_BYTES}"
                )
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ConfigError(f"auth window {self.window_s} s must be a positive number")
        object.__setattr__(self, "public_keys", MappingProxyType(dict(self.public_keys)))

    @property
    def require(self) -> bool:
        """Whether incoming messages must be authenticated."""
        return self.shared_key is not None or bool(self.public_keys) or self.learn_keys


Body = bytes | bytearray | memoryview  # a message body: any buffer (hashed, never copied)


def signed_message(body: Body) -> bytes:
    """The bytes both schemes sign: a domain tag and the SHA-256 of the body."""
    return DOMAIN + hashlib.sha256(body).digest()


def _hmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class MessageSigner:
    """Produces the authentication header of outgoing messages (none without keys)."""

    def __init__(self, config: AuthConfig) -> None:
        self._shared_key = config.shared_key
        self._private = (
            None
            if config.private_key is None
            else Ed25519PrivateKey.from_private_bytes(config.private_key)
        )
        self._announce = (
            base64.b64encode(public_key_of(config.private_key)).decode("ascii")
            if config.private_key is not None and config.learn_keys
            else None
        )

    def headers(self, body: Body) -> dict[str, str]:
        if self._private is None and self._shared_key is None:
            return {}
        message = signed_message(body)
        items = []
        if self._private is not None:
            sig = base64.b64encode(self._private.sign(message)).decode("ascii")
            items.append(f"{ED25519_SCHEME}={sig}")
        if self._announce is not None:
            items.append(f"{KEY_ITEM}={self._announce}")
        if self._shared_key is not None:
            items.append(f"{HMAC_SCHEME}={_hmac(self._shared_key, message)}")
        return {AUTH_HEADER: ", ".join(items)}


def _parse_header(header: str) -> dict[str, str]:
    """``scheme=value[, scheme=value]`` -> {scheme: value}; AuthError on anything odd."""
    if len(header) > MAX_HEADER_CHARS:
        raise AuthError(AuthReason.BAD_AUTH, f"{AUTH_HEADER} longer than {MAX_HEADER_CHARS}")
    items: dict[str, str] = {}
    for item in header.split(","):
        scheme, sep, value = item.strip().partition("=")
        scheme = scheme.strip().lower()
        if not sep or not scheme or scheme in items:
            raise AuthError(AuthReason.BAD_AUTH, f"malformed {AUTH_HEADER} header")
        items[scheme] = value.strip()
    return items


class MessageVerifier:
    """Checks incoming messages: signature first, then timestamp window and replay floor,
    then replay (the nonce cache).

    Not thread-safe: use it from the node's event loop.
    """

    def __init__(
        self,
        config: AuthConfig,
        max_nonces: int = 100_000,
        floor: float = -math.inf,
        max_learned_keys: int = 65_536,
    ) -> None:
        if max_nonces < 1:
            raise ConfigError(f"max_nonces {max_nonces} must be at least 1")
        if max_learned_keys < 1:
            raise ConfigError(f"max_learned_keys {max_learned_keys} must be at least 1")
        self.config = config
        self.max_nonces = max_nonces
        self.max_learned_keys = max_learned_keys
        # id -> (raw key, key) learned on first use, least recently seen first
        self._learned: OrderedDict[str, tuple[bytes, Ed25519PublicKey]] = OrderedDict()
        self._floor = -math.inf  # accepted timestamps are > this
        self._accepted_max = -math.inf  # the largest timestamp accepted
        self.raise_floor(floor)
        self._public = {
            peer_id: Ed25519PublicKey.from_public_bytes(key)
            for peer_id, key in config.public_keys.items()
        }
        self._expiry: dict[tuple[str, str], float] = {}  # (sender, nonce) -> forget after
        self._heap: list[tuple[float, int, tuple[str, str]]] = []  # same entries by expiry
        self._seq = 0

    def __len__(self) -> int:
        """How many nonces are remembered."""
        return len(self._expiry)

    def key_of(self, peer_id: str) -> bytes | None:
        """The raw public key ``peer_id`` is bound to (pinned or learned), or None."""
        pinned = self.config.public_keys.get(peer_id)
        if pinned is not None:
            return pinned
        learned = self._learned.get(peer_id)
        return None if learned is None else learned[0]

    def learned_keys(self) -> dict[str, bytes]:
        """The bindings learned on first use (id -> raw key), least recently seen first."""
        return {peer_id: raw for peer_id, (raw, _) in self._learned.items()}

    def bind(self, peer_id: str, raw: bytes) -> bool:
        """Bind ``peer_id`` to ``raw`` unless it is bound already (a checkpoint's bindings
        coming back); True when the id is now bound to exactly this key."""
        bound = self.key_of(peer_id)
        if bound is not None:
            return bound == raw
        self._learn(peer_id, raw, Ed25519PublicKey.from_public_bytes(raw))
        return True

    def _learn(self, peer_id: str, raw: bytes, public: Ed25519PublicKey) -> None:
        while len(self._learned) >= self.max_learned_keys:
            self._learned.popitem(last=False)
        self._learned[peer_id] = (raw, public)

    @property
    def floor(self) -> float:
        """Messages stamped at or before this are refused (``-inf``: no floor)."""
        return self._floor

    @property
    def high_water(self) -> float:
        """Every timestamp at or below this was accepted or is refused: what a checkpoint
        stores for :func:`restart_floor` (``-inf`` when there is nothing to store)."""
        return max(self._floor, self._accepted_max)

    def raise_floor(self, floor: float) -> None:
        """Refuse from now on every message stamped at or before ``floor`` (a floor is
        never lowered)."""
        if not (math.isfinite(floor) or floor == -math.inf):
            raise ValueError(f"replay floor must be a finite time, got {floor!r}")
        self._floor = max(self._floor, floor)

    def verify(
        self,
        *,
        sender: str,
        nonce: str,
        timestamp: float,
        body: bytes,
        header: str | None,
        now: float,
    ) -> None:
        """Accept the message or raise :class:`AuthError`; accepting records its nonce."""
        if not self.config.require:
            return  # nothing to check against: authentication is off
        if header is None or not header.strip():
            raise AuthError(AuthReason.MISSING_AUTH, f"no {AUTH_HEADER} header")
        learned = self._check_signature(sender, body, _parse_header(header))
        window = self.config.window_s
        if not abs(now - timestamp) <= window:  # also catches NaN
            raise AuthError(
                AuthReason.STALE,
                f"timestamp is {now - timestamp:+.1f} s from now, outside ±{window:g} s",
            )
        if not timestamp > self._floor:
            raise AuthError(
                AuthReason.STALE,
                f"timestamp is at or before this node's replay floor (by"
                f" {self._floor - timestamp:.1f} s): a previous run of it may have accepted it",
            )
        self._expire(now)
        key = (sender, nonce)
        if key in self._expiry:
            raise AuthError(AuthReason.REPLAY, f"nonce {nonce[:64]!r} of {sender[:128]!r} seen")
        self._remember(key, timestamp + window)
        self._accepted_max = max(self._accepted_max, timestamp)
        if learned is not None:  # first use: bound only now that all of it is accepted
            self._learn(sender, *learned)
        elif sender in self._learned:
            self._learned.move_to_end(sender)

    def _check_signature(
        self, sender: str, body: bytes, items: dict[str, str]
    ) -> tuple[bytes, Ed25519PublicKey] | None:
        """Check the signature; returns the announced key to bind the sender to when this
        is its first use, else None."""
        public = self._public.get(sender)
        learned = self._learned.get(sender)
        if public is None and learned is not None:
            public = learned[1]
        announced = self._announced(items) if self.config.learn_keys else None
        pending = None
        if public is not None and announced is not None and announced != self.key_of(sender):
            raise AuthError(
                AuthReason.BAD_AUTH,
                f"{sender[:128]!r} announces another key than the one bound to it",
            )
        if public is None and announced is not None and ED25519_SCHEME in items:
            public = Ed25519PublicKey.from_public_bytes(announced)
            pending = (announced, public)
        if public is not None:
            sig_text = items.get(ED25519_SCHEME)
            if sig_text is None:
                raise AuthError(
                    AuthReason.BAD_AUTH, f"{sender[:128]!r} has a public key but sent no ed25519"
                )
            try:
                sig = base64.b64decode(sig_text, validate=True)
                if len(sig) != ED25519_SIG_BYTES:
                    raise ValueError
                public.verify(sig, signed_message(body))
            except (InvalidSignature, ValueError, binascii.Error):
                raise AuthError(AuthReason.BAD_AUTH, "bad ed25519 signature") from None
            return pending
        shared = self.config.shared_key
        if shared is not None and HMAC_SCHEME in items:
            expected = _hmac(shared, signed_message(body))
            if not hmac.compare_digest(expected.encode(), items[HMAC_SCHEME].lower().encode()):
                raise AuthError(AuthReason.BAD_AUTH, "bad hmac-sha256")
            return None
        if ED25519_SCHEME in items:
            raise AuthError(
                AuthReason.UNKNOWN_SENDER,
                f"no public key for {sender[:128]!r} in the peers file"
                + (f" and it announced none ({KEY_ITEM})" if self.config.learn_keys else ""),
            )
        raise AuthError(AuthReason.BAD_AUTH, f"no usable scheme in {AUTH_HEADER}")

    @staticmethod
    def _announced(items: dict[str, str]) -> bytes | None:
        """The raw key of an ``ed25519-key`` item (None without one; bad_auth if bad)."""
        text = items.get(KEY_ITEM)
        if text is None:
            return None
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != ED25519_KEY_BYTES:
            raise AuthError(
                AuthReason.BAD_AUTH,
                f"{KEY_ITEM} is not the base64 of a {ED25519_KEY_BYTES}-byte key",
            )
        return raw

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, _, key = heapq.heappop(self._heap)
            del self._expiry[key]

    def _remember(self, key: tuple[str, str], expiry: float) -> None:
        while len(self._expiry) >= self.max_nonces:  # full: forget what expires soonest
            _, _, old = heapq.heappop(self._heap)
            del self._expiry[old]
        self._seq += 1
        heapq.heappush(self._heap, (expiry, self._seq, key))
        self._expiry[key] = expiry


def restart_floor(
    *, start: float, window_s: float, high_water: float | None = None, clean_stop: bool = True
) -> float:
    """The replay floor of a node starting at wall-clock time ``start`` whose newest
    checkpoint stored ``high_water`` and was (``clean_stop``) or was not written by a clean
    stop; ``high_water=None, clean_stop=True`` when there is no checkpoint. See the module
    docstring for why this refuses everything a previous run accepted."""
    if not (math.isfinite(start) and math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"start {start!r} and window {window_s!r} must be finite, window > 0")
    floor = start if clean_stop else start + window_s
    if high_water is not None and math.isfinite(high_water):
        floor = max(floor, high_water)
    return floor


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyFile:
    """What a key file holds: a shared HMAC key or an Ed25519 private seed (raw bytes)."""

    kind: Literal["hmac-sha256", "ed25519"]
    key: bytes

    def auth_config(
        self,
        public_keys: Mapping[str, bytes] | None = None,
        window_s: float = 60.0,
        *,
        learn_keys: bool = False,
    ) -> AuthConfig:
        """An :class:`AuthConfig` using this key (and the peers' public keys); ``learn_keys``
        applies to an Ed25519 key only."""
        keys = public_keys or {}
        if self.kind == "ed25519":
            return AuthConfig(
                private_key=self.key, public_keys=keys, window_s=window_s, learn_keys=learn_keys
            )
        return AuthConfig(shared_key=self.key, public_keys=keys, window_s=window_s)


def generate_ed25519_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as raw bytes: (32-byte private seed, 32-byte public key)."""
    seed = _raw_seed(Ed25519PrivateKey.generate())
    return seed, public_key_of(seed)


def _raw_seed(private: Ed25519PrivateKey) -> bytes:
    raw = serialization.Encoding.Raw
    return private.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key_of(private_seed: bytes) -> bytes:
    """The raw public key that belongs to a raw Ed25519 private seed."""
    return (
        Ed25519PrivateKey.from_private_bytes(private_seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def generate_shared_key(nbytes: int = 32) -> bytes:
    """A new random shared HMAC key."""
    return secrets.token_bytes(max(nbytes, MIN_SHARED_KEY_BYTES))


def format_public_key(pub: bytes) -> str:
    """``ed25519:<base64>``, as written in peers.txt."""
    return KEY_PREFIX + base64.b64encode(pub).decode("ascii")


def parse_public_key(text: str) -> bytes | None:
    """The raw key of ``ed25519:<base64>`` (as :func:`format_public_key` writes), else None."""
    if not text.startswith(KEY_PREFIX):
        return None
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == ED25519_KEY_BYTES else None


def format_private_key(seed: bytes) -> str:
    """``ed25519:<base64>``, the text of a private key file."""
    return KEY_PREFIX + base64.b64encode(seed).decode("ascii")


def format_shared_key(key: bytes) -> str:
    """Hex, the text of a shared key file."""
    return key.hex()


def _read_key_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: key file not found; check the path") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the key file ({e.strerror})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text key file (non-ASCII bytes)") from None


def load_key_file(path: str | Path) -> KeyFile:
    """Read a key file: ``ed25519:<base64 seed>``, a PKCS#8 PEM Ed25519 key, or a shared
    key as hex or base64 (hex when the text is an even number of hex digits)."""
    path = Path(path)
    text = _read_key_text(path)
    if text.startswith("-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path}: the PEM key is not an Ed25519 key")
        return KeyFile("ed25519", _raw_seed(private))
    if text.startswith(KEY_PREFIX):
        try:
            seed = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) != ED25519_KEY_BYTES:
            raise ConfigError(
                f"{path}: expected ed25519: followed by the base64 of a {ED25519_KEY_BYTES}-byte"
                " private seed; make one with the key generation command"
            )
        return KeyFile("ed25519", seed)
    if _HEX_RE.fullmatch(text):
        key = bytes.fromhex(text)
    else:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{path}: not a key; expected hex or base64 of a shared key, or ed25519:<seed>"
            ) from None
    if len(key) < MIN_SHARED_KEY_BYTES:
        raise ConfigError(
            f"{path}: shared key of {len(key)} bytes is too short; use at least"
            f" {MIN_SHARED_KEY_BYTES} random bytes (e.g. 32)"
        )
    return KeyFile("hmac-sha256", key)


def write_key_file(path: str | Path, text: str, *, overwrite: bool = False) -> None:
    """Create a key file readable by its owner only (mode 0600); refuse to replace one
    unless ``overwrite``."""
    path = Path(path)
    if overwrite:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; remove it or choose another path") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot create the key file ({e.strerror})") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text.rstrip("\n") + "\n")
