"""PostgreSQL + pgvector as a vector index (``pip install 'regatt[postgres]'``).

Layout in the database, for a table name ``T`` (default ``regatt``)::

    T_meta  (key text primary key, value text)   card_hash, dim, model, format
    T       (row bigint primary key, name text unique not null, embedding vector(D))

``row`` is the feature store's row number (0 .. N-1, the order added), so a search answers the
same row ids as every other :class:`~regatt_sdk.index.VectorIndex`. Vectors are stored in full
float32 (``vector`` holds up to 16,000 dimensions). The HNSW index (inner product) is built on
``embedding`` itself when ``D <= 2000`` (pgvector's limit for indexing ``vector``) and on the
expression ``embedding::halfvec(D)`` above (``halfvec`` indexes up to 4,000 dimensions); either
way the candidates it returns are re-scored with the stored float32 vectors, so scores are the
exact inner products.

Loading (:func:`load_store`) copies a feature store with ``COPY ... FROM STDIN (FORMAT BINARY)``
in batches, one transaction each: a killed load leaves whole batches, and a re-run adds only the
rows the table lacks (rows already there are checked against the store by name). The model card
hash is recorded in ``T_meta``; a store made by another model is refused.

Connections: a :class:`PgVectorIndex` holds a fixed pool of ``pool_size`` connections
(``psycopg_pool``; 1 for a command, a few for ``regatt serve --db-pool``), opened once and
reused by every call; each call takes one for its duration, so up to ``pool_size`` searches run
at once and a broken connection is replaced by the pool.

Shapes: queries ``(Q, D)`` float32; results ``(scores (Q, k) float32, rows (Q, k) int64)``, best
first, ``-1`` rows (score ``-inf``) when fewer than ``k`` were found.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import RegattError
from ..names import display
from ..optional import require
from .exact import as_queries

#: pgvector indexes ``vector`` up to this many dimensions; above, the index is on ``halfvec``
MAX_VECTOR_INDEX_DIM = 2000
#: pgvector indexes ``halfvec`` up to this many dimensions
MAX_HALFVEC_INDEX_DIM = 4000
#: rows per COPY transaction when loading
DEFAULT_BATCH_ROWS = 5000
#: HNSW candidates visited per query (``hnsw.ef_search``); raised to ``k`` when ``k`` is larger
DEFAULT_EF_SEARCH = 100
DB_FORMAT = "1"
_TABLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,40}")


class DatabaseError(RegattError):
    """The database cannot be reached, or holds a table that does not match."""


class DatabaseUnavailable(DatabaseError):
    """The database stopped answering after the index was opened (down, restarting, network):
    a call gave up after :attr:`PgVectorIndex.wait_s` instead of waiting for it (a server answers
    503 + ``Retry-After``); the pool reconnects by itself when it is back."""


#: seconds a call waits for one of the pool's connections before :class:`DatabaseUnavailable`
DEFAULT_WAIT_S = 2.0


def import_psycopg():
    """``psycopg`` (with pgvector's adapters and ``psycopg_pool`` importable) or a
    ``MissingExtraError`` naming ``regatt[postgres]``."""
    psycopg = require("psycopg", extra="postgres", package="psycopg[binary]", what="PostgreSQL search (--db)")
    require("pgvector.psycopg", extra="postgres", package="pgvector", what="PostgreSQL search (--db)")
    require("psycopg_pool", extra="postgres", package="psycopg-pool", what="PostgreSQL search (--db)")
    return psycopg


def check_table(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (it is put into SQL text), else an error."""
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name):  # match: "$" passes "name\n"
        raise DatabaseError(f"table name {name!r}: use lower-case letters, digits and _ (at most 41)")
    return name


def index_type(dim: int) -> str:
    """``vector`` for ``dim <= 2000``, ``halfvec`` up to 4000; above, :class:`DatabaseError`."""
    if dim <= MAX_VECTOR_INDEX_DIM:
        return "vector"
    if dim <= MAX_HALFVEC_INDEX_DIM:
        return "halfvec"
    raise DatabaseError(f"pgvector cannot index {dim}-d vectors (at most {MAX_HALFVEC_INDEX_DIM})")


