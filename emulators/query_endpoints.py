"""Resource Graph and Log Analytics query endpoints: real KQL (emulators/kql.py) behind the services' wire shapes.

Resource Graph (mounted on the ARM emulator's aiohttp app, or standalone for tests)::

    # before arm.start(): the ARM app adds its catch-all route at start, and aiohttp matches in order
    graph = mount_resource_graph(arm.app, arm.resources_snapshot,
                                 resource_containers=arm.resource_containers_snapshot, clock=arm.clock)
    ResourceGraphClient(cred, base_url=ARM, connection_verify=CA,
                        credential_scopes=["https://management.azure.com/.default"])

``POST /providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01`` (or 2022-10-01) takes
``{subscriptions, managementGroups?, query, options{resultFormat, $top, $skip, $skipToken}}`` and
answers ``{totalRecords, count, resultTruncated, $skipToken?, data, facets: []}``: at most 1,000 rows
a page; ``$skipToken`` while more rows remain, unless paging is impossible (the query uses
take/limit/sample, or every output column is dynamic), in which case ``resultTruncated`` is "true" and
no token is given. Rows are scoped to the requested subscriptions (case-insensitive); with none (or
only management groups: the sandbox has no management-group hierarchy) every subscription is in
scope. A query that starts with an operator runs against ``resources``, as the service does.
Errors: 400 ``{"error": {"code": "BadRequest", "message": "Please provide below info when asking for
support: timestamp = ..., correlationId = ...", "details": [{"code": "InvalidQuery", ...},
{"code": "ParserFailure", "line", "characterPositionInLine", "token"}]}}`` for a syntax error (the
shape Resource Graph reports); other failures carry a second detail naming the cause (those codes,
DisallowedLogicalTableName, FailedToResolveExpression, SandboxUnsupportedKql, QueryExecutionFailed,
are the sandbox's choice, not verified against the service). Values: datetimes as ISO 8601 UTC text,
dynamic columns as JSON objects; table format types are Resource Graph's (string, integer, number,
boolean, object, datetime).

Log Analytics (standalone HTTPS; the client's endpoint is ``emulator.endpoint + "/v1"``)::

    with LogAnalyticsEmulator(ca, tables=audit_tables(sink), workspace_id=sink.workspace_id,
                              clock=clock) as la:
        LogsQueryClient(cred, endpoint=la.endpoint + "/v1", connection_verify=ca.ca_path)

``POST /v1/workspaces/{workspaceId}/query`` with ``{query, timespan, workspaces?}`` answers
``{"tables": [{"name": "PrimaryResult", "columns": [{"name", "type"}], "rows": [...]}]}``. The
timespan (ISO 8601 duration, start/end, start/duration or duration/end) scopes every table that
has a ``TimeGenerated`` column, relative to the sandbox clock; ``ago()`` reads the same clock.
``workspaces`` adds other workspaces' rows (tables of the same name are unioned). More rows than
``max_rows`` (the service's 500,000) -> HTTP 200 with the rows that fit and an ``error``
``{"code": "PartialError", "details": [{"code": "EngineError", "innererror": {...
E_QUERY_RESULT_SET_TOO_LARGE ...}}]}`` (LogsQueryPartialResult on the client). A query that
fails -> 400 ``{"error": {"code": "BadArgumentError", "message": "The request had some invalid
properties", "innererror": {"code": "SyntaxError" | "SemanticError", ...}}}`` (HttpResponseError on
the client); valid KQL that duckdb-kql cannot translate is reported the same way with the inner
code ``SandboxUnsupportedKql`` rather than answered with wrong rows. A workspace id that is not a
GUID -> 404 ``PathNotFoundError`` (as the service answers); an unknown GUID -> 404
``WorkspaceNotFoundError`` (code unverified). No ``Authorization`` header -> 401
``AuthenticationFailed``. Row values: datetimes as ISO 8601 UTC text, dynamic values as JSON text
(the client hands them over as str), timespans as .NET TimeSpan text; column types are Kusto's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from aiohttp import web

from .background import ServerThread
from .kql import (
    RESOURCE_CONTAINERS_TABLE,
    Clock,
    ColumnInfo,
    KqlEngine,
    KqlQueryError,
    QueryResult,
    TableSource,
    as_utc,
    format_datetime,
    format_timespan,
    resources_table,
)

RESOURCE_GRAPH_PATH = "/providers/Microsoft.ResourceGraph/resources"
LOG_ANALYTICS_QUERY_PATH = "/v1/workspaces/{workspace_id}/query"
LOG_ANALYTICS_BATCH_PATH = "/v1/$batch"
PAGE_LIMIT = 1000
LOG_ANALYTICS_MAX_ROWS = 500_000
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Resource Graph's table format types (ColumnDataType) for each Kusto type.
_GRAPH_TYPES = {
    "string": "string",
    "guid": "string",
    "timespan": "string",
    "int": "integer",
    "long": "integer",
    "real": "number",
    "decimal": "number",
    "bool": "boolean",
    "dynamic": "object",
    "datetime": "datetime",
}
# A Resource Graph query may start with an operator: the service runs it against `resources`.
_LEADING_OPERATOR = re.compile(
    r"^\s*(where|project|project-away|project-keep|project-rename|project-reorder|extend|summarize|order|sort"
    r"|top|take|limit|count|distinct|join|mv-expand|mvexpand|parse|sample|lookup|as)\b",
    re.IGNORECASE,
)
_UNPAGEABLE = re.compile(r"\|\s*(take|limit|sample)\b", re.IGNORECASE)


def _json_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _missing_authorization(request: web.Request) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer ") and header[7:].strip():
        return None
    return _json_response(
        401,
        {
            "error": {
                "code": "AuthenticationFailed",
                "message": "Authentication failed. The 'Authorization' header is missing.",
            }
        },
        {
            "WWW-Authenticate": (
                'Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token"'
            )
        },
    )


def wire_value(value: Any, kind: str, *, dynamic_as_text: bool) -> Any:
    """A Python value (as KqlEngine returns it) in the services' JSON form."""
    if value is None:
        return None
    if kind == "datetime" and isinstance(value, dt.datetime):
        return format_datetime(value)
    if kind == "timespan" and isinstance(value, dt.timedelta):
        return format_timespan(value)
    if kind == "dynamic":
        plain = _jsonable(value)
        return json.dumps(plain, separators=(",", ":")) if dynamic_as_text else plain
    if kind == "real" and isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return str(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, dt.timedelta):
        return format_timespan(value)
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# Resource Graph
# --------------------------------------------------------------------------------------------------


