"""Helpers of the trainer tests (a module of its own: `conftest` names collide across test folders)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_cluster():
    """A private PostgreSQL cluster on a free port, from the Debian package; yields (url, stop)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL not installed (Debian package postgresql; .ci/run installs it), and "
                    "SPECSERVE_TEST_POSTGRES_URL is not set")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="specserve-pg-"))  # not under pytest's root-only (0700) tmp tree
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "specserve", "--auth=trust",
                                 "--no-sync"]), check=True, capture_output=True)
    port = free_port()
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)

    def stop():
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)

    try:
        subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "specserve",
                                     "jobs"]), check=True, capture_output=True)
        yield f"postgresql+psycopg://specserve@127.0.0.1:{port}/jobs", stop
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)
