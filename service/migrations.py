"""Versioned schema of the service, applied under a Postgres advisory lock.

LangGraph's own tables come from the saver's and the store's ``setup()``; concurrent ``setup()``
calls on an empty database fail with unique violations, so every replica (and the migrate Job)
takes the same session-level advisory lock first and the losers find the work done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import psycopg
import structlog
from langgraph.checkpoint.postgres import BasePostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.postgres.base import PostgresIndexConfig
from psycopg import AsyncConnection
from psycopg.rows import DictRow

log = structlog.get_logger(__name__)

# Arbitrary but fixed: every threadkeeper process agrees on it. ("tkmigrat" as hex-ish bytes.)
MIGRATION_LOCK_KEY = 0x746B_6D69_6772_6174

CREATE_VERSION_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS threadkeeper_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# Index i holds version i + 1. Append only: a released version is never edited.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE threads (
        thread_id       uuid PRIMARY KEY,
        owner           text NOT NULL,
        title           text,
        metadata        jsonb NOT NULL DEFAULT '{}',
        status          text NOT NULL DEFAULT 'idle'
                        CHECK (status IN ('idle', 'busy', 'interrupted', 'error')),
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        last_message_at timestamptz,
        archived_at     timestamptz
    );
    -- "my threads, most recently active first"
    CREATE INDEX threads_owner_activity_idx
        ON threads (owner, last_message_at DESC NULLS LAST, thread_id)
        WHERE archived_at IS NULL;
    CREATE INDEX threads_owner_created_idx ON threads (owner, created_at DESC);
    -- "idle since" and "archived since", for the reaper
    CREATE INDEX threads_idle_idx ON threads (last_message_at) WHERE archived_at IS NULL;
    CREATE INDEX threads_archived_idx ON threads (archived_at) WHERE archived_at IS NOT NULL;
    CREATE INDEX threads_metadata_idx ON threads USING gin (metadata jsonb_path_ops);

    CREATE TABLE runs (
        run_id             uuid PRIMARY KEY,
        thread_id          uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        assistant_id       text NOT NULL,
        status             text NOT NULL
                           CHECK (status IN ('pending', 'running', 'success', 'error',
                                             'timeout', 'interrupted')),
        attempt            integer NOT NULL DEFAULT 0,
        lease_holder       text,
        lease_expires_at   timestamptz,
        input              jsonb,
        kwargs             jsonb NOT NULL DEFAULT '{}',
        metadata           jsonb NOT NULL DEFAULT '{}',
        multitask_strategy text NOT NULL DEFAULT 'reject',
        error              jsonb,
        created_at         timestamptz NOT NULL DEFAULT now(),
        updated_at         timestamptz NOT NULL DEFAULT now(),
        started_at         timestamptz,
        ended_at           timestamptz
    );
    CREATE INDEX runs_thread_idx ON runs (thread_id, created_at DESC);
    CREATE INDEX runs_active_idx ON runs (thread_id) WHERE status IN ('pending', 'running');
    CREATE INDEX runs_pending_idx ON runs (created_at) WHERE status = 'pending';
    """,
    # v2: cancellation, the checkpoint a run ended on, idempotent submission, and the events
    # streamed to clients.
    """
    ALTER TABLE runs
        ADD COLUMN cancel_action text CHECK (cancel_action IN ('interrupt', 'rollback')),
        ADD COLUMN checkpoint_id text,
        ADD COLUMN idempotency_key text;
    CREATE UNIQUE INDEX runs_idempotency_idx ON runs (thread_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- "idle since" for threads that never got a message (the reaper ages them by created_at)
    CREATE INDEX threads_never_spoke_idx ON threads (created_at)
        WHERE archived_at IS NULL AND last_message_at IS NULL;
    CREATE TABLE run_events (
        run_id     uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        seq        bigint NOT NULL,
        event      text NOT NULL,
        data       jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX run_events_created_idx ON run_events (created_at);
    """,
    # v3: attempts that count toward THREADKEEPER_MAX_ATTEMPTS, and the per-owner cap on
    # executing runs (THREADKEEPER_MAX_RUNS_PER_OWNER).
    """
    ALTER TABLE runs ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0;
    -- the runs executing now, a few per replica: what the per-owner cap counts
    CREATE INDEX runs_running_idx ON runs (thread_id) WHERE status = 'running';
    -- Whether the owner may start one more run, with at most ``cap`` executing at once (0: no
    -- cap). Claims of one owner queue on an advisory lock, and the count after it sees every
    -- claim committed before: a VOLATILE function takes a fresh snapshot per statement, where
    -- the calling statement's own snapshot predates the lock.
    CREATE FUNCTION threadkeeper_owner_has_room(owner_name text, cap integer)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        IF cap <= 0 THEN
            RETURN true;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended('threadkeeper owner ' || owner_name, 0));
        RETURN (
            SELECT count(*) FROM runs r JOIN threads t USING (thread_id)
            WHERE t.owner = owner_name AND r.status = 'running'
              AND r.lease_expires_at > now()
        ) < cap;
    END
    $$;
    """,
    # v4: assistants, with every version kept. owner NULL: a system assistant (one per graph,
    # visible to every owner).
    """
    CREATE TABLE assistants (
        assistant_id uuid PRIMARY KEY,
        graph_id     text NOT NULL,
        owner        text,
        name         text NOT NULL,
        description  text,
        config       jsonb NOT NULL DEFAULT '{}',
        context      jsonb NOT NULL DEFAULT '{}',
        metadata     jsonb NOT NULL DEFAULT '{}',
        version      integer NOT NULL DEFAULT 1,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX assistants_owner_created_idx ON assistants (owner, created_at DESC);
    CREATE INDEX assistants_metadata_idx ON assistants USING gin (metadata jsonb_path_ops);
    CREATE TABLE assistant_versions (
        assistant_id uuid NOT NULL REFERENCES assistants (assistant_id) ON DELETE CASCADE,
        version      integer NOT NULL,
        graph_id     text NOT NULL,
        name         text NOT NULL,
        description  text,
        config       jsonb NOT NULL DEFAULT '{}',
        context      jsonb NOT NULL DEFAULT '{}',
        metadata     jsonb NOT NULL DEFAULT '{}',
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (assistant_id, version)
    );
    """,
    # v5: the temporary threads of stateless runs (POST /runs...), deleted once their runs
    # ended, by whichever replica is up; a thread's own ttl, which the reaper enforces; and
    # delayed runs (after_seconds).
    """
    ALTER TABLE threads
        ADD COLUMN temporary boolean NOT NULL DEFAULT false,
        ADD COLUMN ttl_strategy text CHECK (ttl_strategy IN ('delete', 'keep_latest')),
        ADD COLUMN ttl_minutes double precision CHECK (ttl_minutes > 0),
        ADD COLUMN ttl_expires_at timestamptz;
    -- a run asked for after_seconds: no replica claims it before then
    ALTER TABLE runs ADD COLUMN not_before timestamptz;
    CREATE INDEX threads_temporary_idx ON threads (created_at) WHERE temporary;
    -- "expired threads, oldest expiry first", for the reaper
    CREATE INDEX threads_ttl_idx ON threads (ttl_expires_at, thread_id)
        WHERE ttl_expires_at IS NOT NULL;
    """,
    # v6: crons. thread_id NULL: a stateless cron (a new thread per run). Threads a cron made
    # for one run are listed in cron_threads until they are deleted after that run.
    """
    CREATE TABLE crons (
        cron_id          uuid PRIMARY KEY,
        owner            text NOT NULL,
        thread_id        uuid REFERENCES threads (thread_id) ON DELETE CASCADE,
        assistant_id     text NOT NULL,
        schedule         text NOT NULL,
        timezone         text,
        end_time         timestamptz,
        payload          jsonb NOT NULL DEFAULT '{}',
        metadata         jsonb NOT NULL DEFAULT '{}',
        on_run_completed text CHECK (on_run_completed IN ('delete', 'keep')),
        enabled          boolean NOT NULL DEFAULT true,
        next_run_date    timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX crons_owner_created_idx ON crons (owner, created_at DESC);
    CREATE INDEX crons_due_idx ON crons (next_run_date) WHERE enabled;
    CREATE INDEX crons_thread_idx ON crons (thread_id) WHERE thread_id IS NOT NULL;
    CREATE TABLE cron_threads (
        thread_id uuid PRIMARY KEY REFERENCES threads (thread_id) ON DELETE CASCADE,
        cron_id   uuid NOT NULL
    );
    """,
)

