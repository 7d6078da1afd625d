"""A private PostgreSQL server for tests that need a database which really goes away.

The shared PostgreSQL of the test run is never restarted: a test that restarts a database
starts its own (initdb + pg_ctl from the machine's PostgreSQL binaries, on a free port, in a
temporary directory) and restarts that.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support import ROOT


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """Give it a fresh directory the postgres user can reach (pytest's tmp_path is private
    to root): `PrivatePostgres.in_temp_dir()`."""

    @classmethod
    def in_temp_dir(cls) -> PrivatePostgres:
        return cls(Path(tempfile.mkdtemp(prefix="baton-private-pg-")))

    def __init__(self, directory: Path) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL binaries (pg_ctl) on this machine")
        self.bin = bin_dir
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/baton"
        # initdb refuses to run as root: run the server as the postgres user then.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")
            directory.chmod(0o700)

    def _run(self, *argv: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=timeout, cwd=self.directory)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> PrivatePostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self._pg_ctl("start")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE baton")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, *extra)

    def stop(self) -> None:
        """Stop the server for good and remove its files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self, *, down_for: float = 0.5) -> None:
        """Stop the server (connections are cut) and start it again after `down_for` seconds."""
        self._pg_ctl("stop", "-m", "fast")
        time.sleep(down_for)
        self._pg_ctl("start")

    def migrate(self) -> None:
        manage(self.url, "migrate", "--no-input", "-v", "0")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())


def manage(database_url: str, *argv: str, **env: str) -> str:
    """Run a management command against another database; its output."""
    environment = dict(os.environ, DATABASE_URL=database_url, PYTHONPATH=str(ROOT), **env)
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *argv], env=environment, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        raise AssertionError(f"manage.py {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout
