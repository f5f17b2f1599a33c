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


@dataclass(frozen=True)
class TableSource:
    """One queryable table: its name, typed columns and a callable returning its current rows.

    Rows are mappings from column name to a Python value (see the module docstring); columns a row
    lacks are null, keys the schema does not declare are ignored.
    """

    name: str
    columns: tuple[ColumnInfo, ...]
    rows: Callable[[], Iterable[Mapping[str, Any]]]

    @classmethod
    def of(
        cls, name: str, columns: Iterable[ColumnSpec], rows: Callable[[], Iterable[Mapping[str, Any]]]
    ) -> TableSource:
        return cls(name, tuple(_column(c) for c in columns), rows)

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
    """What emulators.audit.AuditSink offers: typed columns and current rows per table."""

    def rows(self, table: str) -> list[dict[str, Any]]: ...

    def columns(self, table: str) -> Sequence[_NamedTyped]: ...


AUDIT_TABLES = ("AzureDiagnostics", "AZKVAuditLogs")


def audit_tables(sink: AuditRows, names: Iterable[str] = AUDIT_TABLES) -> list[TableSource]:
    """The Log Analytics tables an AuditSink keeps (AzureDiagnostics, AZKVAuditLogs) as table sources."""
    return [
        TableSource.of(name, sink.columns(name), lambda name=name: sink.rows(name))  # type: ignore[misc]
        for name in names
    ]


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


class KqlEngine:
    """Runs KQL over table sources; one DuckDB connection, reloaded when the sources' content changes.

    Thread-safe (one query at a time per engine). ``close()`` releases the connection and its spool
    directory.
    """

    def __init__(self, tables: Iterable[TableSource], *, clock: Clock | None = None) -> None:
        self._tables = {t.name.lower(): t for t in tables}
        self._clock = clock
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._loaded: str | None = None  # fingerprint of what the connection holds
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
                self._loaded = None
        shutil.rmtree(self._spool, ignore_errors=True)

    def query(
        self,
        text: str,
        *,
        row_filter: RowFilter | None = None,
        tables: Iterable[TableSource] | None = None,
        now: dt.datetime | None = None,
    ) -> QueryResult:
        """Run ``text``. ``row_filter(table, row)`` scopes the source rows (subscriptions, a timespan);
        ``tables`` replaces the engine's sources for this query; ``now`` pins ``now()``/``ago()``."""
        if not text or not text.strip():
            raise KqlQueryError("syntax", "the query is empty")
        sources = {t.name.lower(): t for t in tables} if tables is not None else self._tables
        moment = now or self.now()
        spooled = {name: _ndjson(source, row_filter) for name, source in sources.items()}
        fingerprint = hashlib.sha256(
            json.dumps({name: [_schema_sql(sources[name]), body] for name, body in sorted(spooled.items())}).encode()
        ).hexdigest()
        with self._lock:
            con = self._load(sources, spooled, fingerprint)
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

    def _load(
        self, sources: Mapping[str, TableSource], spooled: Mapping[str, str], fingerprint: str
    ) -> duckdb.DuckDBPyConnection:
        if self._con is not None and self._loaded == fingerprint:
            return self._con
        if self._con is not None:
            self._con.close()
        self._con, self._loaded = None, None
        con = duckdb_kql.connect()
        try:
            for key, source in sources.items():
                self._load_table(con, source, spooled[key], self._spool / f"{key}.json")
        except BaseException:
            con.close()
            raise
        self._con, self._loaded = con, fingerprint
        return con

    @staticmethod
    def _load_table(con: duckdb.DuckDBPyConnection, source: TableSource, ndjson: str, path: Path) -> None:
        # read_json over a spool file loads thousands of rows in milliseconds; executemany takes seconds.
        table = _quote(source.name)
        con.execute(f"CREATE TABLE {table} ({_schema_sql(source)})")
        if not ndjson:
            return
        path.write_text(ndjson, encoding="utf-8")
        columns = ", ".join(f"{_literal(c.name)}: {_literal(KUSTO_TO_DUCKDB[c.type])}" for c in source.columns)
        try:
            con.execute(
                f"INSERT INTO {table} SELECT * FROM read_json(?, format='newline_delimited', "  # noqa: S608 - quoted
                f"columns={{{columns}}}, timestampformat='%Y-%m-%dT%H:%M:%S.%f')",
                [str(path)],
            )
        finally:
            path.unlink()


def _schema_sql(source: TableSource) -> str:
    return ", ".join(f"{_quote(c.name)} {KUSTO_TO_DUCKDB[c.type]}" for c in source.columns)


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
