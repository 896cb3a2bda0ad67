"""Progress bars: tqdm, drawn on a terminal or in a notebook, silent otherwise."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

# tqdm.auto draws a notebook widget, which needs ipywidgets: without it, it falls back to text
# but first prints "TqdmWarning: IProgress not found", so the plain bar is chosen instead
if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, **options: Any) -> tqdm:
    """A tqdm bar over ``total`` steps (None: unknown) that disappears when done.

    ``enabled=None`` draws only on a terminal or in a Jupyter kernel (a widget when
    ipywidgets is installed, text otherwise); ``options`` go to tqdm (``unit``, ``initial``, ``unit_scale``...).
    """
    if enabled is None:
        enabled = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(
        total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True, **options
    )


__all__ = ["progress_bar"]
