"""The OpenAPI document is whole and exact: Schemathesis, run as an outside client would
(`schemathesis run …/openapi.json --checks all` from a directory of its own, so no
project configuration: no status allowed beyond its defaults), against the real API under
gunicorn, finds nothing — with the admin token and with a student's — but for the one
check on the two operations whose answers DESIGN's contract fixes (CONTRACT_ANSWERS).

A schema-valid request is never refused with 400 or 422 (schemathesis's
positive_data_acceptance takes only 2xx, 3xx, 401, 403, 404, 409, 429 and 5xx for one,
whatever the document lists), so the rules between fields are in the document, and a
refusal that depends on state is a 409. The quick run (a few examples, no coverage
phase) is in `make test`; every phase, more examples, in the slow suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import api_server
from tests.conftest import ADMIN, open_session, student_auth
from tests.factories import make_sellable_course, make_student

pytestmark = pytest.mark.worker

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def run_schemathesis(
    base: str, authorization: str, outside: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: {authorization}",
            "--seed",
            "1",
            "--no-color",
            *extra,
        ],
        cwd=outside,  # not the repository: no schemathesis.toml is read
        capture_output=True,
        text=True,
        timeout=600,
    )


# DESIGN's contract fixes two answers that schemathesis's positive_data_acceptance refuses
# for a schema-valid request whatever the document lists (schemathesis#3516, #3696): a
# webhook whose signature does not verify is 400, a client-sent amount that differs from
# the catalogue's is 422 amount_mismatch. Those two operations run every check but that
# one; every other operation runs every check.
CONTRACT_ANSWERS = r"^(POST /api/v1/webhooks/stripe|POST /api/v1/payments)$"
RUNS = {
    "every operation but two, every check": ("--exclude-name-regex", CONTRACT_ANSWERS),
    "those two, every check but positive_data_acceptance": (
        "--include-name-regex",
        CONTRACT_ANSWERS,
        "--exclude-checks",
        "positive_data_acceptance",
    ),
}


def outside_client_finds_nothing(tmp_path: Path, *extra: str) -> None:
    assert not list(tmp_path.glob("**/schemathesis.toml"))
    with open_session() as session, session.begin():
        # A catalogue to buy from and a student to hold the second token.
        make_sellable_course(session)
        student_id = make_student(session).id
    tokens = {
        "admin": ADMIN["Authorization"],
        "student": student_auth(student_id)["Authorization"],
    }
    env = {
        "RATE_LIMIT_PUBLIC": "1000000/minute",  # one client sends everything
        # Read each event stream to its end, quickly: the coverage phase asks the student's
        # own stream hundreds of times (a whole second each took the run past 10 minutes).
        "STREAM_SECONDS": "0.1",
        "STREAM_SLOTS_PER_PROCESS": "4",
    }
    failures = {}
    with api_server(env) as api:
        for who, authorization in tokens.items():
            for name, selection in RUNS.items():
                result = run_schemathesis(api.base, authorization, tmp_path, *selection, *extra)
                summary = result.stdout[-6000:]
                # schemathesis exits non-zero on any failure
                if result.returncode != 0 or "❌" in summary:
                    failures[f"{who}, {name}"] = summary
    assert failures == {}, "\n\n".join(f"--- {who} ---\n{out}" for who, out in failures.items())


def test_an_outside_schemathesis_with_either_token_finds_nothing(committed, tmp_path):
    outside_client_finds_nothing(
        tmp_path, "--max-examples", "5", "--phases", "examples,fuzzing,stateful"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_outside_schemathesis_with_more_examples_finds_nothing(committed, tmp_path):
    """Three times the examples. Not the coverage phase: with the working-hours rule's 96
    branches it ran past ten minutes a token on CI's two cores; the in-process fuzz test
    (tests/test_fuzz_openapi.py) covers every operation in make test."""
    outside_client_finds_nothing(
        tmp_path, "--max-examples", "15", "--phases", "examples,fuzzing,stateful"
    )
