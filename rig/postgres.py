"""A throwaway PostgreSQL cluster for one test session (initdb in a temp dir, trust auth, fsync off)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("BRIDGED_RIG_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresError(RuntimeError):
    pass


class Postgres:
    """``Postgres(port=55432).start()``; connect with ``dsn(dbname)`` (TCP 127.0.0.1, user postgres)."""

    def __init__(self, port: int = 55432, *, bin_dir: Path = PG_BIN, os_user: str = "postgres") -> None:
        self.port = port
        self.bin_dir = Path(bin_dir)
        self.os_user = os_user
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # initdb/postgres refuse to run as root: run them as the postgres OS user when we are root.
    def _as_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.os_user, "--", *argv]
        return argv

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "sock"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "postgres.log"

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            raise PostgresError("already started")
        self.dir = Path(tempfile.mkdtemp(prefix="bridged-rig-pg-"))
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.os_user)
            for p in (self.dir, self.socket_dir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._as_user(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(
                "\n# bridged rig\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\n"
            )
        (self.data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        log = open(self.log_path, "wb")  # noqa: SIM115
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.log_path, pw.pw_uid, pw.pw_gid)
        self.proc = subprocess.Popen(
            self._as_user([str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PostgresError(f"postgres exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            res = subprocess.run(
                [
                    str(self.bin_dir / "pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ],
                capture_output=True,
            )
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError("postgres did not become ready in time")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM = smart shutdown; fine for a throwaway cluster
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> None:
        self.execute("postgres", f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, dbname: str, sql: str) -> str:
        """Run ``sql`` with psql (ON_ERROR_STOP); returns unaligned, tuples-only output."""
        res = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise PostgresError(f"psql failed on {dbname}: {res.stderr.strip()}")
        return res.stdout