def connect(url: str, timeout: int = 10):
    """An autocommit psycopg connection to ``url`` with pgvector's types registered."""
    psycopg = import_psycopg()
    from pgvector.psycopg import register_vector

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=timeout)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact(url)}: {str(exc).strip().splitlines()[0]}") from None
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        conn.close()
        raise DatabaseError(
            f"{redact(url)}: the pgvector extension is not available ({str(exc).strip().splitlines()[0]}); "
            "install pgvector on the server"
        ) from None
    register_vector(conn)
    return conn


def open_pool(url: str, size: int, *, wait: bool = True):
    """A fixed pool of ``size`` autocommit connections to ``url`` (pgvector's types registered on
    each), opened now (``wait``: until all are connected); the database was checked by
    :func:`connect` first. The pool never gives up reconnecting after an outage."""
    import_psycopg()
    from pgvector.psycopg import register_vector
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool = ConnectionPool(
        url, min_size=size, max_size=size, kwargs={"autocommit": True, "connect_timeout": 10},
        configure=register_vector, open=False, num_workers=1, name="regatt",
        reconnect_timeout=float("inf"),
    )  # fmt: skip
    try:
        pool.open(wait=wait, timeout=30)
    except PoolTimeout:
        pool.close()
        raise DatabaseError(f"{redact(url)}: could not open {size} connections within 30 s") from None
    return pool


