"""A short soak in `make test`: payments under random worker kills and a Redis restart
end fulfilled exactly once (the full 2,000-payment run is `python -m scripts.soak`)."""

import os
import subprocess
import sys

import pytest

from harness.processes import ROOT

pytestmark = pytest.mark.worker


@pytest.mark.slow
def test_short_soak_has_no_duplicates_and_loses_nothing():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.soak",
            "--payments",
            "120",
            "--seed",
            "3",
            "--timeout",
            "240",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "duplicate rows  0" in result.stdout
    assert "lost            0" in result.stdout
    assert "fulfilled       120" in result.stdout