class ResourceGraphService:
    """Resource Graph's ``resources`` query over a snapshot provider (the ARM emulator's resources_snapshot)."""

    def __init__(
        self,
        resources: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        resource_containers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        clock: Clock | None = None,
        require_authorization: bool = False,
    ) -> None:
        tables = [resources_table(resources)]
        if resource_containers is not None:
            tables.append(resources_table(resource_containers, name=RESOURCE_CONTAINERS_TABLE))
        self.engine = KqlEngine(tables, clock=clock)
        self.require_authorization = require_authorization

    def close(self) -> None:
        self.engine.close()

    async def handle(self, request: web.Request) -> web.Response:
        if self.require_authorization and (denied := _missing_authorization(request)) is not None:
            return denied
        api_version = request.query.get("api-version", "")
        if not api_version:
            return _arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _graph_error(
                [{"code": "InvalidRequestContent", "message": "The request content was invalid: 'query' is required."}]
            )
        options = body.get("options") or {}
        if not isinstance(options, dict):
            return _graph_error([{"code": "InvalidRequestContent", "message": "'options' must be an object."}])
        default_format = "objectArray" if api_version >= "2021-03-01" else "table"
        result_format = options.get("resultFormat") or default_format
        if result_format not in ("objectArray", "table"):
            return _graph_error(
                [{"code": "InvalidRequestContent", "message": f"resultFormat {result_format!r}: objectArray or table."}]
            )
        try:
            top = _optional_int(options.get("$top"), "$top", 1, PAGE_LIMIT)
            skip = _optional_int(options.get("$skip"), "$skip", 0, None) or 0
        except (TypeError, ValueError) as err:
            return _graph_error([{"code": "InvalidRequestContent", "message": str(err)}])
        subscriptions = [str(s).lower() for s in body.get("subscriptions") or []]
        query = body["query"]
        scope = _fingerprint(query, subscriptions)
        token = options.get("$skipToken")
        if token:
            try:
                skip = _read_skip_token(str(token), scope)
            except ValueError:
                return _graph_error(
                    [
                        {
                            "code": "InvalidSkipToken",
                            "message": "The $skipToken is invalid or does not belong to this query.",
                        }
                    ]
                )
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, functools.partial(self._run, query, subscriptions))
        except KqlQueryError as err:
            return _graph_error(_graph_error_details(err))
        return _json_response(
            200, self._page(result, query=query, scope=scope, result_format=result_format, top=top, skip=skip)
        )

    def query(self, query: str, subscriptions: Sequence[str] = ()) -> QueryResult:
        """The whole result of a Resource Graph query (no paging), for tests and the sandbox CLI."""
        return self._run(query, [s.lower() for s in subscriptions])

    def _run(self, query: str, subscriptions: Sequence[str]) -> QueryResult:
        text = f"resources | {query}" if _LEADING_OPERATOR.match(query) else query
        scoped = set(subscriptions)

        def in_scope(table: str, row: Mapping[str, Any]) -> bool:
            return not scoped or str(row.get("subscriptionId") or "").lower() in scoped

        return self.engine.query(text, row_filter=in_scope if scoped else None)

    @staticmethod
    def _page(
        result: QueryResult, *, query: str, scope: str, result_format: str, top: int | None, skip: int
    ) -> dict[str, Any]:
        total = len(result.rows)
        pageable = not _UNPAGEABLE.search(query) and any(c.type != "dynamic" for c in result.columns)
        if not pageable:
            skip = 0  # the service ignores $skip when the query takes/limits
        size = min(top or PAGE_LIMIT, PAGE_LIMIT)
        page = result.rows[skip : skip + size]
        more = skip + len(page) < total
        body: dict[str, Any] = {
            "totalRecords": total,
            "count": len(page),
            "resultTruncated": "true" if more and not pageable else "false",
        }
        if more and pageable:
            body["$skipToken"] = _skip_token(skip + len(page), scope)
        rows = [
            [wire_value(v, c.type, dynamic_as_text=False) for v, c in zip(row, result.columns, strict=True)]
            for row in page
        ]
        if result_format == "table":
            body["data"] = {
                "columns": [{"name": c.name, "type": _GRAPH_TYPES.get(c.type, "string")} for c in result.columns],
                "rows": rows,
            }
        else:
            body["data"] = [{c.name: v for c, v in zip(result.columns, row, strict=True)} for row in rows]
        body["facets"] = []
        return body


