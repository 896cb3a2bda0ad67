"""``gpucnn info``: version, backend and why, device, BLAS, CPU threads and the NumPy
convolution paths switched on."""

from __future__ import annotations

import argparse
import platform

from .. import __version__
from ..backend import BACKEND_CHOICES, blas_info, device_info, select_backend


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``info`` and its flags to the subcommands ``sub``."""
    info = sub.add_parser("info", help="version, backend and why, device, BLAS threads")
    info.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")


def cmd_info(args: argparse.Namespace) -> int:
    backend = select_backend(args.backend)
    details = {
        "gpucnn": __version__,
        "python": platform.python_version(),
        **device_info(backend),
        **blas_info(),
        "cpu_threads": _cpu_threads_line(),
        "winograd": _winograd_line(),
    }
    for key, value in details.items():
        print(f"{key:>16}: {value}")
    return 0


def _cpu_threads_line() -> str:
    """The threads each NumPy op splits its images over, or why the setting is refused (a
    diagnostic command reports it rather than failing)."""
    from ..functional._cpu_threads import cpu_threads

    try:
        return str(cpu_threads())
    except ValueError as exc:
        return f"refused: {exc}"


def _winograd_line() -> str:
    """Whether NumPy runs 3x3 and 5x5 stride-1 convolutions by Winograd's algorithm where it
    pays."""
    from ..functional import _winograd as w3
    from ..functional import _winograd_5x5 as w5

    if not w3.switched_on():
        return f"off ({w3.WINOGRAD_ENV}=0)"
    return (
        f"on for NumPy stride-1 convolutions large enough (3x3: {w3.WINOGRAD_MIN_CHANNELS}+ "
        f"channels, {w3.WINOGRAD_MIN_SIDE}x{w3.WINOGRAD_MIN_SIDE}+ outputs, OH*OW*C >= "
        f"{w3.WINOGRAD_MIN_WORK}, by 4x4 output tiles where they fit; 5x5: "
        f"{w5.WINOGRAD_MIN_CHANNELS}+ channels, "
        f"{w5.WINOGRAD_MIN_SIDE}x{w5.WINOGRAD_MIN_SIDE}+ outputs) ({w3.WINOGRAD_ENV}=0: off)"
    )
