"""Where a search's Optuna study lives: one storage string to an Optuna storage.

- ``None`` (the default): a SQLite file, ``study.db``, in the search folder on local disk.
  SQLite's locking does not work on Google Drive, so the database never lives there: after
  each trial a consistent snapshot is copied atomically into the mirror folder, and a new VM
  whose local database is missing starts from that copy.
- ``"journal:PATH"``: Optuna's journal file, which works on Drive (it locks by opening a file,
  not by a symlink, which Drive lacks). It has no heartbeat: a trial whose worker was killed
  stays RUNNING until :func:`recover_running_trials` is called.
- Any SQLAlchemy URL (``sqlite:///…``, ``postgresql://…``, ``mysql+pymysql://…``): an
  ``RDBStorage`` with a heartbeat, so a killed worker's trial is marked FAIL and retried
  (``RetryHeartbeatStaleTrialCallback``). A PostgreSQL or MySQL server lets many machines
  share one study.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import UserError

__all__ = ["DB_FILE", "MAX_RETRY", "StudyStorage", "check_storage", "dead_local_workers",
           "open_storage", "recover_running_trials", "retry_callback", "worker_id"]

DB_FILE = "study.db"
MAX_RETRY = 3  # a trial that kills its worker every time (out of memory) is not retried forever
SQLITE_TIMEOUT = 60  # seconds a writer waits for another worker's lock before giving up
CONNECT_TIMEOUT = 20  # seconds to reach a database server (an address a firewall drops hangs)
CREATE_ATTEMPTS = 5
_DIALECTS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql",
             "cockroachdb")
_FORMS = ("None (a SQLite file in the search folder), 'journal:PATH', or a database URL such "
          "as 'sqlite:///path/study.db', 'postgresql://user:password@host/db' or "
          "'mysql+pymysql://user:password@host/db'")


def retry_callback() -> Any:
    """Optuna's callback that queues a failed trial again (at most :data:`MAX_RETRY` times)."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_storage(spec: Any) -> tuple[str, str | None]:
    """``(kind, target)`` of a storage string without connecting: ``("default", None)``,
    ``("journal", path)``, ``("rdb", url)`` or ``("object", None)`` for an Optuna storage.

    Raises:
        UserError: a string that is none of the accepted forms.
    """
    if spec is None:
        return "default", None
    if not isinstance(spec, str):
        if hasattr(spec, "create_new_study"):  # an Optuna storage object
            return "object", None
        raise UserError(f"storage={spec!r} is not a storage (a {type(spec).__name__}).",
                        why=f"A storage is {_FORMS}.", fix="Pass one of those strings.")
    if spec.startswith("journal:"):
        path = spec[len("journal:"):]
        if not path.strip():
            raise UserError("storage='journal:' names no file.", why=f"A storage is {_FORMS}.",
                            fix="Pass 'journal:/path/to/study.log'.")
        return "journal", path
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    dialect = scheme.group(1).split("+")[0].lower() if scheme else None
    if dialect not in _DIALECTS:
        raise UserError(f"storage={spec!r} is not a storage Optuna can open.",
                        why=f"A storage is {_FORMS}.",
                        fix="Check the URL's scheme (sqlite:///, postgresql://, mysql://) or use "
                        "'journal:PATH' for a file.")
    if dialect == "sqlite" and not spec.startswith("sqlite:///"):
        raise UserError(f"storage={spec!r}: a SQLite URL has three slashes before the path.",
                        fix="Use 'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db'.")
    return "rdb", spec


@dataclass
class StudyStorage:
    """An opened storage and what the search needs to know about it.

    Attributes:
        kind: ``"default"``, ``"journal"``, ``"rdb"`` or ``"object"``.
        storage: The Optuna storage object.
        label: The storage for messages and JSON (passwords hidden).
        heartbeat: Whether killed workers' trials are detected (RDB storages).
        local_db: The default storage's SQLite file; mirror_db: its copy in the mirror.
    """

    kind: str
    storage: Any
    label: str
    heartbeat: bool
    local_db: Path | None = None
    mirror_db: Path | None = None

    def sync_mirror(self, say: Callable[[str], None]) -> None:
        """Copy a consistent snapshot of the local database into the mirror (atomically)."""
        if self.local_db is None or self.mirror_db is None or not self.local_db.is_file():
            return
        from utils.atomic import copy_atomic

        snapshot = self.local_db.with_name(f".{self.local_db.name}.snapshot")
        try:
            # SQLite's backup API: a copy of the file bytes could catch another worker's
            # half-done transaction
            with contextlib.closing(sqlite3.connect(self.local_db, timeout=SQLITE_TIMEOUT)) as src, \
                    contextlib.closing(sqlite3.connect(snapshot)) as dst:
                src.backup(dst)
            copy_atomic(snapshot, self.mirror_db, digest=False)
        except (OSError, sqlite3.Error) as exc:
            say(f"Could not copy the study to the mirror ({exc}); the next trial tries again.")
        finally:
            snapshot.unlink(missing_ok=True)


