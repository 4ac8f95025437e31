"""The OpenAPI document is whole and exact: Schemathesis, run as an outside client would
(`schemathesis run …/openapi.json --checks all`, the admin token), against the real API
under gunicorn, finds nothing. The two refusals no schema can express are configured,
with their reasons, in schemathesis.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import ROOT, api_server
from tests.conftest import ADMIN

pytestmark = pytest.mark.worker

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.slow
def test_schemathesis_checks_all_finds_nothing(committed):
    env = {
        "RATE_LIMIT_PUBLIC": "1000000/minute",  # one client sends everything
        "STREAM_SECONDS": "1",  # read each event stream to its end, quickly
        "STREAM_SLOTS_PER_PROCESS": "4",
    }
    with api_server(env) as api:
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{api.base}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: {ADMIN['Authorization']}",
                "--max-examples",
                "15",
                "--seed",
                "1",
                "--no-color",
            ],
            cwd=ROOT,  # schemathesis.toml
            capture_output=True,
            text=True,
            timeout=600,
        )
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary  # schemathesis exits non-zero on any failure
    assert "❌" not in summary, summary
