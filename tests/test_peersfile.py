"""The peers file: every address form, ids, keys, comments, and one-line errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gossip.errors import ConfigError
from peers.peersfile import (
    PeerEntry,
    PeersFileError,
    find_self,
    load_peers,
    others,
    parse_peers,
    public_keys,
)

PUB = bytes(range(32))
PUB_TEXT = "ed25519:" + base64.b64encode(PUB).decode()

GOOD = f"""
# a comment line
10.0.0.2:8000
node-B.Example.org:8001   bob          # trailing comment
[2001:DB8:0::7]:9000      carol  {PUB_TEXT}
http://10.0.0.3:8000/
https://secure.example.org:443  dave
   http://[::1]:7000    {PUB_TEXT}

localhost:8002 a.b_c-d:e@f/[g]
"""


def test_parses_every_form() -> None:
    entries = parse_peers(GOOD)
    assert [e.peer_id for e in entries] == [
        "10.0.0.2:8000",
        "bob",
        "carol",
        "10.0.0.3:8000",
        "dave",
        "[::1]:7000",
        "a.b_c-d:e@f/[g]",
    ]
    assert [e.url for e in entries] == [
        "http://10.0.0.2:8000",
        "http://node-b.example.org:8001",
        "http://[2001:db8::7]:9000",
        "http://10.0.0.3:8000",
        "https://secure.example.org:443",
        "http://[::1]:7000",
        "http://localhost:8002",
    ]
    assert [e.line for e in entries] == [3, 4, 5, 6, 7, 8, 10]
    carol = entries[2]
    assert carol == PeerEntry(
        "carol", "http://[2001:db8::7]:9000", "2001:db8::7", 9000, "http", PUB, 5
    )
    assert carol.address == "[2001:db8::7]:9000"
    assert entries[4].scheme == "https" and entries[4].port == 443
    assert entries[5].public_key == PUB and entries[0].public_key is None
    assert public_keys(entries) == {"carol": PUB, "[::1]:7000": PUB}


def test_key_may_come_before_id_and_windows_line_endings() -> None:
    a, b = parse_peers(f"host:1 {PUB_TEXT} alice\r\nhost:2\tbob#c\r\n")
    assert (a.peer_id, a.public_key, a.host, a.port) == ("alice", PUB, "host", 1)
    assert (b.peer_id, b.public_key, b.line) == ("bob", None, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1\nfoo\n", "peers.txt:2: 'foo' is not host:port"),
        ("2001:db8::1:80", "peers.txt:1: '2001:db8::1:80' is not host:port"),
        ("http://h", "peers.txt:1: 'http://h' is not host:port"),
        ("ftp://h:21", "peers.txt:1: 'ftp://h:21' has scheme 'ftp'"),
        ("http://h:80/api", "peers.txt:1: 'http://h:80/api' has a path"),
        ("http://u@h:80", "peers.txt:1: 'http://u@h:80' has a path, query or user"),
        ("bad_host!:80", "peers.txt:1: 'bad_host!:80' has a bad host 'bad_host!'"),
        ("300.1.1.1:80", "has a bad host '300.1.1.1'"),
        ("[example.org]:80", "has a bad host 'example.org'"),
        ("[fe80::1%eth0]:80", "has a bad host"),
        ("[::g]:80", "has a bad host"),
        ("h:0", "peers.txt:1: bad port '0' in 'h:0'; use 1..65535"),
        ("h:65536", "bad port '65536'"),
        ("h:http", "bad port 'http'"),
        ("h:", "bad port ''"),
        ("h:-1", "bad port '-1'"),
        ("h:1 a b", "peers.txt:1: too many fields (3)"),
        (f"h:1 a {PUB_TEXT} x", "too many fields (4)"),
        (f"h:1 {PUB_TEXT} {PUB_TEXT}", "too many fields"),
        ("h:1 bad|id", "peers.txt:1: bad id 'bad|id'"),
        ("h:1 " + "x" * 129, "bad id 'xxxx"),
        ("h:1\nh:2 h:1", "peers.txt:2: duplicate id 'h:1' (first on line 1)"),
        ("a:1 x\nb:1 x", "peers.txt:2: duplicate id 'x'"),
        ("a:1 x\nA:1 y", "peers.txt:2: duplicate address a:1 (first on line 1)"),
        ("a:1\nhttps://a:1/ y", "peers.txt:2: duplicate address a:1"),
        ("[::1]:5 p\n[0::1]:5 q", "duplicate address [::1]:5"),
        ("h:1 ed25519:@@@@", "peers.txt:1: bad key 'ed25519:@@@@'"),
        ("h:1 ed25519:" + base64.b64encode(bytes(31)).decode(), "bad key"),
        ("h:1 ed25519:" + base64.b64encode(bytes(33)).decode(), "bad key"),
        ("", "peers.txt: no peers listed"),
        ("# only\n\n   # comments\n", "peers.txt: no peers listed"),
    ],
)
def test_errors_name_file_and_line_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(PeersFileError) as info:
        parse_peers(text)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "\r" not in message
    assert isinstance(info.value, ConfigError)


def test_error_messages_escape_control_characters_and_stay_short() -> None:
    with pytest.raises(PeersFileError) as info:
        parse_peers("h:1\n\x1b[31m" + "z" * 1000 + "\n", source="cluster/peers.txt")
    message = str(info.value)
    assert message.startswith("cluster/peers.txt:2: ")
    assert "\x1b" not in message and len(message) < 300


def test_load_peers(tmp_path: Path) -> None:
    path = tmp_path / "peers.txt"
    path.write_text(GOOD, encoding="utf-8")
    assert load_peers(path) == parse_peers(GOOD)
    path.write_text("a:1\na:2 a:1\n")
    with pytest.raises(PeersFileError, match=rf"^{path}:2: duplicate id"):
        load_peers(str(path))


def test_load_peers_handles_bom(tmp_path: Path) -> None:
    path = tmp_path / "peers.txt"
    path.write_bytes(b"\xef\xbb\xbfa:1 alice\n")
    assert [e.peer_id for e in load_peers(path)] == ["alice"]


def test_load_peers_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PeersFileError, match="peers file not found") as info:
        load_peers(tmp_path / "nope.txt")
    assert "\n" not in str(info.value)
    with pytest.raises(PeersFileError, match="cannot read"):
        load_peers(tmp_path)  # a directory
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"a:1\nb:2 caf\xe9\n")
    with pytest.raises(PeersFileError, match=r"latin1.txt:2: not UTF-8"):
        load_peers(bad)


ENTRIES = parse_peers(
    "10.0.0.1:8000 alice\n10.0.0.2:8000\n[2001:db8::7]:8000 carol\nhttps://Web.example:443 web\n"
)


def test_find_self_by_id() -> None:
    me = find_self(ENTRIES, peer_id="carol", host="0.0.0.0", port=8000)
    assert me is not None and me.peer_id == "carol"
    assert find_self(ENTRIES, peer_id="zoe", host="0.0.0.0", port=8000) is None


def test_find_self_by_address() -> None:
    me = find_self(ENTRIES, peer_id=None, host="10.0.0.2", port=8000)
    assert me is not None and me.peer_id == "10.0.0.2:8000"
    me = find_self(ENTRIES, peer_id=None, host="2001:DB8::0:7", port=8000)
    assert me is not None and me.peer_id == "carol"
    me = find_self(ENTRIES, peer_id=None, host="[2001:db8::7]", port=8000)
    assert me is not None and me.peer_id == "carol"
    assert find_self(ENTRIES, peer_id=None, host="10.0.0.2", port=8001) is None
    assert find_self(ENTRIES, peer_id=None, host="0.0.0.0", port=8000) is None  # no guessing


def test_find_self_by_advertised_address() -> None:
    me = find_self(
        ENTRIES, peer_id=None, host="0.0.0.0", port=443, advertised="https://web.EXAMPLE:443/"
    )
    assert me is not None and me.peer_id == "web"
    me = find_self(ENTRIES, peer_id=None, host="0.0.0.0", port=8000, advertised="10.0.0.1:8000")
    assert me is not None and me.peer_id == "alice"
    me = find_self(ENTRIES, peer_id="alice", host="::", port=8000, advertised="10.0.0.1:8000")
    assert me is not None and me.peer_id == "alice"
    with pytest.raises(ConfigError, match="advertised address 'nope'"):
        find_self(ENTRIES, peer_id=None, host="0.0.0.0", port=1, advertised="nope")


def test_find_self_id_and_address_disagree() -> None:
    with pytest.raises(PeersFileError, match="listed with id 'alice' but the node runs as 'carol'"):
        find_self(ENTRIES, peer_id="carol", host="10.0.0.1", port=8000)


def test_others() -> None:
    me = find_self(ENTRIES, peer_id="alice", host="0.0.0.0", port=8000)
    assert [e.peer_id for e in others(ENTRIES, me)] == ["10.0.0.2:8000", "carol", "web"]
    assert others(ENTRIES, None) == ENTRIES
