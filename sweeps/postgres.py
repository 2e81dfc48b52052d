"""A throwaway PostgreSQL server from Debian's packages: for the multi-worker tests, and for trying a
PostgreSQL-backed sweep on one machine without touching the system's cluster.

    with temporary_server(databases=("optuna", "mlflow")) as pg:   # initdb + pg_ctl in a temp dir, 127.0.0.1
        pg.url("optuna")     # postgresql+psycopg://postgres@127.0.0.1:<port>/optuna

    python -m sweeps.postgres --port 5433 --dir /tmp/nanovlm-pg     # runs until Ctrl-C, prints the two URLs

Install the server with `bash .ci/postgres` (apt-get install postgresql). PostgreSQL refuses to run
as root, so as root the server runs as the `postgres` user that the Debian package creates (via
`runuser`), in a directory that user owns. It listens on 127.0.0.1 only, its socket is in that
directory, and authentication is `trust`: this is a local scratch server, not a production one
(for workers on several machines use a real server with passwords; see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_bindir() -> Path:
    """The directory of initdb/pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if found:
        return Path(found[-1]).parent
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
                              "`bash .ci/postgres` (Debian: apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bindir: Path
    root: Path  # holds data/, the socket and the log
    port: int
    user: str = "postgres"  # the database superuser

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        return [*_as_owner(), str(self.bindir / tool), *args]

    def create_database(self, name: str) -> None:
        subprocess.run(self._cmd("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name),
                       check=True, capture_output=True, text=True, timeout=60)

    def psql(self, database: str, sql: str) -> str:
        done = subprocess.run(self._cmd("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d",
                                        database, "-At", "-c", sql), check=True, capture_output=True, text=True,
                              timeout=60)
        return done.stdout.strip()


def _as_owner() -> list[str]:
    """Root runs the tools as the `postgres` user (PostgreSQL will not run as root); others as themselves."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


@contextlib.contextmanager
def temporary_server(databases: Sequence[str] = (), port: int | None = None, root: str | Path | None = None,
                     durable: bool = False) -> Iterator[Server]:
    """Start a server in a new directory, create `databases`, stop it and (if we made it) delete it after.

    `durable=False` turns off fsync: fast, and fine for data that is deleted afterwards.
    """
    bindir = find_bindir()
    made = root is None
    # Not under pytest's tmp_path: that is private to root, and the postgres user must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="nanovlm-pg-") if made else root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    server = Server(bindir, root, port or free_port())
    started = False
    try:
        if not (data / "PG_VERSION").exists():
            _run(server._cmd("initdb", "-D", str(data), "-U", server.user, "--auth=trust", "-E", "UTF8",
                             "--no-instructions", *([] if durable else ["--no-sync"])), "initdb")
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(server.port),
                    "unix_socket_directories": f"'{root}'", "max_connections": "200"}
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        # A conf file of our own, included last, so later settings win over the defaults initdb wrote.
        (data / "nanovlm.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        conf = data / "postgresql.conf"
        if "include_if_exists = 'nanovlm.conf'" not in conf.read_text():
            with open(conf, "a") as handle:
                handle.write("\ninclude_if_exists = 'nanovlm.conf'\n")
        _run(server._cmd("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start"),
             "pg_ctl start (log: " + str(root / "server.log") + ")")
        started = True
        for name in databases:
            server.create_database(name)
        yield server
    finally:
        if started:
            subprocess.run(server._cmd("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"),
                           capture_output=True, timeout=120)
        if made:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.postgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument("--dir", default="", help="server directory (kept, so it can be restarted); default: a "
                                                   "temporary one, deleted at exit")
    parser.add_argument("--databases", default="optuna,mlflow", help="databases to create on a new server")
    args = parser.parse_args(argv)
    names = [n for n in args.databases.split(",") if n]
    fresh = not args.dir or not (Path(args.dir) / "data" / "PG_VERSION").exists()
    try:
        with temporary_server(names if fresh else (), port=args.port, root=args.dir or None,
                              durable=bool(args.dir)) as pg:
            print(f"PostgreSQL on 127.0.0.1:{pg.port} (data in {pg.root}); Ctrl-C stops it")
            for name in names:
                print(f"  {name}: {pg.url(name)}")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except PostgresUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