def _optional_int(value: Any, name: str, low: int, high: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError as err:
        raise ValueError(f"{name} must be an integer") from err
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be between {low} and {high}" if high is not None else f"{name} must be >= {low}")
    return number


def _fingerprint(query: str, subscriptions: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([query, sorted(subscriptions)]).encode()).hexdigest()[:16]


def _skip_token(offset: int, scope: str) -> str:
    raw = json.dumps({"o": offset, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_skip_token(token: str, scope: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise ValueError("malformed skip token") from err
    if not isinstance(decoded, dict) or decoded.get("s") != scope or not isinstance(decoded.get("o"), int):
        raise ValueError("skip token of another query")
    return int(decoded["o"])


def _arm_error(status: int, code: str, message: str) -> web.Response:
    return _json_response(status, {"error": {"code": code, "message": message}})


def _graph_error(details: list[dict[str, Any]]) -> web.Response:
    moment = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    return _json_response(
        400,
        {
            "error": {
                "code": "BadRequest",
                "message": (
                    f"Please provide below info when asking for support: timestamp = {moment}, "
                    f"correlationId = {uuid.uuid4()}."
                ),
                "details": details,
            }
        },
    )


_INVALID_QUERY = {
    "code": "InvalidQuery",
    "message": (
        "Query is invalid. Please refer to the documentation for the Azure Resource Graph service "
        "and fix the error before retrying."
    ),
}


def _graph_error_details(err: KqlQueryError) -> list[dict[str, Any]]:
    if err.kind == "syntax":
        detail: dict[str, Any] = {"code": "ParserFailure", "message": "ParserFailure"}
        if err.line is not None:
            detail["line"] = err.line
            detail["characterPositionInLine"] = err.column
        if err.token is not None:
            detail["token"] = err.token
        return [dict(_INVALID_QUERY), detail]
    if err.kind == "unsupported":
        cause = {
            "code": "SandboxUnsupportedKql",
            "message": f"The sandbox's KQL engine (duckdb-kql) does not translate this query: {err.message}",
        }
    elif err.kind == "semantic" and "table or column expression" in err.message:
        cause = {"code": "DisallowedLogicalTableName", "message": err.message}
    elif err.kind == "semantic":
        cause = {"code": "FailedToResolveExpression", "message": err.message}
    else:
        cause = {"code": "QueryExecutionFailed", "message": err.message}
    return [dict(_INVALID_QUERY), cause]


def mount_resource_graph(
    app: web.Application,
    resources: Callable[[], Iterable[Mapping[str, Any]]],
    *,
    resource_containers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
    clock: Clock | None = None,
    require_authorization: bool = False,
) -> ResourceGraphService:
    """Add ``POST /providers/Microsoft.ResourceGraph/resources`` to an aiohttp app (the ARM emulator's).

    Mount it before any catch-all route: aiohttp matches routes in the order they were added.
    The service's engine is closed when the app cleans up.
    """
    service = ResourceGraphService(
        resources, resource_containers=resource_containers, clock=clock, require_authorization=require_authorization
    )
    app.router.add_post(RESOURCE_GRAPH_PATH, service.handle)

    async def close(_app: web.Application) -> None:
        service.close()

    app.on_cleanup.append(close)
    return service


# --------------------------------------------------------------------------------------------------
# Log Analytics
# --------------------------------------------------------------------------------------------------

_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


def parse_duration(text: str) -> dt.timedelta:
    """ISO 8601 duration (PnW, PnDTnHnMn.nS; no years or months) as a timedelta."""
    match = _DURATION.match(text.strip())
    if match is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return dt.timedelta(**parts)


def parse_timespan(text: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Log Analytics' timespan (duration, start/end, start/duration, duration/end) as a [start, end] window."""
    if "/" not in text:
        return now - parse_duration(text), now
    first, second = (part.strip() for part in text.split("/", 1))
    start = as_utc(first) if not first.upper().startswith("P") else None
    end = as_utc(second) if not second.upper().startswith("P") else None
    if start is not None and end is not None:
        return start, end
    if start is not None:
        return start, start + parse_duration(second)
    if end is not None:
        return end - parse_duration(first), end
    raise ValueError(f"not an ISO 8601 interval: {text!r}")


_BAD_ARGUMENT = "The request had some invalid properties"


class WorkspaceNotFound(LookupError):
    """No workspace has this id (the first unknown one is the argument)."""


class LogAnalyticsService:
    """Log Analytics' query API over workspaces of table sources (e.g. kql.audit_tables(sink))."""

    def __init__(
        self,
        workspaces: Mapping[str, Iterable[TableSource]] | None = None,
        *,
        clock: Clock | None = None,
        max_rows: int = LOG_ANALYTICS_MAX_ROWS,
        require_authorization: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._workspaces: dict[str, list[TableSource]] = {}
        for workspace_id, tables in (workspaces or {}).items():
            self.add_workspace(workspace_id, tables)
        self.engine = KqlEngine([], clock=clock)
        self.max_rows = max_rows
        self.require_authorization = require_authorization

    def add_workspace(self, workspace_id: str, tables: Iterable[TableSource]) -> None:
        if not _GUID.match(workspace_id):
            raise ValueError(f"a workspace id is a GUID, not {workspace_id!r}")
        with self._lock:
            self._workspaces[workspace_id.lower()] = list(tables)

    def close(self) -> None:
        self.engine.close()

    def query(
        self,
        workspace_id: str,
        query: str,
        *,
        timespan: str | None = None,
        additional_workspaces: Sequence[str] = (),
    ) -> QueryResult:
        """Run a query as the endpoint does, without the row limit.

        Raises WorkspaceNotFound, KqlQueryError, or ValueError (a malformed timespan).
        """
        tables = self._tables([workspace_id, *additional_workspaces])
        time_range = parse_timespan(timespan, self.engine.now()) if timespan else None
        return self.engine.query(query, tables=tables, time_range=time_range)

    def _tables(self, workspace_ids: Sequence[str]) -> list[TableSource]:
        with self._lock:
            missing = [w for w in workspace_ids if w.lower() not in self._workspaces]
            if missing:
                raise WorkspaceNotFound(missing[0])
            chosen = [self._workspaces[w.lower()] for w in dict.fromkeys(w.lower() for w in workspace_ids)]
        merged: dict[str, list[TableSource]] = {}
        for tables in chosen:
            for table in tables:
                merged.setdefault(table.name.lower(), []).append(table)
        return [_union(group) for group in merged.values()]

    async def handle(self, request: web.Request) -> web.Response:
        if self.require_authorization and (denied := _missing_authorization(request)) is not None:
            return denied
        if request.method == "GET":
            body: Any = {"query": request.query.get("query"), "timespan": request.query.get("timespan")}
        else:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
        status, answer = await self.answer(request.match_info["workspace_id"], body, request.headers.get("Prefer", ""))
        return _json_response(status, answer)

    async def handle_batch(self, request: web.Request) -> web.Response:
        """POST /v1/$batch: each request answered as its own query would be, in one response."""
        if self.require_authorization and (denied := _missing_authorization(request)) is not None:
            return denied
        try:
            batch = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            batch = None
        requests = batch.get("requests") if isinstance(batch, dict) else None
        if not isinstance(requests, list) or not requests or not all(isinstance(r, dict) for r in requests):
            return _la_error(400, "InvalidBatch", "requests must be a non-empty list of request objects.")
        responses = []
        for item in requests:
            if item.get("path") != "/query" or str(item.get("method", "POST")).upper() != "POST":
                status, answer = 400, _la_error_body("InvalidBatchRequest", "only POST /query requests are batched")
            else:
                headers = item.get("headers") if isinstance(item.get("headers"), dict) else {}
                status, answer = await self.answer(str(item.get("workspace", "")), item.get("body"),
                                                   str(headers.get("Prefer", "")))
            responses.append({"id": item.get("id"), "status": status, "body": answer})
        return _json_response(200, {"responses": responses})

    async def answer(self, workspace_id: str, body: Any, prefer: str) -> tuple[int, dict[str, Any]]:
        """One query's status and JSON answer, as the service gives it alone or within a batch."""
        if not _GUID.match(workspace_id):
            return 404, {"error": {"message": "The requested path does not exist", "code": "PathNotFoundError"}}
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            return 400, _la_error_body("InvalidQuery",
                                       "The query parameter is required and must be a non-empty string.")
        additional = body.get("workspaces") or []
        if not isinstance(additional, list) or not all(isinstance(w, str) for w in additional):
            return 400, _la_error_body("InvalidWorkspaces", "workspaces must be a list of workspace ids.")
        timespan = body.get("timespan")
        if timespan is not None and not isinstance(timespan, str):
            return 400, _la_error_body("InvalidTimespan", f"timespan {timespan!r}: an ISO 8601 duration or interval")
        if timespan:
            try:
                parse_timespan(timespan, self.engine.now())
            except ValueError as err:
                return 400, _la_error_body("InvalidTimespan", str(err))
        started = asyncio.get_running_loop().time()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    self.query, workspace_id, body["query"], timespan=timespan, additional_workspaces=additional
                ),
            )
        except WorkspaceNotFound as err:
            return 404, {"error": {"message": f"The workspace {err.args[0]} could not be found",
                                   "code": "WorkspaceNotFoundError"}}
        except KqlQueryError as err:
            return 400, _la_query_error(err)
        rows = result.rows
        response: dict[str, Any] = {}
        if len(rows) > self.max_rows:
            rows = rows[: self.max_rows]
            response["error"] = _partial_error(self.max_rows)
        response["tables"] = [
            {
                "name": "PrimaryResult",
                "columns": [{"name": c.name, "type": c.type} for c in result.columns],
                "rows": [
                    [wire_value(v, c.type, dynamic_as_text=True) for v, c in zip(row, result.columns, strict=True)]
                    for row in rows
                ],
            }
        ]
        if "include-statistics=true" in prefer:
            elapsed = asyncio.get_running_loop().time() - started
            response["statistics"] = {
                "query": {"executionTime": elapsed, "datasetStatistics": [{"tableRowCount": len(rows)}]}
            }
        if "include-render=true" in prefer:
            response["render"] = {}
        return 200, {"tables": response.pop("tables"), **response}


def _union(group: list[TableSource]) -> TableSource:
    if len(group) == 1:
        return group[0]
    if all(table.logs and table.columns == group[0].columns for table in group):
        return TableSource.of_logs(group[0].name, [log for table in group for log in table.logs])
    columns: dict[str, ColumnInfo] = {}
    for table in group:
        for column in table.columns:
            columns.setdefault(column.name, column)

    def rows() -> Iterable[Mapping[str, Any]]:
        for table in group:
            yield from table.rows()

    return TableSource(group[0].name, tuple(columns.values()), rows)


def _la_error(status: int, inner_code: str, message: str) -> web.Response:
    return _json_response(status, _la_error_body(inner_code, message))


def _la_error_body(inner_code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": _BAD_ARGUMENT, "code": "BadArgumentError",
                      "innererror": {"code": inner_code, "message": message}}}


def _la_query_error(err: KqlQueryError) -> dict[str, Any]:
    if err.kind == "syntax":
        detail: dict[str, Any] = {"code": "SYN0002", "message": err.message}
        if err.line is not None:
            detail.update(line=err.line, pos=err.column)
        if err.token is not None:
            detail["token"] = err.token
        inner = {"code": "SyntaxError", "message": "A recognition error occurred in the query.", "innererror": detail}
    elif err.kind == "unsupported":
        inner = {
            "code": "SemanticError",
            "message": "A semantic error occurred.",
            "innererror": {
                "code": "SandboxUnsupportedKql",
                "message": f"The sandbox's KQL engine (duckdb-kql) does not translate this query: {err.message}",
            },
        }
    elif err.kind == "semantic":
        inner = {
            "code": "SemanticError",
            "message": "A semantic error occurred.",
            "innererror": {"code": "SEM0100", "message": err.message},
        }
    else:
        inner = {"code": "QueryExecutionError", "message": err.message}
    return {"error": {"message": _BAD_ARGUMENT, "code": "BadArgumentError", "innererror": inner}}


def _partial_error(limit: int) -> dict[str, Any]:
    return {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {
                    "code": "-2133196797",
                    "message": (
                        f"Query result set has exceeded the internal record count limit {limit} "
                        "(E_QUERY_RESULT_SET_TOO_LARGE; see https://aka.ms/kustoquerylimits)"
                    ),
                    "severity": 2,
                    "severityName": "Error",
                },
            }
        ],
    }


def mount_log_analytics(app: web.Application, service: LogAnalyticsService) -> LogAnalyticsService:
    """Add the Log Analytics query routes (POST and GET) to an aiohttp app."""
    app.router.add_route("POST", LOG_ANALYTICS_QUERY_PATH, service.handle)
    app.router.add_route("GET", LOG_ANALYTICS_QUERY_PATH, service.handle)
    app.router.add_route("POST", LOG_ANALYTICS_BATCH_PATH, service.handle_batch)

    async def close(_app: web.Application) -> None:
        service.close()

    app.on_cleanup.append(close)
    return service


# --------------------------------------------------------------------------------------------------
# Standalone HTTPS servers
# --------------------------------------------------------------------------------------------------


class _ServerCA(Protocol):
    def server_ssl_context(self, *hosts: str) -> Any: ...


class _HttpsServer:
    """An aiohttp app served over HTTPS (the sandbox CA) on its own event loop in a background thread."""

    def __init__(
        self, app: web.Application, ca: _ServerCA, *, host: str, port: int, name: str, public_host: str | None = None
    ) -> None:
        self._app = app
        self._ca = ca
        self.host = host
        self.port = port
        self._name = name
        self.public_host = public_host
        self._server = ServerThread(name)

    @property
    def endpoint(self) -> str:
        if not self._server.running:
            raise RuntimeError(f"{self._name} is not running")
        return f"https://{self.host}:{self.port}"

    def start(self) -> Any:
        if self._server.running:
            return self
        self.port = self._server.listen(
            self._app,
            self.host,
            self.port,
            ssl_context=self._ca.server_ssl_context(self.host, *([self.public_host] if self.public_host else [])),
            handle_signals=False,
            shutdown_timeout=0.5,
        )
        return self

    def stop(self) -> None:
        self._server.stop()

    def listener_for(self, host: str, port: int) -> tuple[str, int] | None:
        """The sandbox proxy's route (emulators/egress_proxy.py): this server, for its Azure host name on 443."""
        if self.public_host is None or host != self.public_host or port != 443 or not self._server.running:
            return None
        return self.host, self.port

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


class LogAnalyticsEmulator(_HttpsServer):
    """The Log Analytics query API over HTTPS.

    ``LogsQueryClient(cred, endpoint=la.endpoint + "/v1", connection_verify=CA)``.

    ``tables`` form the workspace ``workspace_id`` (a new GUID when omitted); ``workspaces`` adds more. With
    ``public_host`` (the sandbox: ``api.loganalytics.io``) its certificate names that host too and
    ``listener_for`` routes it, so ``LogsQueryClient(cred)`` with its default endpoint reaches it through the
    sandbox's proxy.
    """

    def __init__(
        self,
        ca: _ServerCA,
        *,
        tables: Iterable[TableSource] = (),
        workspace_id: str | None = None,
        workspaces: Mapping[str, Iterable[TableSource]] | None = None,
        clock: Clock | None = None,
        max_rows: int = LOG_ANALYTICS_MAX_ROWS,
        host: str = "127.0.0.1",
        port: int = 0,
        public_host: str | None = None,
    ) -> None:
        self.workspace_id = (workspace_id or str(uuid.uuid4())).lower()
        self.service = LogAnalyticsService(workspaces, clock=clock, max_rows=max_rows)
        self.service.add_workspace(self.workspace_id, tables)
        app = web.Application(client_max_size=4 * 1024 * 1024)
        mount_log_analytics(app, self.service)
        super().__init__(app, ca, host=host, port=port, name="log-analytics-emulator", public_host=public_host)

    def start(self) -> LogAnalyticsEmulator:
        return super().start()  # type: ignore[no-any-return]

    def __enter__(self) -> LogAnalyticsEmulator:
        return self.start()

    def add_workspace(self, workspace_id: str, tables: Iterable[TableSource]) -> None:
        self.service.add_workspace(workspace_id, tables)


class ResourceGraphEmulator(_HttpsServer):
    """Resource Graph alone over HTTPS (the ARM emulator mounts the same routes with mount_resource_graph).

    ``ResourceGraphClient(cred, base_url=graph.endpoint, connection_verify=CA, credential_scopes=[...])``.
    """

    def __init__(
        self,
        ca: _ServerCA,
        resources: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        resource_containers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        self.service = mount_resource_graph(
            app, resources, resource_containers=resource_containers, clock=clock, require_authorization=True
        )
        super().__init__(app, ca, host=host, port=port, name="resource-graph-emulator")

    def start(self) -> ResourceGraphEmulator:
        return super().start()  # type: ignore[no-any-return]

    def __enter__(self) -> ResourceGraphEmulator:
        return self.start()
