"""Real KQL over sandbox state: duckdb-kql on an in-memory DuckDB, fed by table providers.

A ``TableSource`` names a table, declares its columns in Kusto types and supplies its rows (a
callable, read at query time). ``KqlEngine.query`` loads the sources into DuckDB (reloading only
when their content changed since the last query), translates the KQL with duckdb-kql and runs it.
The answer is typed the way Kusto types it (string, long, int, real, bool, datetime, dynamic, guid,
timespan, decimal) with Python values: aware UTC datetimes, dict/list for dynamic, str for guid.

Dynamic columns are stored as DuckDB JSON, so ``properties.encryption.keySource``,
``properties['encryption']``, ``tostring(...)``, ``tags.env``, ``isnotempty(tags.env)``,
``mv-expand``, ``split(id, '/')[2]`` work on them. ``ago()`` and ``now()`` read the injected
clock (the sandbox clock), so a test that advances sandbox time sees the same windows Azure shows.

Failures are ``KqlQueryError`` with a ``kind``: ``syntax`` (the query does not parse), ``semantic``
(unknown table or column, type mismatch), ``unsupported`` (valid KQL that duckdb-kql refuses to
translate: it raises rather than answer wrong rows), ``runtime`` (DuckDB failed while executing).
The HTTP layer (emulators/query_endpoints.py) maps each kind to the error the service reports.

What duckdb-kql 1.1.x was checked to do here (tests/emulators/test_resource_graph.py and
test_log_analytics.py exercise the ones the controller uses):
- works: where / project / project-away / project-rename / extend / summarize (count, countif,
  dcount, sum, avg, min, max, percentile, take_any, make_set, make_list, arg_max) by, bin(),
  order/sort, top, take/limit, distinct, count, join kind=leftouter, lookup, union (withsource),
  let, materialize, datatable, getschema, mv-expand, parse ... with, ``in`` / ``!in`` / ``in~`` /
  ``=~`` / ``has`` / ``has_any`` / ``contains`` / ``startswith`` / ``endswith`` / ``matches
  regex``, between, ago(), now(), datetime literals, iff(), case(), coalesce(), strcat(),
  strcat_array(), tolower(), extract(), split(...)[n], parse_json() / todynamic(), todatetime(),
  format_datetime(), bag_pack() / pack(), gettype(), array_length(), isnull(), isempty(),
  isnotempty(), dynamic property access (``a.b.c``, ``a['b']``), render (ignored).
- refused with KqlUnsupportedError (seen): ``evaluate`` plugins (bag_unpack ...), ``mv-apply``,
  ``make-series``, ``top-nested``, ``search``, ``bag_keys()``, ``typeof()``.
- syntax: KQL keywords (``first``, ``last`` ...) cannot be bare column names, as in Kusto.
- note: guid columns are DuckDB UUIDs, so ``=~`` / ``has`` on a guid column is a
  semantic error (compare guids with ``==`` or ``in``, or tostring() them first).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb
import duckdb_kql
from duckdb_kql.types import kusto_type

KUSTO_TO_DUCKDB: dict[str, str] = {
    "string": "VARCHAR",
    "guid": "UUID",
    "long": "BIGINT",
    "int": "INTEGER",
    "real": "DOUBLE",
    "bool": "BOOLEAN",
    "datetime": "TIMESTAMP",
    "dynamic": "JSON",
    "timespan": "INTERVAL",
    "decimal": "DECIMAL(38, 10)",
}

ErrorKind = Literal["syntax", "semantic", "unsupported", "runtime"]


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: str  # Kusto type name


class _NamedTyped(Protocol):
    name: str
    type: str


ColumnSpec = ColumnInfo | tuple[str, str] | _NamedTyped


def _column(spec: ColumnSpec) -> ColumnInfo:
    if isinstance(spec, ColumnInfo):
        return spec
    if isinstance(spec, tuple):
        name, kind = spec
    else:
        name, kind = spec.name, spec.type
    if kind not in KUSTO_TO_DUCKDB:
        raise ValueError(f"column {name!r}: unknown Kusto type {kind!r} (one of {sorted(KUSTO_TO_DUCKDB)})")
    return ColumnInfo(name, kind)


class RowLog:
    """An append-only table kept in memory column by column (a list per column, values shared, no dict
    per row). A ``KqlEngine`` loads into DuckDB only the rows appended since its previous query, so a
    large log (the audit bench's million rows) is read once, not per query. Thread-safe."""

    def __init__(self, columns: Iterable[ColumnSpec]) -> None:
        self.columns = tuple(_column(c) for c in columns)
        self.id = uuid.uuid4().hex
        self._data: dict[str, list[Any]] = {c.name: [] for c in self.columns}
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def append(self, row: Mapping[str, Any]) -> None:
        self.extend((row,))

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for row in rows:
                for name, values in self._data.items():
                    values.append(row.get(name))
                self._count += 1

    def rows(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """Rows [start, stop) as dicts (copies of the row structure; values are the stored objects)."""
        with self._lock:
            end = self._count if stop is None else min(stop, self._count)
            names = list(self._data)
            columns = [self._data[name][start:end] for name in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)] if columns else []

    def ndjson(self, start: int, stop: int) -> str:
        """Rows [start, stop) as the engine's spool (newline-delimited JSON in DuckDB's value forms)."""
        with self._lock:
            columns = [(c.name, _spooler(c.type), self._data[c.name][start:stop]) for c in self.columns]
        lines = [
            json.dumps({name: spool(values[index]) for name, spool, values in columns}, default=str)
            for index in range(stop - start)
        ]
        return "\n".join(lines) + ("\n" if lines else "")


def _spooler(kind: str) -> Callable[[Any], Any]:
    """``_spool_value`` for one column type, with the common values (already in spool form) passed through."""
    passes = {"string": str, "long": int, "int": int, "real": float, "bool": bool}.get(kind)
    if kind == "dynamic":
        return lambda value: value
    if passes is None:
        return lambda value: _spool_value(value, kind)
    return lambda value: value if value is None or type(value) is passes else _spool_value(value, kind)


@dataclass(frozen=True)
class TableSource:
    """One queryable table: its name, typed columns and a callable returning its current rows.

    Rows are mappings from column name to a Python value (see the module docstring); columns a row
    lacks are null, keys the schema does not declare are ignored. A table backed by ``logs`` (RowLogs
    with these columns, e.g. one per workspace a union draws on) is loaded incrementally and filtered
    by time in DuckDB; ``rows`` then reads the logs.
    """

    name: str
    columns: tuple[ColumnInfo, ...]
    rows: Callable[[], Iterable[Mapping[str, Any]]]
    logs: tuple[RowLog, ...] = ()

    @classmethod
    def of(
        cls, name: str, columns: Iterable[ColumnSpec], rows: Callable[[], Iterable[Mapping[str, Any]]]
    ) -> TableSource:
        return cls(name, tuple(_column(c) for c in columns), rows)

    @classmethod
    def of_logs(cls, name: str, logs: Sequence[RowLog]) -> TableSource:
        if not logs or any(log.columns != logs[0].columns for log in logs):
            raise ValueError(f"table {name!r}: one or more row logs with the same columns")

        def rows() -> Iterable[Mapping[str, Any]]:
            for log in logs:
                yield from log.rows()

        return cls(name, logs[0].columns, rows, tuple(logs))

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


# Resource Graph's `resources` table, in the shape the ARM emulator's resources_snapshot() returns.
RESOURCES_TABLE = "resources"
RESOURCES_COLUMNS: tuple[ColumnInfo, ...] = tuple(
    ColumnInfo(name, kind)
    for name, kind in (
        ("id", "string"),
        ("name", "string"),
        ("type", "string"),
        ("tenantId", "string"),
        ("kind", "string"),
        ("location", "string"),
        ("resourceGroup", "string"),
        ("subscriptionId", "string"),
        ("managedBy", "string"),
        ("sku", "dynamic"),
        ("plan", "dynamic"),
        ("properties", "dynamic"),
        ("tags", "dynamic"),
        ("identity", "dynamic"),
        ("zones", "dynamic"),
        ("extendedLocation", "dynamic"),
    )
)


RESOURCE_CONTAINERS_TABLE = "resourcecontainers"


def resources_table(snapshot: Callable[[], Iterable[Mapping[str, Any]]], *, name: str = RESOURCES_TABLE) -> TableSource:
    """Resource Graph's ``resources`` table (or ``resourcecontainers``, same columns) over a provider such
    as the ARM emulator's resources_snapshot / resource_containers_snapshot."""
    return TableSource(name, RESOURCES_COLUMNS, snapshot)


class AuditRows(Protocol):
    """What emulators.audit.AuditSink offers: its workspace's tables as row logs."""

    def log(self, table: str) -> RowLog: ...


AUDIT_TABLES = ("AzureDiagnostics", "AZKVAuditLogs")


def audit_tables(sink: AuditRows, names: Iterable[str] = AUDIT_TABLES) -> list[TableSource]:
    """The Log Analytics tables an AuditSink keeps (AzureDiagnostics, AZKVAuditLogs) as table sources."""
    return [TableSource.of_logs(name, [sink.log(name)]) for name in names]


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[ColumnInfo, ...]
    rows: list[list[Any]]


class KqlQueryError(Exception):
    """The query failed; ``kind`` says why (syntax, semantic, unsupported, runtime)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.line = line
        self.column = column
        self.token = token


RowFilter = Callable[[str, Mapping[str, Any]], bool]
#: The column a time range (a Log Analytics timespan) filters on.
TIME_COLUMN = "TimeGenerated"
_STORE = "store"  # the schema of the stored tables; queries see views named as the tables
_LOAD_BATCH = 50_000  # rows of a log spooled and inserted at a time


class KqlEngine:
    """Runs KQL over table sources on one DuckDB connection.

    Each source is stored once in a table of its own (schema ``store``): a RowLog-backed source gets
    only the rows appended since the previous query, any other source is reloaded when its content
    changed. Each query then sees views named as its sources, over those tables (the union of a
    source's logs), filtered by ``time_range`` in DuckDB. Thread-safe (one query at a time per engine).
    ``close()`` releases the connection and its spool directory.
    """

    def __init__(self, tables: Iterable[TableSource], *, clock: Clock | None = None) -> None:
        self._tables = {t.name.lower(): t for t in tables}
        self._clock = clock
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._stored: dict[str, int | str] = {}  # stored table -> rows loaded (a log) or content digest
        self._views: set[str] = set()  # the sources (lower-case names) a view exists for
        self._view_names: dict[str, str] = {}
        self._spool = Path(tempfile.mkdtemp(prefix="kql-"))

    @property
    def tables(self) -> list[TableSource]:
        return list(self._tables.values())

    def now(self) -> dt.datetime:
        return self._clock.now() if self._clock is not None else dt.datetime.now(dt.UTC)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
                self._stored.clear()
                self._views.clear()
        shutil.rmtree(self._spool, ignore_errors=True)

    def query(
        self,
        text: str,
        *,
        row_filter: RowFilter | None = None,
        tables: Iterable[TableSource] | None = None,
        now: dt.datetime | None = None,
        time_range: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> QueryResult:
        """Run ``text``. ``row_filter(table, row)`` scopes the rows of sources not backed by logs
        (subscriptions); ``time_range`` keeps the rows whose TimeGenerated is in [start, end] (tables
        without that column are whole); ``tables`` replaces the engine's sources for this query; ``now``
        pins ``now()``/``ago()``."""
        if not text or not text.strip():
            raise KqlQueryError("syntax", "the query is empty")
        sources = {t.name.lower(): t for t in tables} if tables is not None else self._tables
        moment = now or self.now()
        with self._lock:
            con = self._prepare(sources, row_filter, time_range)
            try:
                relation = duckdb_kql.kql(con, text, query_now=moment)
                columns = tuple(
                    ColumnInfo(name, kusto_type(kind))
                    for name, kind in zip(relation.columns, relation.types, strict=True)
                )
                raw = relation.fetchall()
            except duckdb_kql.KqlSyntaxError as err:
                span = err.diagnostics[0].span if err.diagnostics else None
                raise KqlQueryError(
                    "syntax",
                    str(err),
                    line=span.line if span else None,
                    column=span.column if span else None,
                    token=_token_at(text, span.line, span.column) if span else None,
                ) from err
            except duckdb_kql.KqlUnsupportedError as err:
                raise KqlQueryError("unsupported", str(err)) from err
            except duckdb_kql.KqlError as err:
                raise KqlQueryError("semantic", str(err)) from err
            except (duckdb.BinderException, duckdb.CatalogException) as err:
                raise KqlQueryError("semantic", _semantic_message(str(err))) from err
            except duckdb.Error as err:
                raise KqlQueryError("runtime", str(err).splitlines()[0]) from err
        return QueryResult(columns, [[_python(v, c.type) for v, c in zip(row, columns, strict=True)] for row in raw])

    # -- loading ---------------------------------------------------------------------------------

    def _prepare(
        self,
        sources: Mapping[str, TableSource],
        row_filter: RowFilter | None,
        time_range: tuple[dt.datetime, dt.datetime] | None,
    ) -> duckdb.DuckDBPyConnection:
        """Bring the stored tables up to date and point one view per source at them."""
        if self._con is None:
            self._con = duckdb_kql.connect()
            self._con.execute(f"CREATE SCHEMA {_STORE}")
        con = self._con
        for view in self._views - set(sources):
            con.execute(f"DROP VIEW IF EXISTS {_quote(self._view_names.pop(view))}")
        self._views &= set(sources)
        for key, source in sources.items():
            column = source.column(TIME_COLUMN)
            timed = time_range is not None and column is not None and column.type == "datetime"
            if source.logs:
                stored = [self._append_log(con, log) for log in source.logs]
            else:
                scoped = _time_filter(row_filter, time_range if timed else None)
                stored = [self._reload(con, key, source, _ndjson(source, scoped))]
                timed = False  # filtered while spooling
            selects = [f"SELECT {_select_list(source)} FROM {table}" for table in stored]  # noqa: S608 - quoted
            where = ""
            if timed and time_range is not None:
                start, end = (_timestamp_literal(moment) for moment in time_range)
                where = f" WHERE {_quote(TIME_COLUMN)} BETWEEN {start} AND {end}"
            body = " UNION ALL ".join(f"({select}{where})" for select in selects)
            con.execute(f"CREATE OR REPLACE VIEW {_quote(source.name)} AS {body}")
            self._views.add(key)
            self._view_names[key] = source.name
        return con

    def _append_log(self, con: duckdb.DuckDBPyConnection, log: RowLog) -> str:
        table = f"{_STORE}.{_quote('log_' + log.id)}"
        loaded = self._stored.get(table)
        if not isinstance(loaded, int):
            con.execute(f"CREATE TABLE {table} ({_schema_sql(log.columns)})")
            loaded = 0
        count = len(log)
        for start in range(loaded, count, _LOAD_BATCH):  # a bounded spool however large the backlog
            stop = min(start + _LOAD_BATCH, count)
            self._insert(con, table, log.columns, log.ndjson(start, stop))
            self._stored[table] = stop
        self._stored[table] = count
        return table

    def _reload(self, con: duckdb.DuckDBPyConnection, key: str, source: TableSource, ndjson: str) -> str:
        table = f"{_STORE}.{_quote('src_' + hashlib.sha256(key.encode()).hexdigest()[:16])}"
        digest = hashlib.sha256((_schema_sql(source.columns) + "\x00" + ndjson).encode()).hexdigest()
        if self._stored.get(table) != digest:
            con.execute(f"CREATE OR REPLACE TABLE {table} ({_schema_sql(source.columns)})")
            self._insert(con, table, source.columns, ndjson)
            self._stored[table] = digest
        return table

    def _insert(self, con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[ColumnInfo], ndjson: str) -> None:
        # read_json over a spool file loads thousands of rows in milliseconds; executemany takes seconds.
        if not ndjson:
            return
        path = self._spool / f"{uuid.uuid4().hex}.json"
        path.write_text(ndjson, encoding="utf-8")
        typed = ", ".join(f"{_literal(c.name)}: {_literal(KUSTO_TO_DUCKDB[c.type])}" for c in columns)
        try:
            con.execute(
                f"INSERT INTO {table} SELECT * FROM read_json(?, format='newline_delimited', "  # noqa: S608 - quoted
                f"columns={{{typed}}}, timestampformat='%Y-%m-%dT%H:%M:%S.%f')",
                [str(path)],
            )
        finally:
            path.unlink()


def _time_filter(row_filter: RowFilter | None, time_range: tuple[dt.datetime, dt.datetime] | None) -> RowFilter | None:
    if time_range is None:
        return row_filter
    start, end = time_range

    def in_range(table: str, row: Mapping[str, Any]) -> bool:
        moment = as_utc(row.get(TIME_COLUMN))
        return moment is not None and start <= moment <= end and (row_filter is None or row_filter(table, row))

    return in_range


def _select_list(source: TableSource) -> str:
    return ", ".join(_quote(c.name) for c in source.columns)


def _timestamp_literal(moment: dt.datetime) -> str:
    utc = as_utc(moment)
    if utc is None:
        raise ValueError(f"not a time: {moment!r}")
    return f"TIMESTAMP '{utc.replace(tzinfo=None).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _schema_sql(columns: Sequence[ColumnInfo]) -> str:
    return ", ".join(f"{_quote(c.name)} {KUSTO_TO_DUCKDB[c.type]}" for c in columns)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ndjson(source: TableSource, row_filter: RowFilter | None) -> str:
    lines = []
    for row in source.rows():
        if row_filter is not None and not row_filter(source.name, row):
            continue
        lines.append(json.dumps({c.name: _spool_value(row.get(c.name), c.type) for c in source.columns}, default=str))
    return "\n".join(lines) + ("\n" if lines else "")


def _spool_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        moment = as_utc(value)
        return moment.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f") if moment is not None else None
    if kind == "dynamic":
        return value
    if kind == "timespan":
        seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
        return f"{seconds} seconds"
    if kind == "guid":
        return str(value)
    if kind == "string":
        # Kusto's tostring: JSON text for bags and arrays, lower-case true/false for booleans.
        if isinstance(value, str):
            return value
        return json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
    if kind == "bool":
        return bool(value)
    if kind in ("long", "int"):
        return int(value)
    if kind == "real":
        number = float(value)
        return None if math.isnan(number) or math.isinf(number) else number
    return value


def as_utc(value: Any) -> dt.datetime | None:
    """A datetime (aware or naive UTC) or ISO 8601 text as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return as_utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _python(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "dynamic":
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return _plain(value)
    if kind == "datetime":
        return as_utc(value)
    if kind == "guid" and isinstance(value, uuid.UUID):
        return str(value)
    if kind == "timespan" and isinstance(value, dt.time):
        return dt.timedelta(
            hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
        )
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return format_datetime(as_utc(value))
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return format_timespan(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict | list) else value
    return value


def format_datetime(value: dt.datetime | None) -> str | None:
    """Kusto's wire form: ISO 8601 UTC with seven fractional digits and a Z."""
    if value is None:
        return None
    utc = value.astimezone(dt.UTC) if value.tzinfo else value
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def format_timespan(value: dt.timedelta) -> str:
    """.NET TimeSpan text, as Kusto writes a timespan: [-][d.]hh:mm:ss[.fffffff]."""
    sign = "-" if value < dt.timedelta(0) else ""
    rest = abs(value)
    hours, seconds = divmod(rest.seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    if rest.days:
        text = f"{rest.days}.{text}"
    if rest.microseconds:
        text = f"{text}.{rest.microseconds:06d}0"
    return sign + text


_MISSING_COLUMN = re.compile(r'Referenced column "?([^"\s]+)"? not found')
_MISSING_TABLE = re.compile(r"Table with name \"?([^\"\s!]+)\"? does not exist")


def _semantic_message(text: str) -> str:
    """DuckDB's binder/catalog wording in Kusto's (SEM0100) terms, where it maps."""
    if match := _MISSING_COLUMN.search(text):
        return f"Failed to resolve scalar expression named '{match[1]}'"
    if match := _MISSING_TABLE.search(text):
        return f"Failed to resolve table or column expression named '{match[1]}'"
    return text.splitlines()[0]


def _token_at(text: str, line: int, column: int) -> str | None:
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    rest = lines[line - 1][column:]
    match = re.match(r"\s*(\S+)", rest)
    return match[1] if match else None