LATEST_VERSION = len(MIGRATIONS)
CHECKPOINT_LATEST_VERSION = len(BasePostgresSaver.MIGRATIONS) - 1
STORE_LATEST_VERSION = len(AsyncPostgresStore.MIGRATIONS) - 1

SCHEMA_VERSIONS_SQL = """
SELECT
    (SELECT coalesce(max(version), 0) FROM threadkeeper_migrations) AS service,
    (SELECT coalesce(max(v), -1) FROM checkpoint_migrations) AS checkpoint,
    (SELECT coalesce(max(v), -1) FROM store_migrations) AS store
"""


async def _acquire_lock(conn: AsyncConnection[DictRow]) -> None:
    # Poll instead of blocking in pg_advisory_lock(): a session blocked there is inside a
    # statement, and the holder's CREATE INDEX CONCURRENTLY waits for every open statement to
    # finish, which would deadlock the two.
    delay = 0.05
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (MIGRATION_LOCK_KEY,))
        row = await cur.fetchone()
        if row and row["ok"]:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def migrate(
    conn: AsyncConnection[DictRow], *, store_index: PostgresIndexConfig | None = None
) -> int:
    """Bring the database to the latest schema; returns the number of versions applied.

    ``conn`` must be in autocommit mode: the saver and the store create indexes CONCURRENTLY.
    ``store_index``: the deployment's semantic-search index, whose vector table needs pgvector.
    """
    await _acquire_lock(conn)
    try:
        await AsyncPostgresSaver(conn).setup()
        await _setup_store(conn, store_index)
        await conn.execute(CREATE_VERSION_TABLE_SQL)
        cur = await conn.execute(
            "SELECT coalesce(max(version), 0) AS v FROM threadkeeper_migrations"
        )
        row = await cur.fetchone()
        current = int(row["v"]) if row else 0
        for version in range(current + 1, LATEST_VERSION + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute(
                    "INSERT INTO threadkeeper_migrations (version) VALUES (%s)", (version,)
                )
            log.info("migration_applied", version=version)
        return LATEST_VERSION - current
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _no_embedding(texts: Sequence[str]) -> list[list[float]]:
    raise RuntimeError("migrations embed nothing")


# Whether pgvector is in this database, and whether the server could add it at all.
VECTOR_STATE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') AS installed,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') AS available
"""

CREATE_VECTOR_SQL = "CREATE EXTENSION IF NOT EXISTS vector"


async def _setup_store(conn: AsyncConnection[DictRow], index: PostgresIndexConfig | None) -> None:
    # The vector table's migrations need only the index's shape (dims, vector and index type):
    # a provider's embeddings (and their API key) or a user's function are not loaded for them.
    shape: PostgresIndexConfig | None = None
    if index is not None:
        await require_vector(conn, create=True)
        shape = index.copy()
        shape["embed"] = _no_embedding
    await AsyncPostgresStore(conn, index=shape).setup()


async def require_vector(conn: AsyncConnection[DictRow], *, create: bool) -> None:
    """Make sure pgvector is in the database (adding it when ``create``), else say why not.

    Checked before the store's own migrations run, so a missing extension is named as such and
    not as whichever of their statements happened to fail first.
    """
    cur = await conn.execute(VECTOR_STATE_SQL)
    row = await cur.fetchone()
    if row is not None and row["installed"]:
        return
    if row is None or not row["available"]:
        raise StoreIndexUnavailable("the server does not have it installed")
    if not create:
        raise StoreIndexUnavailable("it is not created in this database (run the migrations)")
    try:
        await conn.execute(CREATE_VECTOR_SQL)
    except psycopg.errors.InsufficientPrivilege as exc:
        # pgvector is not a trusted extension: only a superuser (or the database's owner on a
        # managed Postgres that allow-lists it) may create it.
        raise StoreIndexUnavailable(_first_line(exc)) from exc
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as exc:
        raise StoreIndexUnavailable(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


class StoreIndexUnavailable(Exception):
    """The store's ``index`` needs the pgvector extension, which this Postgres lacks."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            "store.index needs the pgvector extension ('vector') and this database lacks it: "
            f"{cause}. Install pgvector (CREATE EXTENSION vector, as a superuser) or remove "
            "store.index"
        )


async def schema_is_current(conn: AsyncConnection[DictRow]) -> bool:
    """True when our schema, the saver's and the store's are at the versions this code
    expects."""
    cur = await conn.execute(SCHEMA_VERSIONS_SQL)
    row = await cur.fetchone()
    return bool(
        row
        and row["service"] == LATEST_VERSION
        and row["checkpoint"] == CHECKPOINT_LATEST_VERSION
        and row["store"] == STORE_LATEST_VERSION
    )
