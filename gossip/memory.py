"""Large tensors without a page fault per 4 KiB: transparent huge pages for torch's allocator.

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
"""

from __future__ import annotations

import os
import sys
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
