"""Progress bars: tqdm, drawn on a terminal or in a notebook, silent otherwise."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, **options: Any) -> tqdm:
    """A tqdm bar over ``total`` steps (None: unknown) that disappears when done.

    ``enabled=None`` draws only on a terminal or in a Jupyter kernel (where ``tqdm.auto``
    draws a widget); ``options`` go to tqdm (``unit``, ``initial``, ``unit_scale``...).
    """
    if enabled is None:
        enabled = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(
        total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True, **options
    )


__all__ = ["progress_bar"]
