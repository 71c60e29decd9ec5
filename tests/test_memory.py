"""gossip.memory: huge pages for torch's allocator are asked for before torch is imported.

Each case runs in a fresh interpreter: whether torch is imported is process state."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
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


TRIM_PROBE = """
import json, os
import torch
from gossip.memory import trim_heap
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base = rss()
# Model-sized blocks (100 KiB: below glibc's mmap threshold, so from the heap), each followed
# by a small block that stays alive, as a peer's build leaves them: the freed blocks are
# holes in the middle of the heap, which free() alone never returns.
big, kept = [], []
for _ in range(1500):
    big.append(torch.ones(25_600))
    kept.append(torch.ones(16))
del big
freed = rss() - base
trimmed = trim_heap()
print(json.dumps({"freed_resident": freed, "after_trim": rss() - base, "trimmed": trimmed}))
"""


def test_trim_heap_returns_freed_blocks_from_the_middle_of_the_heap() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if not r["trimmed"]:
        pytest.skip("no glibc malloc_trim on this platform")
    total = 1500 * 25_600 * 4
    assert r["freed_resident"] > 0.8 * total  # free() kept them resident...
    assert r["after_trim"] < 0.2 * total  # ...and the trim handed them back


def test_trim_heap_is_harmless_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    try:
        assert memory.trim_heap() is False
    finally:
        memory._malloc_trim.cache_clear()


def test_build_world_trims_the_heap_once_the_peers_are_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sim.runner
    from sim.config import SimConfig

    calls: list[int] = []
    monkeypatch.setattr(sim.runner, "trim_heap", lambda: calls.append(1) or True)
    world = sim.runner.build_world(SimConfig(peers=8, model="logreg", periods=1))
    assert calls == [1] and len(world.peers) == 8  # type: ignore[union-attr]


def test_frozen_heap_hides_what_was_alive_and_nests() -> None:
    """Inside, what was alive on entry is frozen and what is created inside is collected as
    usual; nested contexts keep the freeze until the outermost one exits; then all is back."""
    from gossip.memory import frozen_heap

    before = gc.get_freeze_count()
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > before
        cycle: list[object] = []
        cycle.append(cycle)
        ref = weakref.ref(_Node(cycle))
        gc.collect()
        assert ref() is None  # garbage made inside is collected
        kept = [[i] for i in range(1000)]
        with frozen_heap():
            # What is alive by now is frozen too (a few frozen objects may die meanwhile).
            assert gc.get_freeze_count() >= frozen + len(kept) // 2
        assert gc.get_freeze_count() > before  # the inner exit did not unfreeze
    assert gc.get_freeze_count() == before
    with pytest.raises(ValueError), frozen_heap():
        raise ValueError("unfrozen on the way out")
    assert gc.get_freeze_count() == before


class _Node:
    def __init__(self, payload: object) -> None:
        self.me = self  # a reference cycle: only the collector frees it
        self.payload = payload


@pytest.mark.parametrize("engine", ["asyncio", "batched"])
def test_a_simulation_runs_with_the_heap_frozen_and_hands_it_back(engine: str) -> None:
    """While a run reports progress the imports' objects are frozen (and, on the asyncio
    engine, its built world too); after it, the freeze is undone."""
    from sim.config import SimConfig
    from sim.runner import run_simulation

    before = gc.get_freeze_count()
    seen: list[int] = []
    config = SimConfig(peers=6, periods=2, eval_every=1, topology="complete", model="logreg",
                       screen=0, screen_distance=0, engine=engine)  # fmt: skip
    run_simulation(config, progress=lambda t, record: seen.append(gc.get_freeze_count()))
    assert seen and min(seen) > before
    assert gc.get_freeze_count() == before
    # Nested in a caller's frozen_heap, the run leaves the caller's freeze in place.
    with memory.frozen_heap():
        outer = gc.get_freeze_count()
        run_simulation(config)
        assert outer > before and gc.get_freeze_count() > before  # (frozen objects may die)
    assert gc.get_freeze_count() == before