def open_storage(spec: Any, search_dir: Path, mirror_dir: str | None, heartbeat: int,
                 say: Callable[[str], None]) -> StudyStorage:
    """Open ``spec`` (see :func:`check_storage`) for a search whose folder is ``search_dir``."""
    kind, target = check_storage(spec)
    if kind == "object":
        beats = getattr(spec, "get_heartbeat_interval", lambda: None)() is not None
        return StudyStorage(kind, spec, type(spec).__name__, beats)
    if kind == "journal":
        return _journal(Path(str(target)))
    local: Path | None = None
    mirror: Path | None = None
    if kind == "default":
        local = search_dir / DB_FILE
        mirror = Path(mirror_dir) / DB_FILE if mirror_dir else None
        if not local.is_file() and mirror is not None and mirror.is_file():
            from utils.atomic import copy_atomic

            copy_atomic(mirror, local, digest=False)
            say(f"Continuing the study from the mirror's copy ({mirror}).")
        local.parent.mkdir(parents=True, exist_ok=True)
        target = f"sqlite:///{local.resolve()}"
    elif target is not None and target.startswith("sqlite:///") and "/content/drive" in target:
        say("Warning: SQLite's file locking does not work on Google Drive; keep the database "
            "on local disk (the default storage mirrors it to Drive) or use 'journal:PATH'.")
    return _rdb(kind, str(target), heartbeat, local, mirror)


def _rdb(kind: str, url: str, heartbeat: int, local: Path | None, mirror: Path | None,
         ) -> StudyStorage:
    import warnings

    import optuna
    import sqlalchemy.exc

    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else \
        {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}} if url.startswith("postgres") else {}
    label = _hide_password(url)
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                        heartbeat_stale_trial_callback=retry_callback())
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
                # workers started together on a new database race to create its tables (one
                # gets "UNIQUE constraint failed: alembic_version" or "table already exists");
                # the tables are there on the next attempt
                racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or \
                    "already exists" in str(exc)
                if not racing or attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise _missing_driver(url, label, exc) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.IntegrityError, ValueError, OSError) as exc:
        raise _cannot_open(url, label, exc) from None
    return StudyStorage(kind, storage, label, True, local, mirror)


def _journal(path: Path) -> StudyStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    except OSError as exc:
        raise UserError(f"Could not open the journal file {path}: {exc}.",
                        fix="Point journal: at a folder you can write.") from None
    return StudyStorage("journal", JournalStorage(backend), f"journal:{path}", False)


def _missing_driver(url: str, label: str, exc: ImportError) -> UserError:
    # Optuna re-raises the driver's ImportError with a generic text; the cause names the module
    missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None)
    driver = f" ({missing!r})" if missing else ""
    postgres = ("pip install 'psycopg[binary]' (the driver SQLAlchemy >= 2.1 uses for "
                "postgresql://; with psycopg2-binary write postgresql+psycopg2://)")
    fix = postgres if url.startswith("postgres") else \
        "pip install PyMySQL and write mysql+pymysql://" if url.startswith("mysql") else \
        f"pip install {missing or 'the driver named in the URL after +'}"
    return UserError(f"storage={label!r} needs a database driver that is not installed{driver}.",
                     why="SQLAlchemy opens a database through a separate driver package, which "
                     "the testbench does not install.", fix=f"{fix}, then run again.")


def _cannot_open(url: str, label: str, exc: Exception) -> UserError:
    """What went wrong opening a database, told by the driver's message: the login, the
    database name, the server's address or the URL itself."""
    import sqlalchemy.exc

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    what = f"Could not open the study storage {label!r}: {first}"
    text = str(exc).lower()
    if "password authentication failed" in text or "access denied for user" in text:
        return UserError(what, why="The server answered but refused the login: the user name or "
                         "the password in the URL is wrong.", fix="Check the user and password "
                         "in the URL (in a password, write @ as %40, : as %3A and / as %2F).")
    if ("database" in text and "does not exist" in text) or "unknown database" in text:
        return UserError(what, why="The server answered and accepted the login, but it has no "
                         "database by the name after the URL's last '/'. Optuna creates its "
                         "tables, not the database.", fix="Create the database once (createdb "
                         "NAME, or CREATE DATABASE NAME; in SQL) or correct its name in the URL.")
    if isinstance(exc, (sqlalchemy.exc.ArgumentError, ValueError)):
        return UserError(what, why=f"The URL is malformed. A storage is {_FORMS}.",
                         fix="Correct the URL, e.g. 'postgresql://user:password@host:5432/db'.")
    if url.startswith("sqlite"):
        return UserError(what, why="The database file's folder cannot be written or the file is "
                         "not a SQLite database.", fix="Point the URL at a file in a folder you "
                         "can write ('sqlite:///study.db' is a file here).")
    return UserError(what, why="No database server answered at the URL's address: it is not "
                     "running, the host or port is wrong, or a firewall blocks it.",
                     fix="Start the server or correct the host and port in the URL; "
                     "'psql URL' on this machine tells whether it can be reached.")


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_local_workers(trials: list[Any]) -> list[int]:
    """Numbers of the RUNNING ``trials`` whose worker was a process on this machine that is
    gone (what the journal storage, with no heartbeat, cannot tell by itself)."""
    host = socket.gethostname()
    dead = []
    for t in trials:
        worker = str(t.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _pid_alive(int(pid)):
            dead.append(t.number)
    return dead


def recover_running_trials(storage: str, study_name: str) -> list[int]:
    """Mark every RUNNING trial of a journal study FAIL and queue each again; returns their
    numbers. Only when no worker is running this study: a live worker's trial would run twice.

    Example:
        >>> recover_running_trials("journal:/content/drive/MyDrive/hpo.log", "my-study")
        [7]
    """
    import optuna
    from optuna.trial import TrialState

    backend = open_storage(storage, Path("."), None, 60, lambda m: None).storage
    study = optuna.load_study(study_name=study_name, storage=backend)
    study_id = backend.get_study_id_from_name(study_name)
    retry = retry_callback()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = backend.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if backend.set_trial_state_values(trial_id, state=TrialState.FAIL):
            retry(study, backend.get_trial(trial_id))
            recovered.append(t.number)
    return recovered
