"""The wheel as a user installs it (tests/packaging/check_wheel.sh): complete, and running outside the checkout."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("check_wheel.sh")


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None, reason="needs git and bash")
def test_wheel_installs_and_runs_outside_the_checkout():
    result = subprocess.run(["bash", str(SCRIPT), sys.executable], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "installs and runs outside the checkout" in result.stdout
