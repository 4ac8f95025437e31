#!/usr/bin/env bash
# The Debian packages `make test` needs beyond Python, PostgreSQL and Redis, shared by the
# Makefile's `test` target and .ci/run:
#   promtool  (Debian's `prometheus`): the alert rules' tests; required.
#   chromium  (Debian's `chromium`):   the browser tests; without it they are skipped.
#   patroni, etcd, iptables (Debian's `patroni`, `etcd-server`, `iptables`): the PostgreSQL
#             failover tests of `make test-hosts` (tests/test_pg_failover.py); skipped
#             without them. The packages' own services are stopped: the tests start theirs.
# As root with apt-get, what is missing is installed (one `apt-get update` first, one line
# saying what and why). Otherwise the exact command to run as root is printed, and the
# script fails only if something required is missing.
#
#   scripts/prerequisites.sh [--dry-run]   (--dry-run: say what would run, change nothing)
set -euo pipefail

dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1

missing_required=0
reasons=()
installs=()  # one `apt-get install` per package: their options differ
after=()

if ! command -v promtool >/dev/null 2>&1; then
  missing_required=1
  reasons+=("prometheus (promtool: make test checks the alert rules with it)")
  # Only the tool is wanted: no node exporter (a recommendation), and the server the
  # package's init script may start (no policy-rc.d here) is stopped: it holds no port.
  installs+=("apt-get install -y --no-install-recommends prometheus")
  after+=("service prometheus stop")
fi
if ! command -v chromium >/dev/null 2>&1; then
  reasons+=("chromium (the browser tests; skipped without it)")
  installs+=("apt-get install -y chromium")
fi
ha_packages=()
command -v patroni >/dev/null 2>&1 || ha_packages+=(patroni)
command -v etcd >/dev/null 2>&1 || ha_packages+=(etcd-server)
command -v iptables >/dev/null 2>&1 || ha_packages+=(iptables)
if ((${#ha_packages[@]})); then
  reasons+=("${ha_packages[*]} (the PostgreSQL failover tests in make test-hosts; skipped without them)")
  installs+=("apt-get install -y --no-install-recommends ${ha_packages[*]}")
  for p in "${ha_packages[@]}"; do
    case $p in patroni) after+=("service patroni stop") ;; etcd-server) after+=("service etcd stop") ;; esac
  done
fi

((${#installs[@]} == 0)) && exit 0

what=$(printf '%s, ' "${reasons[@]}")
what=${what%, }
commands="apt-get update"
for c in "${installs[@]}"; do commands+=" && $c"; done
for c in "${after[@]}"; do commands+="; $c"; done

if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
  echo "prerequisites: installing ${what} with apt-get"
  if ((dry_run)); then
    echo "prerequisites: dry run, would run: ${commands}"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  for c in "${installs[@]}"; do ${c/apt-get/apt-get -qq} >/dev/null; done
  for c in "${after[@]}"; do $c >/dev/null 2>&1 || true; done
  exit 0
fi

echo "prerequisites: missing ${what}; as root on Debian run:" >&2
echo "  ${commands}" >&2
if ((missing_required)); then
  echo "prerequisites: promtool is required, stopping" >&2
  exit 1
fi
exit 0
