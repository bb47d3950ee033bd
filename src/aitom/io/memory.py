"""How much memory this machine has, for refusing work that cannot fit before it starts."""

from __future__ import annotations

import os

__all__ = ["physical_memory_bytes"]


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
