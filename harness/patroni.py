"""A replicated PostgreSQL for tests that lose its primary: three PostgreSQL servers under
Patroni, three etcd members for Patroni's consensus, each in a host of its own
(harness.hosts: a network namespace). The servers run synchronous replication in
Patroni's strict mode: a commit returns only once a second server has it, and Patroni
promotes only the synchronous standby, so a failover loses nothing acknowledged.

Clients reach the cluster with one multi-host libpq URL (`url`: every server, and
`target_session_attrs=read-write`, so a new connection lands on whichever is primary).

    with hosts("pg1", "pg2", "pg3", "dcs1", "dcs2", "dcs3") as net:
        with patroni_cluster(net) as cluster:
            cluster.kill("pg1")  # SIGKILL every process in its host, then its link down
            cluster.wait_for_leader(lambda name: name != "pg1", ...)

The timings that decide a failover (TTL, loop_wait, retry_timeout) are at the top,
and docs/across-hosts.md explains them. Every process runs in its host's namespace and
its own process group; `stop` kills them and removes every data directory, even when
the test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from harness.hosts import Host

SCOPE = "tutorflow"
PG_PORT = 5432
REST_PORT = 8008
# Patroni's clock (seconds). The leader renews its key every LOOP_WAIT; the key expires
# TTL after its last renewal, and then the synchronous standby takes it and promotes.
# Patroni requires LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL: a leader that cannot reach
# etcd for RETRY_TIMEOUT demotes itself before its key can expire, so no second
# primary is ever elected while the first still accepts writes.
TTL = 12
LOOP_WAIT = 2
RETRY_TIMEOUT = 4


def _pg_bin_dir() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
    return str(found[-1].parent)


def patroni_installed() -> bool:
    return all(shutil.which(tool) for tool in ("patroni", "etcd", "iptables"))


@dataclass
class Node:
    """One server: a Patroni process (and the PostgreSQL it runs) in `host`."""

    name: str
    host: Host
    dir: Path
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.dir / "patroni.log"

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def dsn(self) -> str:
        """libpq keywords for this server alone."""
        return f"host={self.address} port={PG_PORT} user=postgres dbname=postgres"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        command = ["runuser", "-u", "postgres", "--", "patroni", str(self.dir / "patroni.yml")]
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.host.command(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def rest(self, path: str) -> Any:
        """Patroni's REST API on this server; None when it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://{self.address}:{REST_PORT}{path}", timeout=2
            ) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as error:  # 503 for a replica's /primary: a body still
            with suppress(ValueError):
                return json.load(error)
            return None
        except (OSError, ValueError):
            return None

    def writable(self) -> bool:
        """This server, asked directly, takes writes: it is a primary out of recovery."""
        try:
            connection = psycopg2.connect(self.dsn, connect_timeout=2)
        except psycopg2.OperationalError:
            return False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT NOT pg_is_in_recovery()")
                row = cursor.fetchone()
                return bool(row and row[0])
        except psycopg2.Error:
            return False
        finally:
            connection.close()

    def try_write(self) -> str:
        """Write to this server directly (a table of the test's own): "committed", or
        the server's refusal (read-only, unreachable, shutting down)."""
        try:
            connection = psycopg2.connect(
                self.dsn, connect_timeout=2, options="-c statement_timeout=5000"
            )
        except psycopg2.OperationalError as error:
            return f"unreachable: {str(error).strip().splitlines()[0]}"
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS fencing_probe (at timestamptz)")
                cursor.execute("INSERT INTO fencing_probe VALUES (now())")
            return "committed"
        except psycopg2.Error as error:
            return f"refused: {type(error).__name__}: {str(error).strip().splitlines()[0]}"
        finally:
            connection.close()


