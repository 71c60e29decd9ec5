"""gossip.memory: huge pages for torch's allocator are asked for before torch is imported.

Each case runs in a fresh interpreter: whether torch is imported is process state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gossip.memory as memory
from gossip.memory import ENV, kernel_mode

PROBE = """
import json, os, sys
{before}
from gossip.memory import enable_huge_pages
on = enable_huge_pages()
print(json.dumps({{"on": on, "env": os.environ.get("THP_MEM_ALLOC_ENABLE")}}))
"""


def probe(before: str = "", env: str | None = None) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    if env is not None:
        environ[ENV] = env
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        capture_output=True, text=True, check=True, env=environ, timeout=60,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_set_before_torch_is_imported() -> None:
    assert probe() == {"on": True, "env": "1"}


def test_the_users_choice_is_kept() -> None:
    assert probe(env="0") == {"on": False, "env": "0"}


def test_too_late_once_torch_is_imported() -> None:
    """torch read the environment at import: setting it now would change nothing."""
    assert probe(before="import torch") == {"on": False, "env": None}
    assert probe(before="import torch", env="1") == {"on": True, "env": "1"}


def test_node_entry_point_enables_them_before_torch() -> None:
    code = (
        "import sys, os; import peers.cli as c; c.app = lambda: None; c.main();"
        f" print(os.environ.get({ENV!r}), 'torch' in sys.modules)"
    )
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environ
    )
    assert out.stdout.split() == ["1", "False"]


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never", "always"),
        ("", "unknown"),
    ],
)
def test_kernel_mode_reads_the_bracketed_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: str
) -> None:
    path = tmp_path / "enabled"
    path.write_text(text)
    monkeypatch.setattr(memory, "_SYSFS", path)
    assert kernel_mode() == mode
    monkeypatch.setattr(memory, "_SYSFS", path.parent / "missing")
    assert kernel_mode() == "unknown"
