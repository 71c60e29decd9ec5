"""Memory the allocator holds for nothing: huge pages for large tensors, and freed heap returned.

Large tensors without a page fault per 4 KiB: transparent huge pages for torch's allocator.

A decoded 45 MB model is a fresh allocation per push. glibc serves anything that large with
a new ``mmap``, so the first write to it faults once per 4 KiB page (11,000 faults, each
zeroing its page): copying the wire bytes into a fresh tensor took 18 ms against 3 ms into
a reused one. PyTorch's CPU allocator asks the kernel for 2 MiB pages (``madvise
(MADV_HUGEPAGE)``, allocations of 2 MiB and more, aligned to 2 MiB) when the environment
variable ``THP_MEM_ALLOC_ENABLE=1`` is set, which cuts the faults 512-fold. It works where
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always`` (the common
default) and costs at most 2 MiB of rounding per large tensor.

torch reads the variable once, at its first allocation, so it must be set before torch is
imported: ``gossip-node`` calls :func:`enable_huge_pages` first thing (``gossip-sim`` does not:
a simulated peer's tensors are far below 2 MiB, and the batched engine's stacked ones were
not measured with it). A value the user set (``THP_MEM_ALLOC_ENABLE=0`` to switch it off) is
kept.

Freed memory back to the kernel: building a simulation allocates and frees model-sized
temporaries for every peer (a module's own parameters before they are re-homed into the flat
buffer, the build's copies). glibc keeps such blocks in its heap for reuse and returns only
what lies at the top of the heap, so 1,000 ``mlp`` peers built left 0.57 model sizes a peer
of freed memory resident (RSS 2.78 model sizes a peer against 2.00 that the tensors hold).
:func:`trim_heap` (glibc's ``malloc_trim(0)``, which hands back every free page, also those
in the middle of the heap) takes 7 ms there and brings it to 2.21. We call it ourselves, via
ctypes, because neither Python nor torch exposes it; ``MALLOC_MMAP_THRESHOLD_`` would return
every such block at once but made the updates 37% slower (every block a fresh mapping).

The garbage collector's full passes: a run allocates many containers (graph dicts, peers,
lists), which now and then triggers a full collection, and a full collection scans every
tracked object alive, among them the ~230,000 that importing torch, numpy and networkx
left. One such pass cost 0.13 s (the first 10,000-node graph of a run took 0.147 s to build
against 0.009 with it out of the way). :func:`frozen_heap` moves what is alive when a run
starts into the collector's permanent generation (``gc.freeze``) for the run's duration, so
that its collections scan only what the run created; everything is handed back after.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

ENV = "THP_MEM_ALLOC_ENABLE"
_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def enable_huge_pages() -> bool:
    """Ask torch's allocator for huge pages unless the user said otherwise; whether torch will
    use them (False when torch was imported before, or the variable says no)."""
    if "torch" not in sys.modules:
        os.environ.setdefault(ENV, "1")
    # (torch imported already: it read the variable then, and a value set since is ignored;
    # an unchanged environment is the best evidence of what it read.)
    return os.environ.get(ENV) == "1"


def kernel_mode() -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), or
    ``unknown`` where the kernel does not say (not Linux, no sysfs)."""
    try:
        text = _SYSFS.read_text()
    except OSError:
        return "unknown"
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unknown"


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); whether there
    was a glibc to ask (elsewhere this does nothing and says False)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


_frozen_depth = [0]  # frozen_heap contexts open (gc.freeze and gc.unfreeze do not nest)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Within: the objects alive on entry are out of the collector's scans (``gc.freeze``);
    cyclic garbage among them waits until the outermost context exits (``gc.unfreeze``),
    while what is created inside is collected as usual. A nested context freezes what is
    alive by then too (say, a world just built that lives until the run ends)."""
    gc.freeze()
    _frozen_depth[0] += 1
    try:
        yield
    finally:
        _frozen_depth[0] -= 1
        if _frozen_depth[0] == 0:
            gc.unfreeze()
