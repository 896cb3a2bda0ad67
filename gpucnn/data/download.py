"""Fetching dataset files: several mirrors tried in turn, SHA-256 checked, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..progress import progress_bar

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """No mirror produced a file with the expected checksum."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_file(
    name: str,
    mirrors: Sequence[str],
    sha256: str,
    dest: Path,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Download ``name`` from the first mirror that serves it with SHA-256 ``sha256``.

    The file is streamed into a temporary file beside ``dest`` and renamed only once its
    checksum matches, so ``dest`` is never a partial or unverified download.

    Raises
    ------
    DownloadError listing what each mirror did.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=timeout) as response,
            ):
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress_bar(
                    total, name, progress, unit="B", unit_scale=True, unit_divisor=1024
                ) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != sha256:
                failures.append(
                    f"{url}: checksum mismatch (expected sha256 {sha256}, received {got})"
                )
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DownloadError(f"could not download {name}: " + "; ".join(failures))
