"""The peers file: who takes part in a real gossip network, and how to reach them.

One peer per line::

    # ADDRESS                 [ID]       [ed25519:BASE64_PUBLIC_KEY]
    10.0.0.2:8000
    node-b.example.org:8000   bob
    [2001:db8::7]:9000        carol      ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
    https://d.example.org:443 dave       # trailing comments are fine

ADDRESS is ``host:port``, ``[ipv6]:port``, ``http://host:port`` or ``https://host:port``
(an optional trailing ``/``, no other path; the port is always written). A bare address
means ``http``. Hostnames are compared case-insensitively and IPv6 addresses in their
compressed form, so ``[2001:DB8:0::7]:9000`` and ``[2001:db8::7]:9000`` are the same peer.

ID is the name the peer sends as (the ``sender`` of its messages); it defaults to the
address as ``host:port`` (``[ipv6]:port`` for IPv6) and must match the codec's sender
pattern ``[A-Za-z0-9._:@/[]-]{1,128}``. A field that starts with ``ed25519:`` is always the
key, never an id. The key is the peer's raw 32-byte Ed25519 public key in standard base64;
receivers with authentication on check the peer's signatures with it.

Ids and addresses must be unique. Every mistake is reported as one line naming the file and
line (``peers.txt:3: ...``) through :class:`PeersFileError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gossip.errors import ConfigError

KEY_PREFIX = "ed25519:"
PUBLIC_KEY_BYTES = 32
MAX_FILE_BYTES = 4 * 1024 * 1024
_SENDER_RE = re.compile(r"[A-Za-z0-9._:@/\[\]-]{1,128}")  # as gossip.codec._SENDER_RE
_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)")
_BRACKETED_RE = re.compile(r"\[(?P<host>[^\]]*)\]:(?P<port>[^:]*)")
_PLAIN_RE = re.compile(r"(?P<host>[^:\[\]/]+):(?P<port>[^:]*)")
_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_FORMS = "host:port, [ipv6]:port or http(s)://host:port"


class PeersFileError(ConfigError):
    """A peers file is missing or wrong; the message names the file and the line."""


@dataclass(frozen=True)
class PeerEntry:
    """One peer of the peers file.

    url: the normalized base URL (``http://10.0.0.2:8000``, ``https://[2001:db8::7]:9000``),
    without a trailing slash. host: lower-case hostname, dotted IPv4 or compressed IPv6
    (without brackets). public_key: the raw 32-byte Ed25519 public key, if listed.
    line: the 1-based line of the file it came from.
    """

    peer_id: str
    url: str
    host: str
    port: int
    scheme: str
    public_key: bytes | None
    line: int

    @property
    def address(self) -> str:
        """``host:port`` (``[ipv6]:port``): the default id of this address."""
        return f"{_host_part(self.host)}:{self.port}"


def _show(text: str, limit: int = 60) -> str:
    """A field quoted for an error message: escaped (one line) and bounded."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _normalize_host(host: str) -> str | None:
    """The canonical form of a hostname or IP address, or None if it is not one."""
    if ":" in host:  # only IPv6 literals contain colons
        if "%" in host:
            return None  # scoped (link-local) addresses cannot be used as peer ids or in URLs
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    host = host.lower().removesuffix(".")
    if not host or len(host) > 253:
        return None
    if re.fullmatch(r"[0-9.]+", host):  # all digits and dots: must be a dotted IPv4 address
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    return host if all(_LABEL_RE.fullmatch(label) for label in host.split(".")) else None


def _parse_address(text: str) -> tuple[str, str, str]:
    """Split an address into (scheme, host, port text); raise ValueError with the reason."""
    scheme = "http"
    rest = text
    url = _URL_RE.fullmatch(text)
    if url:
        scheme = url["scheme"].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"has scheme {_show(scheme)}; use http or https")
        rest = url["rest"].removesuffix("/")
        if "/" in rest or "?" in rest or "#" in rest or "@" in rest:
            raise ValueError(f"has a path, query or user; write {_FORMS}")
    m = _BRACKETED_RE.fullmatch(rest) or _PLAIN_RE.fullmatch(rest)
    if not m:
        raise ValueError(f"is not {_FORMS}")
    host = _normalize_host(m["host"])
    if host is None or (":" in host) != rest.startswith("["):
        raise ValueError(
            f"has a bad host {_show(m['host'])}; use a hostname, IPv4 or [IPv6] address"
        )
    return scheme, host, m["port"]


def _parse_port(text: str) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _parse_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == PUBLIC_KEY_BYTES else None


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0].strip()


