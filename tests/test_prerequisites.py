"""scripts/prerequisites.sh, which `make test`, `make test-hosts` and .ci/run share: with
promtool, chromium and the PostgreSQL failover's tools (patroni, etcd, iptables) missing,
root installs them (one apt-get update, prometheus without its recommendations, the
packages' own services stopped) and says so; anyone else gets the command to run, and
stops only for promtool. apt-get and service are stand-ins that record their arguments:
nothing is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts/prerequisites.sh"
FAILOVER_TOOLS = ("patroni", "etcd", "iptables")


def fake_bin(tmp_path: Path, *present: str) -> Path:
    """A PATH with recording stand-ins for apt-get and service, and `present` tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name in ("apt-get", "service"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n')
        tool.chmod(0o755)
    for name in present:
        tool = bin_dir / name
        tool.write_text("#!/bin/bash\n")
        tool.chmod(0o755)
    return bin_dir


def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=30,
    )


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_missing_is_silent(tmp_path):
    result = run(fake_bin(tmp_path, "promtool", "chromium", *FAILOVER_TOOLS))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert calls(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root")
def test_root_installs_what_is_missing_and_says_why(tmp_path):
    result = run(fake_bin(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "prerequisites: installing prometheus (promtool: make test checks the alert rules "
        "with it), chromium (the browser tests; skipped without it), patroni etcd-server "
        "iptables (the PostgreSQL failover tests in make test-hosts; skipped without them) "
        "with apt-get"
    ]
    assert calls(tmp_path) == [
        "apt-get update -qq",
        "apt-get -qq install -y --no-install-recommends prometheus",
        "apt-get -qq install -y chromium",
        "apt-get -qq install -y --no-install-recommends patroni etcd-server iptables",
        "service prometheus stop",
        "service patroni stop",
        "service etcd stop",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root")
def test_root_installs_only_the_failover_tools_that_are_missing(tmp_path):
    result = run(fake_bin(tmp_path, "promtool", "chromium", "patroni"))
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == [
        "apt-get update -qq",
        "apt-get -qq install -y --no-install-recommends etcd-server iptables",
        "service etcd stop",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root")
def test_dry_run_changes_nothing(tmp_path):
    result = run(fake_bin(tmp_path, "chromium", *FAILOVER_TOOLS), "--dry-run")
    assert result.returncode == 0
    assert "would run: apt-get update && apt-get install -y --no-install-recommends " in (
        result.stdout
    )
    assert calls(tmp_path) == []


def test_without_apt_get_prints_the_command_and_stops_for_promtool(tmp_path):
    bin_dir = fake_bin(tmp_path, "chromium", *FAILOVER_TOOLS)
    (bin_dir / "apt-get").unlink()  # as for someone who is not root: nothing to run it with
    result = run(bin_dir)
    assert result.returncode == 1
    assert "missing prometheus" in result.stderr
    assert (
        "  apt-get update && apt-get install -y --no-install-recommends prometheus;"
        " service prometheus stop"
    ) in result.stderr.splitlines()
    assert calls(tmp_path) == []


def test_a_missing_chromium_alone_does_not_stop_make_test(tmp_path):
    bin_dir = fake_bin(tmp_path, "promtool", *FAILOVER_TOOLS)
    (bin_dir / "apt-get").unlink()
    result = run(bin_dir)
    assert result.returncode == 0
    assert "apt-get update && apt-get install -y chromium" in result.stderr