class PatroniCluster:
    """Three etcd members (`dcs_hosts`) and three Patroni nodes (`pg_hosts`)."""

    def __init__(self, pg_hosts: list[Host], dcs_hosts: list[Host]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tutorflow-patroni-"))
        os.chmod(self.dir, 0o755)
        self.dcs_hosts = dcs_hosts
        self.etcd: dict[str, subprocess.Popen] = {}
        self.nodes: dict[str, Node] = {}
        for host in pg_hosts:
            node_dir = self.dir / host.name
            node_dir.mkdir()
            shutil.chown(node_dir, "postgres")
            self.nodes[host.name] = Node(host.name, host, node_dir)
            (node_dir / "patroni.yml").write_text(yaml.safe_dump(self._config(host, node_dir)))
            shutil.chown(node_dir / "patroni.yml", "postgres")

    @property
    def etcd_addresses(self) -> list[str]:
        return [host.address for host in self.dcs_hosts]

    def url(self, database: str = "tutorflow") -> str:
        """The multi-host URL every client uses: libpq tries the servers in turn, each for
        at most 3 s (a lost host answers nothing), and keeps the first that takes writes."""
        hosts = "&".join(f"host={node.address}:{PG_PORT}" for node in self.nodes.values())
        return f"postgresql+psycopg2://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def _config(self, host: Host, node_dir: Path) -> dict[str, Any]:
        network = ".".join(host.address.split(".")[:3]) + ".0/24"
        return {
            "scope": SCOPE,
            "name": host.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{host.address}:{REST_PORT}",
                "connect_address": f"{host.address}:{REST_PORT}",
            },
            "etcd3": {"hosts": [f"{address}:2379" for address in self.etcd_addresses]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 0,
                    # A commit waits for the synchronous standby; strict: also when no
                    # standby is there (writes wait rather than live on one server).
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "synchronous_commit": "on",
                            "max_connections": 300,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_log_hints": "on",
                            "hot_standby": "on",
                            "shared_buffers": "32MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"{host.address}:{PG_PORT}",
                "connect_address": f"{host.address}:{PG_PORT}",
                "data_dir": str(node_dir / "data"),
                "bin_dir": _pg_bin_dir(),
                "pgpass": str(node_dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node_dir)},
                "pg_hba": [
                    "local all all trust",
                    f"host all all {network} trust",
                    f"host replication all {network} trust",
                ],
                # A server that cannot rejoin by pg_rewind is copied afresh.
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    # -- etcd -------------------------------------------------------------------------

    def start_etcd(self) -> None:
        peers = ",".join(f"{h.name}=http://{h.address}:2380" for h in self.dcs_hosts)
        for host in self.dcs_hosts:
            data = self.dir / f"etcd-{host.name}"
            command = [
                "etcd",
                "--name",
                host.name,
                "--data-dir",
                str(data),
                "--listen-peer-urls",
                f"http://{host.address}:2380",
                "--initial-advertise-peer-urls",
                f"http://{host.address}:2380",
                "--listen-client-urls",
                f"http://{host.address}:2379",
                "--advertise-client-urls",
                f"http://{host.address}:2379",
                "--initial-cluster",
                peers,
                "--initial-cluster-token",
                "tutorflow-test",
                "--initial-cluster-state",
                "new",
                # A shared, busy machine: no election for a slow heartbeat.
                "--heartbeat-interval",
                "200",
                "--election-timeout",
                "2000",
            ]
            with (self.dir / f"etcd-{host.name}.log").open("w") as log:
                self.etcd[host.name] = subprocess.Popen(
                    host.command(command),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self._wait(self._etcd_healthy, 60, "etcd did not form a cluster")

    def _etcd_healthy(self) -> bool:
        for address in self.etcd_addresses:
            try:
                with urllib.request.urlopen(f"http://{address}:2379/health", timeout=2) as r:
                    if json.load(r).get("health") != "true":
                        return False
            except (OSError, ValueError):
                return False
        return True

    # -- the cluster as a whole ---------------------------------------------------------

    def start(self, database: str = "tutorflow") -> None:
        """etcd, then the first server (it bootstraps the cluster), then the others
        (copies of it); returns once a synchronous standby streams from the primary and
        `database` exists on every server."""
        self.start_etcd()
        first, *others = self.nodes.values()
        first.start()
        self.wait_for_leader(lambda name: name == first.name, 90, "the first server")
        for node in others:
            node.start()
        self.wait_until_replicated(180)
        self.create_database(database)

    def create_database(self, name: str) -> None:
        """Made on the primary and waited for on every server: libpq tries the next
        host after a server that is down or read-only, but not after one that says
        the database does not exist (a standby that has not replayed it yet)."""
        leader = self.leader()
        assert leader is not None, "no primary to create the database on"
        connection = psycopg2.connect(self.nodes[leader].dsn, connect_timeout=3)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

        def everywhere() -> bool:
            for node in self.nodes.values():
                try:
                    psycopg2.connect(
                        node.dsn.replace("dbname=postgres", f"dbname={name}"), connect_timeout=2
                    ).close()
                except psycopg2.OperationalError:
                    return False
            return True

        self._wait(everywhere, 60, f"database {name} did not reach every server")

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster, asked of the first server that answers."""
        for node in self.nodes.values():
            answer = node.rest("/cluster")
            if answer and answer.get("members"):
                return list(answer["members"])
        return []

    def leader(self) -> str | None:
        """The server that takes writes, asked of each server itself (not of Patroni's
        view): None while there is none; an AssertionError if two do."""
        writable = [name for name, node in self.nodes.items() if node.writable()]
        assert len(writable) <= 1, f"two writable primaries: {writable}"
        return writable[0] if writable else None

    def sync_standbys(self) -> list[str]:
        return [m["name"] for m in self.members() if m.get("role") == "sync_standby"]

    def wait_for_leader(self, accept: Callable[[str], bool], timeout: float, what: str) -> str:
        found: list[str] = []

        def elected() -> bool:
            name = self.leader()
            if name is not None and accept(name):
                found.append(name)
                return True
            return False

        self._wait(elected, timeout, f"no primary among {what}")
        return found[-1]

    def wait_until_replicated(self, timeout: float, members: int | None = None) -> None:
        """Every running server streams from the leader, one of them synchronously."""
        expected = members if members is not None else len(self.nodes)

        def settled() -> bool:
            listed = self.members()
            running = [m for m in listed if m.get("state") in ("running", "streaming")]
            return len(running) == expected and bool(self.sync_standbys())

        self._wait(settled, timeout, f"the cluster did not settle with {expected} members")

    def kill(self, name: str) -> int:
        """The server's host is lost: SIGKILL to PostgreSQL and Patroni, then its link
        down (its connections vanish without a word). Returns how many processes."""
        node = self.nodes[name]
        killed = node.host.kill_all()
        node.host.cut()
        return killed

    def revive(self, name: str) -> None:
        """The lost host is back: link up, Patroni started again (it rejoins as a standby,
        by pg_rewind if its history diverged)."""
        node = self.nodes[name]
        node.host.heal()
        node.start()

    def isolate_from_consensus(self, name: str) -> None:
        """The server's host can reach the other servers and every client, but no etcd
        member."""
        self.nodes[name].host.drop(*self.etcd_addresses)

    def reconnect_to_consensus(self, name: str) -> None:
        self.nodes[name].host.undrop()

    def logs(self) -> str:
        """The last lines of every server's Patroni log: for a failure message."""
        return "\n".join(f"--- {n.name}\n{n.log()[-2500:]}" for n in self.nodes.values())

    def _wait(self, predicate: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"{message} within {timeout:.0f} s\n{self.logs()}")

    def stop(self) -> None:
        """Every process killed (SIGKILL: nothing here is kept), every directory removed."""
        processes = [n.process for n in self.nodes.values()] + list(self.etcd.values())
        for process in processes:
            if process is not None and process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for node in self.nodes.values():
            node.host.kill_all()  # the postmaster and its children, started by Patroni
        for host in self.dcs_hosts:
            host.kill_all()
        for process in processes:
            if process is not None:
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def patroni_cluster(pg_hosts: list[Host], dcs_hosts: list[Host]) -> Iterator[PatroniCluster]:
    cluster = PatroniCluster(pg_hosts, dcs_hosts)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