def parse_peers(text: str, source: str = "peers.txt") -> list[PeerEntry]:
    """Parse the text of a peers file; ``source`` names it in error messages."""
    entries: list[PeerEntry] = []
    ids: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        fields = _strip_comment(raw_line).split()
        if not fields:
            continue
        where = f"{source}:{number}"
        key_fields = [f for f in fields[1:] if f.startswith(KEY_PREFIX)]
        id_fields = [f for f in fields[1:] if not f.startswith(KEY_PREFIX)]
        if len(fields) > 3 or len(key_fields) > 1 or len(id_fields) > 1:
            raise PeersFileError(
                f"{where}: too many fields ({len(fields)}); write ADDRESS [ID] [ed25519:KEY]"
            )
        address = fields[0]
        try:
            scheme, host, port_text = _parse_address(address)
        except ValueError as e:
            raise PeersFileError(f"{where}: {_show(address)} {e}") from None
        port = _parse_port(port_text)
        if port is None:
            raise PeersFileError(
                f"{where}: bad port {_show(port_text)} in {_show(address)}; use 1..65535"
            )
        entry_address = f"{_host_part(host)}:{port}"
        peer_id = id_fields[0] if id_fields else entry_address
        if not _SENDER_RE.fullmatch(peer_id):
            raise PeersFileError(
                f"{where}: bad id {_show(peer_id)}; use 1 to 128 of A-Z a-z 0-9 . _ : @ / [ ] -"
            )
        public_key = None
        if key_fields:
            public_key = _parse_key(key_fields[0])
            if public_key is None:
                raise PeersFileError(
                    f"{where}: bad key {_show(key_fields[0])}; expected ed25519: followed by"
                    f" the base64 of a raw {PUBLIC_KEY_BYTES}-byte Ed25519 public key"
                )
        if peer_id in ids:
            raise PeersFileError(
                f"{where}: duplicate id {_show(peer_id)} (first on line {ids[peer_id]});"
                " give each peer its own id"
            )
        if (host, port) in addresses:
            raise PeersFileError(
                f"{where}: duplicate address {entry_address} (first on line"
                f" {addresses[host, port]}); list each peer once"
            )
        ids[peer_id] = number
        addresses[host, port] = number
        url = f"{scheme}://{entry_address}"
        entries.append(PeerEntry(peer_id, url, host, port, scheme, public_key, number))
    if not entries:
        raise PeersFileError(
            f"{source}: no peers listed; write one per line: ADDRESS [ID] [ed25519:KEY]"
        )
    return entries


def load_peers(path: str | Path) -> list[PeerEntry]:
    """Read and parse a peers file (UTF-8); any problem is one :class:`PeersFileError` line."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PeersFileError(
            f"{path}: peers file not found; pass --peers with the path of an existing file"
        ) from None
    except OSError as e:
        raise PeersFileError(f"{path}: cannot read the peers file ({e.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise PeersFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes; is it a peers file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PeersFileError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    return parse_peers(text, str(path))


def _address_key(host: str, port: int) -> tuple[str, int] | None:
    norm = _normalize_host(host.removeprefix("[").removesuffix("]"))
    return None if norm is None else (norm, port)


def find_self(
    entries: Iterable[PeerEntry],
    *,
    peer_id: str | None,
    host: str,
    port: int,
    advertised: str | None = None,
) -> PeerEntry | None:
    """This node's own entry, or None if the file does not list it.

    With ``peer_id`` the entry of that id. Otherwise the entry whose address equals the
    ``advertised`` URL/address (if given), else the one equal to ``host:port`` as bound.
    No guessing: a node bound to ``0.0.0.0`` or ``::`` is found only by its id or by an
    advertised address. A node that names an id while its address is listed under another
    id is a configuration mistake and raises :class:`PeersFileError`.
    """
    entries = list(entries)
    wanted: list[tuple[str, int]] = []
    if advertised is not None:
        try:
            _, adv_host, adv_port = _parse_address(advertised.strip())
        except ValueError as e:
            raise ConfigError(f"advertised address {_show(advertised)} {e}") from None
        adv = _parse_port(adv_port)
        if adv is None:
            raise ConfigError(f"advertised address {_show(advertised)} has a bad port")
        wanted.append((adv_host, adv))
    bound = _address_key(host, port)
    if bound is not None:
        wanted.append(bound)
    by_address = None
    for key in wanted:
        by_address = next((e for e in entries if (e.host, e.port) == key), None)
        if by_address is not None:
            break
    if peer_id is None:
        return by_address
    by_id = next((e for e in entries if e.peer_id == peer_id), None)
    if by_address is not None and by_address is not by_id:
        raise PeersFileError(
            f"peers file line {by_address.line}: this node's address {by_address.address} is"
            f" listed with id {_show(by_address.peer_id)} but the node runs as"
            f" {_show(peer_id)}; make the id and the file agree"
        )
    return by_id


def others(entries: Iterable[PeerEntry], me: PeerEntry | None) -> list[PeerEntry]:
    """Every entry but this node's own (all of them when ``me`` is None)."""
    return [e for e in entries if me is None or e.peer_id != me.peer_id]


def public_keys(entries: Iterable[PeerEntry]) -> Mapping[str, bytes]:
    """peer id -> raw Ed25519 public key, for the entries that list one."""
    return {e.peer_id: e.public_key for e in entries if e.public_key is not None}