def _array(value: Any) -> np.ndarray:
    """A fetched ``vector`` value (pgvector's ``Vector`` or a sequence) as (D,) float32."""
    value = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(value, dtype=np.float32)


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class PgVectorIndex:
    """A pgvector table as a :class:`~regatt_sdk.index.VectorIndex` (see the module docstring).

    ``PgVectorIndex(url, table="regatt", ef_search=100, exact=False, pool_size=1)`` opens an
    existing table; :meth:`create` makes one. ``exact=True`` searches with a sequential scan (no
    HNSW), for recall checks. Thread-safe: ``pool_size`` connections opened once, one per call
    in progress (:meth:`connection`); :meth:`close` closes them.
    """

    backend = "pgvector"
    #: query-side steps that need a matrix (database augmentation) build this backend in memory
    memory_backend = "exact"

    def __init__(
        self,
        url: str,
        table: str = "regatt",
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        exact: bool = False,
        pool_size: int = 1,
        wait_s: float = DEFAULT_WAIT_S,
    ):
        self.url = url
        self.wait_s = float(wait_s)
        self._revived_at = 0.0
        self._revive_lock = threading.Lock()
        self.table = check_table(table)
        self.ef_search = int(ef_search)
        self.exact = exact
        #: ``(SQL condition on the jsonb column meta, parameters)`` every search applies
        #: (:meth:`set_filters`), or None
        self.where: tuple[str, list] | None = None
        if int(pool_size) < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.pool_size = int(pool_size)
        conn = connect(url)  # the clear errors: unreachable, no pgvector, no table
        try:
            meta = read_meta(conn, self.table)
        finally:
            conn.close()
        if meta is None:
            raise DatabaseError(
                f"{redact(url)} has no regatt table '{self.table}': load a store into it with  "
                f"regatt index MODEL --resume -o STORE --db URL"
            )
        self.meta = meta
        self._dim = int(meta["dim"])
        self.kind = index_type(self._dim)
        self._pool = open_pool(url, self.pool_size)

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """One of the pool's connections, for the duration of the ``with`` block.

        :class:`DatabaseUnavailable` when none is free within ``timeout`` (default
        :attr:`wait_s`) or the connection breaks during the block (the database went down):
        a caller never waits the pool's 30 s nor sees psycopg's own exceptions for it."""
        psycopg = import_psycopg()
        from psycopg_pool import PoolTimeout

        wait = self.wait_s if timeout is None else float(timeout)
        try:
            with self._pool.connection(timeout=wait) as conn:
                yield conn
        except PoolTimeout:
            self._revive()
            raise DatabaseUnavailable(
                f"{redact(self.url)}: no database connection within {wait:g} s (is PostgreSQL up?)"
            ) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"{redact(self.url)}: the database connection failed ({str(exc).strip().splitlines()[0]})"
            ) from None

    def _revive(self) -> None:
        """After a wait for a connection timed out: when the database answers again, replace the
        pool now (its own reconnection backs off exponentially, up to minutes after an outage)."""
        now = time.monotonic()
        if now - self._revived_at < 1.0 or not self._revive_lock.acquire(blocking=False):
            return
        try:
            self._revived_at = now
            if self._pool.get_stats().get("pool_available", 0) > 0:
                return
            try:
                connect(self.url, timeout=1).close()
            except DatabaseError:
                return  # still down: the pool keeps trying
            old, self._pool = self._pool, open_pool(self.url, self.pool_size, wait=False)
            threading.Thread(target=old.close, kwargs={"timeout": 5}, daemon=True).start()
        finally:
            self._revive_lock.release()

    def ping(self, timeout: float = 1.0) -> str | None:
        """``None`` when the database answers ``SELECT 1`` within ``timeout`` s, else the reason."""
        try:
            with self.connection(timeout) as conn:
                conn.execute("SELECT 1")
        except DatabaseUnavailable as exc:
            return str(exc)
        return None

    @classmethod
    def create(
        cls, url: str, dim: int, card_hash: str, table: str = "regatt", model: str = "", **kw: Any
    ) -> PgVectorIndex:
        """Make (or reuse, when it is for the same model) the tables for ``dim``-d vectors."""
        conn = connect(url)
        try:
            ensure_tables(conn, check_table(table), dim, card_hash, model)
        finally:
            conn.close()
        return cls(url, table, **kw)

    # -- the VectorIndex interface --------------------------------------------------------------
    @property
    def size(self) -> int:
        """Rows are numbered ``0 .. size-1`` (the store's rows; removed ones are absent)."""
        with self.connection() as conn:
            return int(conn.execute(f"SELECT coalesce(max(row) + 1, 0) FROM {self.table}").fetchone()[0])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def card_hash(self) -> str:
        return str(self.meta.get("card_hash", ""))

    def names(self) -> list[str]:
        """The name of every row, in row order (row ``i`` -> ``names()[i]``; ``""`` for a row
        removed from the store, which the table no longer holds)."""
        with self.connection() as conn:
            rows = conn.execute(f"SELECT row, name FROM {self.table} ORDER BY row").fetchall()
        out = [""] * (int(rows[-1][0]) + 1 if rows else 0)
        for row, name in rows:
            out[int(row)] = name
        return out

    def add(self, vectors: np.ndarray, names: Sequence[str] | None = None) -> None:
        """Append ``vectors`` (M, D) as rows ``N .. N+M-1`` (named ``names``, default ``row<i>``)."""
        v = as_queries(vectors)
        if v.shape[1] != self.dim:
            raise DatabaseError(f"cannot add {v.shape[1]}-d vectors to a table of {self.dim}-d ones")
        start = self.size
        names = list(names) if names is not None else [f"row{start + i}" for i in range(v.shape[0])]
        with self.connection() as conn:
            copy_rows(conn, self.table, start, names, v)

    def set_filters(self, filters: Any) -> None:
        """Search only rows whose photo metadata ``filters`` keep (:mod:`regatt_sdk.filters`);
        HNSW searches then use pgvector's iterative index scans (``hnsw.iterative_scan =
        relaxed_order``, pgvector >= 0.8) so that a filtered query still finds its ``k`` rows."""
        from ..filters import parse_filters, sql_where

        if not parse_filters(filters):
            self.where = None
            return
        with self.connection() as conn:
            has = conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = 'meta'", (self.table,)
            ).fetchone()
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if not has:
            raise DatabaseError(
                f"table {self.table} holds no photo metadata to filter on: load it from a synced store with  "
                "regatt sync MODEL SOURCES... -o STORE --db URL"
            )
        major_minor = tuple(int(x) for x in re.findall(r"\d+", version[0] if version else "0")[:2])
        self._iterative = major_minor >= (0, 8)
        self.where = sql_where(filters)

    def search_where(self, queries: np.ndarray, k: int, where: tuple[str, list]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with the condition ``where`` (:func:`regatt_sdk.filters.sql_where`) for
        this call only (thread-safe: the index is not changed)."""
        if not hasattr(self, "_iterative"):
            with self.connection() as conn:
                version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            self._iterative = tuple(int(x) for x in re.findall(r"\d+", version[0] if version else "0")[:2]) >= (0, 8)
        return self.search(queries, k, where=where)

    def _search_one(
        self, conn, q: np.ndarray, k: int, exact: bool, where: tuple[str, list] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        where = where or self.where
        cond, cond_params = where or ("TRUE", [])
        if exact:
            sql = f"SELECT row, embedding <#> %s AS d FROM {self.table} WHERE {cond} ORDER BY d LIMIT %s"
            params: tuple = (q, *cond_params, k)
        else:
            if self.kind == "halfvec":
                from pgvector import HalfVector

                order, qq = f"embedding::halfvec({self.dim}) <#> %s", HalfVector(q)
            else:
                order, qq = "embedding <#> %s", q
            # HNSW finds candidates; the stored float32 vectors give the exact scores
            sql = (
                f"SELECT row, embedding <#> %s AS d FROM (SELECT row, embedding FROM {self.table} "
                f"WHERE {cond} ORDER BY {order} LIMIT %s) c ORDER BY d, row"
            )
            params = (q, *cond_params, qq, k)
        with conn.transaction():
            if exact:
                conn.execute("SET LOCAL enable_indexscan = off")
            else:
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, k)}")
                if where is not None and getattr(self, "_iterative", False):
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = conn.execute(sql, params).fetchall()
        ids = np.full(k, -1, dtype=np.int64)
        scores = np.full(k, -np.inf, dtype=np.float32)
        for j, (row, d) in enumerate(rows):
            ids[j], scores[j] = row, -d
        return scores, ids

    def search(
        self, queries: np.ndarray, k: int, *, exact: bool | None = None, where: tuple[str, list] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores (Q, k), rows (Q, k))`` (HNSW unless ``exact``,
        default the index's own)."""
        q = as_queries(queries)
        if q.shape[1] != self.dim:
            raise RegattError(
                f"table {self.table} holds {self.dim}-d descriptors but the queries are {q.shape[1]}-d: "
                "use the model that filled it"
            )
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be at least 1, got {k}")
        exact = self.exact if exact is None else exact
        with self.connection() as conn:
            out = [self._search_one(conn, row, k, exact, where) for row in q]
        return np.stack([s for s, _ in out]), np.stack([i for _, i in out])

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row ranked (an exact scan): ``(scores (Q, N), rows (Q, N))``."""
        return self.search(queries, max(self.size, 1), exact=True)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored rows ``ids`` (K,) -> (K, D) float32 (in the order of ``ids``)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        with self.connection() as conn:
            got = dict(
                conn.execute(f"SELECT row, embedding FROM {self.table} WHERE row = ANY(%s)", (ids.tolist(),)).fetchall()
            )
        missing = [int(i) for i in ids if int(i) not in got]
        if missing:
            raise DatabaseError(f"table {self.table} has no row {missing[0]}")
        return np.stack([_array(got[int(i)]) for i in ids])

    @property
    def database(self) -> np.ndarray:
        """Every stored vector (N, D) float32, in row order (read once, for database augmentation)."""
        with self.connection() as conn:
            rows = conn.execute(f"SELECT embedding FROM {self.table} ORDER BY row").fetchall()
        return np.stack([_array(r[0]) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)

    def save(self, path: str | os.PathLike):
        """The table lives in the database: nothing to write (``path`` is not used)."""
        raise RegattError("a pgvector index lives in its database: there is no file to save")

    @classmethod
    def load(cls, url: str, table: str = "regatt", **kw: Any) -> PgVectorIndex:
        return cls(url, table, **kw)

    def build_hnsw(self, *, m: int = 16, ef_construction: int = 64) -> float:
        """Create the HNSW index if missing; returns the seconds it took (0 when it existed)."""
        with self.connection() as conn:
            return build_hnsw(conn, self.table, self.dim, m=m, ef_construction=ef_construction)

    def close(self) -> None:
        """Close the pool's connections (waits for calls in progress)."""
        self._pool.close()

    def __repr__(self) -> str:
        return f"PgVectorIndex({redact(self.url)!r}, table={self.table!r}, dim={self.dim}, index={self.kind})"


# -- schema and loading (pure functions over a connection) -------------------------------------


def read_meta(conn, table: str) -> dict[str, str] | None:
    """The ``T_meta`` key/values, or None when the table does not exist."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{table}_meta",)).fetchone()[0]
    if exists is None:
        return None
    return dict(conn.execute(f"SELECT key, value FROM {table}_meta").fetchall())


def ensure_tables(conn, table: str, dim: int, card_hash: str, model: str = "") -> dict[str, str]:
    """Create ``T`` and ``T_meta`` for one model, or check the existing ones belong to it."""
    index_type(dim)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        meta = read_meta(conn, table)
        if meta is None:
            conn.execute(f"CREATE TABLE {table}_meta (key text PRIMARY KEY, value text NOT NULL)")
            conn.execute(
                f"CREATE TABLE {table} (row bigint PRIMARY KEY, name text UNIQUE NOT NULL, "
                f"embedding vector({int(dim)}) NOT NULL)"
            )
            meta = {"format": DB_FORMAT, "card_hash": str(card_hash), "dim": str(int(dim)), "model": model}
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table}_meta VALUES (%s, %s)", list(meta.items()))
            return meta
    if meta.get("card_hash") != str(card_hash) or int(meta.get("dim", -1)) != int(dim):
        raise DatabaseError(
            f"table {table} holds vectors of another model (card {meta.get('card_hash')}, dim "
            f"{meta.get('dim')}), not this one (card {card_hash}, dim {dim}): use another --table "
            "or another database"
        )
    return meta


def copy_rows(conn, table: str, start: int, names: Sequence[str], vectors: np.ndarray) -> None:
    """Rows ``start ..`` of ``names`` / ``vectors`` (M, D) in one ``COPY (FORMAT BINARY)`` transaction.

    The ``name`` column holds :func:`regatt_sdk.names.display` of each name (valid UTF-8, one
    line: a file name that is not UTF-8 keeps its bytes as ``\\xNN``)."""
    psycopg = import_psycopg()
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (row, name, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "text", "vector"])
                    for i, (name, vec) in enumerate(zip(names, vectors)):
                        cp.write_row((start + i, display(name), vec))
    except psycopg.errors.UniqueViolation as exc:
        raise DatabaseError(
            f"table {table}: rows {start}..{start + len(names) - 1} repeat a name already there "
            f"({str(exc).strip().splitlines()[-1]}); was it loaded from another store? use another --table"
        ) from None


def build_hnsw(conn, table: str, dim: int, *, m: int = 16, ef_construction: int = 64) -> float:
    """``CREATE INDEX IF NOT EXISTS T_hnsw`` (inner product; on ``halfvec`` above 2000-d); seconds."""
    if conn.execute("SELECT to_regclass(%s)", (f"{table}_hnsw",)).fetchone()[0] is not None:
        return 0.0
    kind = index_type(dim)
    column = "embedding vector_ip_ops" if kind == "vector" else f"(embedding::halfvec({dim})) halfvec_ip_ops"
    t = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw ({column}) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )
    return time.perf_counter() - t


def load_store(
    store_path: str | os.PathLike,
    url: str,
    *,
    table: str = "regatt",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    hnsw: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Copy the feature store at ``store_path`` into ``table`` at ``url``, idempotently.

    Adds only the store rows the table lacks (``COPY`` in transactions of ``batch_rows``), after
    checking the model card hash and that the rows already there carry the store's names; then
    builds the HNSW index (when ``hnsw``). Rows removed from the store
    (:mod:`regatt_sdk.tombstones`) are deleted from the table first and never copied; a store
    compacted since the last load (another ``side_meta["generation"]``) is loaded again from
    row 0 (its rows were renumbered). Returns ``{"rows", "added", "deleted", "seconds", "hnsw_s"}``.
    """
    from ..store import FeatureStore
    from ..tombstones import deleted_rows

    store = FeatureStore.open(store_path)
    if store.count == 0:
        raise DatabaseError(f"feature store {store_path} is empty: nothing to load")
    names, vectors = store.names, store.vectors
    gone = deleted_rows(store)
    generation = str(store.side_meta.get("generation", ""))
    conn = connect(url)
    t0 = time.perf_counter()
    deleted = 0
    try:
        meta = ensure_tables(
            conn, check_table(table), store.dim, store.card_hash, model=str(store.manifest.get("model", ""))
        )
        if meta.get("generation", "") != generation:
            with conn.transaction():  # the store was compacted: its rows were renumbered
                conn.execute(f"DELETE FROM {table}")
                conn.execute(
                    f"INSERT INTO {table}_meta VALUES ('generation', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (generation,),
                )
        if len(gone):
            with conn.transaction():
                deleted = conn.execute(f"DELETE FROM {table} WHERE row = ANY(%s)", (gone.tolist(),)).rowcount
        last = conn.execute(f"SELECT row, name FROM {table} ORDER BY row DESC LIMIT 1").fetchone()
        have = int(last[0]) + 1 if last else 0
        if have > store.count:
            raise DatabaseError(
                f"table {table} has rows up to {have - 1} but {store_path} only {store.count}: it was loaded from "
                "another store; use another --table"
            )
        if last and last[1] != display(names[have - 1]):
            raise DatabaseError(
                f"table {table} does not hold the first {have} rows of {store_path} (row {last[0]} is "
                f"{last[1]!r}): it was loaded from another store; use another --table"
            )
        removed = np.zeros(store.count, bool)
        removed[gone[gone < store.count]] = True
        added = 0
        for start in range(have, store.count, batch_rows):
            stop = min(start + batch_rows, store.count)
            rows = np.flatnonzero(~removed[start:stop]) + start
            for a, b in _runs(rows):
                copy_rows(conn, table, a, names[a:b], np.asarray(vectors[a:b], dtype=np.float32))
                added += b - a
            if progress is not None:
                progress(stop, store.count)
        _load_photo_meta(conn, table, store, removed)
        hnsw_s = build_hnsw(conn, table, store.dim) if hnsw else 0.0
        conn.execute(f"ANALYZE {table}")
    finally:
        conn.close()
    return {
        "rows": store.count - len(gone), "added": added, "deleted": int(deleted),
        "seconds": time.perf_counter() - t0, "hnsw_s": hnsw_s,
    }  # fmt: skip


def _load_photo_meta(conn, table: str, store: Any, removed: np.ndarray) -> None:
    """The store's photo metadata (:mod:`regatt_sdk.photometa`) into the jsonb column ``meta``
    (added when missing) of the rows that lack it, for filtered searches."""
    from ..photometa import covered, read_meta

    if not covered(store):
        return
    import json

    with conn.transaction():
        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS meta jsonb")
    todo = [int(r) for (r,) in conn.execute(f"SELECT row FROM {table} WHERE meta IS NULL ORDER BY row").fetchall()]
    recs = read_meta(store)
    todo = [r for r in todo if r < len(recs) and not removed[r]]
    for a in range(0, len(todo), DEFAULT_BATCH_ROWS):
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    f"UPDATE {table} SET meta = %s::jsonb WHERE row = %s",
                    [(json.dumps(recs[r]), r) for r in todo[a : a + DEFAULT_BATCH_ROWS]],
                )


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` runs of consecutive row numbers in sorted ``rows``."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for part in np.split(rows, breaks):
        yield int(part[0]), int(part[-1]) + 1
