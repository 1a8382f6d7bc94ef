"""The Hrana test server (tests/hrana_server.py) against the real `libsql` SDK, plus raw HTTP for
what the SDK never sends (batch conditions, sequence, stored SQL, bad batons, error shapes).

The SDK holds the GIL while it waits on the network, so SDK tests talk to the server in a
subprocess (an in-process server thread would never get to answer). Raw-HTTP tests use urllib,
which releases the GIL, against an in-process server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libsql
import pytest

from tests.conftest import free_port, wait_for
from tests.hrana_server import HranaProcess, HranaServer, split_sql

TOKEN = "s3cret-token"


# ---- a server subprocess, as a deployment would run it ---------------------------------------


def start_hrana(directory: Path, token: str | None = TOKEN, **options: Any) -> HranaProcess:
    """A fresh server subprocess on `directory/hrana.db`, logging events next to it."""
    count = len(list(directory.glob("hrana-events-*.jsonl")))
    event_log = directory / f"hrana-events-{count}.jsonl"
    return HranaProcess(directory / "hrana.db", token, event_log=event_log, **options).start()


@pytest.fixture
def hrana(tmp_path: Path) -> Iterator[HranaProcess]:
    started = start_hrana(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def sdk(url: str, token: str = TOKEN) -> Any:
    return libsql.connect(url, auth_token=token, isolation_level=None)


# ---- the libsql SDK against the server ------------------------------------------------------


def test_sdk_round_trips_every_value_type(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, i INTEGER, f REAL, t TEXT, b BLOB, n)")
    row = (-(2**31), 2.5, "héllo, wörld ✓", b"\x00\x01\xfe\xff", None)
    conn.execute("INSERT INTO v (i, f, t, b, n) VALUES (?, ?, ?, ?, ?)", row)
    conn.execute("INSERT INTO v (i, f, t, b, n) VALUES (?, ?, ?, ?, ?)", (7, -0.125, "", b"", 1))

    cursor = conn.execute("SELECT i, f, t, b, n FROM v ORDER BY id")
    assert [d[0] for d in cursor.description] == ["i", "f", "t", "b", "n"]
    assert cursor.fetchall() == [row, (7, -0.125, "", b"", 1)]
    # Values computed by SQLite travel back exactly, 64-bit integers included.
    assert conn.execute("SELECT 9223372036854775807, -9223372036854775808, 1e300").fetchall() == [
        (2**63 - 1, -(2**63), 1e300)
    ]


def test_sdk_quirk_binds_ints_beyond_32_bits_as_floats(hrana: HranaProcess) -> None:
    """libsql 0.1.11 sends Python ints outside the i32 range as Hrana floats, so they lose
    precision past 2**53 and land as REAL; binding them as text with CAST keeps them exact."""
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE n (v)")
    conn.execute("INSERT INTO n VALUES (?)", (2**53 + 1,))
    assert conn.execute("SELECT v, typeof(v) FROM n").fetchall() == [(float(2**53), "real")]

    exact = conn.execute("SELECT CAST(? AS INTEGER)", (str(2**63 - 1),)).fetchall()
    assert exact == [(2**63 - 1,)]


def test_sdk_update_returning_gives_the_changed_rows(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
    conn.executemany("INSERT INTO jobs (state) VALUES (?)", [("queued",), ("queued",), ("done",)])

    rows = conn.execute(
        "UPDATE jobs SET state = ? WHERE state = ? RETURNING *", ("running", "queued")
    ).fetchall()

    assert sorted(rows) == [(1, "running"), (2, "running")]
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchall() == [(2,)]


def test_sdk_json_each_reads_a_bound_json_array(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    rows = conn.execute("SELECT key, value FROM json_each(?)", ('["a", 2, null]',)).fetchall()
    assert rows == [(0, "a"), (1, 2), (2, None)]


def test_sdk_binds_named_parameters_positionally_from_a_tuple(hrana: HranaProcess) -> None:
    """SQLite numbers `:name` parameters by first appearance, so a tuple in that order binds."""
    conn = sdk(hrana.url)
    rows = conn.execute("SELECT :a, :b, :a || :b", (1, "x")).fetchall()
    assert rows == [(1, "x", "1x")]


def test_sdk_interactive_transaction_commits_across_requests(hrana: HranaProcess) -> None:
    writer, reader = sdk(hrana.url), sdk(hrana.url)
    writer.execute("CREATE TABLE t (x INTEGER)")

    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.execute("INSERT INTO t VALUES (2)")
    assert writer.in_transaction
    assert writer.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    writer.execute("COMMIT")

    assert not writer.in_transaction
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_sdk_rollback_discards_the_transaction(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    # Connection.rollback() sends ROLLBACK too when a transaction is open.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.rollback()
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]


def test_sdk_syntax_error_raises_valueerror_with_the_sqlite_message(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    with pytest.raises(ValueError, match=r'near \\"SELEC\\": syntax error') as raised:
        conn.execute("SELEC 1")
    assert "SQLITE_ERROR" in str(raised.value)


def test_sdk_constraint_violation_raises_with_the_sqlite_message(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE u (k TEXT PRIMARY KEY, v NOT NULL)")
    conn.execute("INSERT INTO u VALUES ('a', 1)")
    with pytest.raises(ValueError, match=r"UNIQUE constraint failed: u\.k") as raised:
        conn.execute("INSERT INTO u VALUES ('a', 2)")
    assert "SQLITE_CONSTRAINT" in str(raised.value)
    # Statements that return rows go through /v3/cursor: the message reads differently.
    with pytest.raises(ValueError, match=r"cursor error.*SQLITE_CONSTRAINT.*NOT NULL constraint"):
        conn.execute("INSERT INTO u VALUES ('b', NULL) RETURNING k")


def test_sdk_second_writer_gets_database_is_locked(tmp_path: Path) -> None:
    server = start_hrana(tmp_path, busy_timeout=0.2)
    try:
        first, second = sdk(server.url), sdk(server.url)
        first.execute("CREATE TABLE t (x INTEGER)")
        first.execute("BEGIN IMMEDIATE")
        with pytest.raises(ValueError, match="database is locked") as raised:
            second.execute("BEGIN IMMEDIATE")
        assert "SQLITE_BUSY" in str(raised.value)
        with pytest.raises(ValueError, match="database is locked"):
            second.execute("INSERT INTO t VALUES (1)")
        assert second.execute("SELECT count(*) FROM t").fetchall() == [(0,)]  # WAL: reads go on

        first.execute("COMMIT")
        second.execute("BEGIN IMMEDIATE")
        second.execute("INSERT INTO t VALUES (1)")
        second.execute("COMMIT")
        assert first.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    finally:
        server.stop()


_COUNTER_WORKER = r"""
import sys
import libsql

url, token, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = libsql.connect(url, auth_token=token, isolation_level=None)
locked = 0
for _ in range(times):
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except ValueError as error:
            if "database is locked" not in str(error):
                raise
            locked += 1
    # Read, then write what was read plus one: only serialized transactions lose nothing.
    (value,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
    conn.execute("UPDATE counter SET n = ? WHERE id = 1", (value + 1,))
    conn.execute("COMMIT")
print("locked", locked, flush=True)
"""


@pytest.mark.slow
def test_four_processes_incrementing_a_counter_lose_no_updates(
    hrana: HranaProcess, tmp_path: Path
) -> None:
    workers, times = 4, 200
    setup = sdk(hrana.url)
    setup.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    setup.execute("INSERT INTO counter VALUES (1, 0)")

    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(workers):
            with (tmp_path / f"worker-{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _COUNTER_WORKER, hrana.url, TOKEN, str(times)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        codes = [process.wait(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(workers)]
    assert codes == [0] * workers, logs
    assert setup.execute("SELECT n FROM counter").fetchall() == [(workers * times,)]


def test_sdk_without_the_right_token_gets_http_401(hrana: HranaProcess) -> None:
    for token in ("", "wrong-token"):
        conn = sdk(hrana.url, token=token)  # connecting is lazy: nothing is sent yet
        with pytest.raises(ValueError, match=r"api error: `status=401 Unauthorized") as raised:
            conn.execute("SELECT 1")
        assert '"code":"UNAUTHORIZED"' in str(raised.value)


def test_sdk_executemany_inserts_every_row(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE t (k TEXT, v INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3)])
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("d", 4), ("e", 5)])
    conn.execute("COMMIT")
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
    ]


def test_sdk_quirk_executescript_ignores_a_failing_statement(hrana: HranaProcess) -> None:
    """executescript sends one batch chained with `ok` conditions and never checks the step
    errors: statements before the failure stay committed, later ones are skipped, no error."""
    conn = sdk(hrana.url)
    conn.executescript("CREATE TABLE a (x); INSERT INTO a VALUES (1);")
    conn.executescript(
        "INSERT INTO a VALUES (2); INSERT INTO nowhere VALUES (0); INSERT INTO a VALUES (3);"
    )
    assert conn.execute("SELECT x FROM a ORDER BY x").fetchall() == [(1,), (2,)]
    assert ("/v3/pipeline", ("batch", "get_autocommit", "close")) in hrana.requests()


def test_sdk_connection_refused_raises_http_error() -> None:
    conn = sdk(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match=r"http error: `error trying to connect: .*refused"):
        conn.execute("SELECT 1")


def test_sdk_sends_describe_then_pipeline_batches_or_cursor(hrana: HranaProcess) -> None:
    conn = sdk(hrana.url)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (?)", (1,))
    conn.execute("COMMIT")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]

    assert hrana.requests() == [
        ("/v3/pipeline", ("describe",)),
        ("/v3/pipeline", ("batch", "get_autocommit", "close")),
        ("/v3/pipeline", ("describe",)),
        ("/v3/pipeline", ("batch", "get_autocommit")),  # in a transaction: stream kept
        ("/v3/pipeline", ("describe",)),
        ("/v3/pipeline", ("batch", "get_autocommit")),
        ("/v3/pipeline", ("describe",)),
        ("/v3/pipeline", ("batch", "get_autocommit", "close")),  # COMMIT ends the stream
        ("/v3/pipeline", ("describe",)),
        ("/v3/cursor", ("cursor",)),  # statements with result columns read via a cursor
    ]


def test_sdk_connection_is_stuck_once_its_stream_expired(tmp_path: Path) -> None:
    """After a read the SDK keeps its stream open; once the server expires it, every later call
    on that connection fails with STREAM_EXPIRED (the SDK keeps the dead baton): reconnect."""
    server = start_hrana(tmp_path, idle_timeout=0.3)
    try:
        conn = sdk(server.url)
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
        wait_for(
            lambda: any(e["event"] == "streams_expired" for e in server.events()),
            what="the idle stream to expire",
        )
        for _ in range(2):
            with pytest.raises(ValueError, match=r"status=500.*STREAM_EXPIRED"):
                conn.execute("SELECT 2")
        assert sdk(server.url).execute("SELECT 3").fetchall() == [(3,)]
    finally:
        server.stop()


def test_cli_exits_zero_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = start_hrana(tmp_path, token=None)
        try:
            status, _ = call(server.url, "/v3", token=None)
            assert status == 200
        finally:
            code = server.stop(sig)
        assert code == 0


# ---- raw HTTP: what the SDK never sends -----------------------------------------------------


def call(
    url: str, path: str, body: object | None = None, *, token: str | None = TOKEN
) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON body or text)."""
    request = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        with error:
            status, raw = error.code, error.read()
            content_type = error.headers.get_content_type()
    return status, json.loads(raw) if content_type == "application/json" else raw.decode()


def integer(value: int) -> dict[str, Any]:
    return {"type": "integer", "value": str(value)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "value": value}


def stmt(sql: str, *args: dict[str, Any], **named: dict[str, Any]) -> dict[str, Any]:
    return {
        "sql": sql,
        "args": list(args),
        "named_args": [{"name": k, "value": v} for k, v in named.items()],
    }


class RawStream:
    """A Hrana stream driven by hand: carries the baton from one pipeline to the next."""

    def __init__(self, url: str, path: str = "/v3/pipeline") -> None:
        self.url, self.path, self.baton = url, path, None

    def pipeline(self, *requests: dict[str, Any]) -> list[dict[str, Any]]:
        status, body = call(self.url, self.path, {"baton": self.baton, "requests": list(requests)})
        assert status == 200, body
        assert body["base_url"] is None
        self.baton = body["baton"]
        return list(body["results"])

    def execute(self, sql: str, *args: dict[str, Any], **named: dict[str, Any]) -> Any:
        (result,) = self.pipeline({"type": "execute", "stmt": stmt(sql, *args, **named)})
        assert result["type"] == "ok", result
        return result["response"]["result"]

    def rows(self, sql: str, *args: dict[str, Any]) -> list[list[dict[str, Any]]]:
        return list(self.execute(sql, *args)["rows"])


@pytest.fixture
def local(tmp_path: Path) -> Iterator[HranaServer]:
    started = HranaServer(tmp_path / "raw.db", token=TOKEN).start()
    try:
        yield started
    finally:
        started.stop()


def test_version_probes_answer_200_and_protobuf_is_not_offered(local: HranaServer) -> None:
    assert call(local.url, "/v3")[0] == 200
    assert call(local.url, "/v2")[0] == 200
    assert call(local.url, "/v3-protobuf")[0] == 404


def test_missing_or_wrong_token_is_http_401_with_a_json_error(local: HranaServer) -> None:
    body = {"baton": None, "requests": [{"type": "close"}]}
    for token in (None, "wrong"):
        status, error = call(local.url, "/v3/pipeline", body, token=token)
        assert status == 401
        assert error["code"] == "UNAUTHORIZED"
        assert "Bearer" in error["message"]
    assert call(local.url, "/v3", token=None)[0] == 401


def test_execute_returns_typed_values_and_statement_metadata(local: HranaServer) -> None:
    stream = RawStream(local.url)
    stream.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, i INTEGER, f REAL, t TEXT, b BLOB)")
    blob = {"type": "blob", "base64": "AAH+/w=="}  # padding is optional either way
    inserted = stream.execute(
        "INSERT INTO v (i, f, t, b) VALUES (?, ?, ?, ?)",
        integer(2**63 - 1),
        {"type": "float", "value": 0.5},
        text("✓"),
        blob,
    )
    assert inserted["affected_row_count"] == 1
    assert inserted["last_insert_rowid"] == "1"

    result = stream.execute("SELECT i, f, t, b, NULL AS absent FROM v")
    assert result["cols"] == [
        {"name": "i", "decltype": "INTEGER"},
        {"name": "f", "decltype": "REAL"},
        {"name": "t", "decltype": "TEXT"},
        {"name": "b", "decltype": "BLOB"},
        {"name": "absent", "decltype": None},
    ]
    assert result["rows"] == [
        [
            integer(2**63 - 1),
            {"type": "float", "value": 0.5},
            text("✓"),
            {"type": "blob", "base64": "AAH+/w"},
            {"type": "null"},
        ]
    ]
    assert {"rows_read", "rows_written", "query_duration_ms"} <= result.keys()

    no_rows = stream.pipeline(
        {"type": "execute", "stmt": {"sql": "SELECT 1", "want_rows": False}},
        {"type": "execute", "stmt": stmt("SELECT ?", integer(2**63))},
    )
    assert no_rows[0]["response"]["result"]["rows"] == []
    assert no_rows[1]["type"] == "error"
    assert no_rows[1]["error"]["code"] == "PROTOCOL_ERROR"


def test_named_args_bind_with_or_without_their_prefix(local: HranaServer) -> None:
    stream = RawStream(local.url)
    result = stream.execute(
        "SELECT :a, @b, $c", **{":a": integer(1), "b": text("x"), "$c": text("y")}
    )
    assert result["rows"] == [[integer(1), text("x"), text("y")]]
    # Named arguments take precedence over positional ones for the same parameter.
    mixed = stream.execute("SELECT ?1, :z", integer(1), integer(2), z=integer(3))
    assert mixed["rows"] == [[integer(1), integer(3)]]
    (missing,) = stream.pipeline({"type": "execute", "stmt": stmt("SELECT :a, :b", a=integer(1))})
    assert missing["type"] == "error"
    assert missing["error"]["code"] == "ARGS_INVALID"


def test_failed_request_has_the_spec_error_shape_and_later_requests_still_run(
    local: HranaServer,
) -> None:
    stream = RawStream(local.url)
    results = stream.pipeline(
        {"type": "execute", "stmt": stmt("SELECT * FROM nowhere")},
        {"type": "execute", "stmt": stmt("SELECT 1; SELECT 2")},
        {"type": "no_such_request"},
        {"type": "execute", "stmt": stmt("SELECT 42")},
    )
    assert results[0] == {
        "type": "error",
        "error": {"message": "SQLite error: no such table: nowhere", "code": "SQLITE_ERROR"},
    }
    assert results[1]["error"]["code"] == "SQL_MANY_STATEMENTS"
    assert results[2]["error"]["code"] == "PROTOCOL_ERROR"
    assert results[3]["response"]["result"]["rows"] == [[integer(42)]]
    assert stream.baton is not None  # errors do not close the stream


def test_batch_conditions_decide_which_steps_run(local: HranaServer) -> None:
    stream = RawStream(local.url)
    stream.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    steps = [
        {"stmt": stmt("BEGIN")},  # 0
        {"stmt": stmt("INSERT INTO t VALUES (1)"), "condition": {"type": "ok", "step": 0}},  # 1
        {"stmt": stmt("INSERT INTO t VALUES (1)"), "condition": {"type": "ok", "step": 1}},  # 2
        {"stmt": stmt("SELECT 'after error'"), "condition": {"type": "error", "step": 2}},  # 3
        {  # 4: skipped, step 2 failed
            "stmt": stmt("SELECT 'not'"),
            "condition": {"type": "not", "cond": {"type": "error", "step": 2}},
        },
        {  # 5: skipped, step 4 was skipped (neither ok nor error)
            "stmt": stmt("SELECT 'or'"),
            "condition": {
                "type": "or",
                "conds": [{"type": "ok", "step": 4}, {"type": "error", "step": 4}],
            },
        },
        {  # 6
            "stmt": stmt("SELECT 'and'"),
            "condition": {
                "type": "and",
                "conds": [{"type": "ok", "step": 1}, {"type": "error", "step": 2}],
            },
        },
        {"stmt": stmt("SELECT 'autocommit'"), "condition": {"type": "is_autocommit"}},  # 7
        {"stmt": stmt("COMMIT"), "condition": {"type": "ok", "step": 1}},  # 8
        {"stmt": stmt("SELECT 'autocommit'"), "condition": {"type": "is_autocommit"}},  # 9
    ]
    (response,) = stream.pipeline({"type": "batch", "batch": {"steps": steps}})
    result = response["response"]["result"]

    ran = [r is not None for r in result["step_results"]]
    failed = [e is not None for e in result["step_errors"]]
    assert ran == [True, True, False, True, False, False, True, False, True, True]
    assert failed == [False, False, True, False, False, False, False, False, False, False]
    assert result["step_errors"][2]["code"] == "SQLITE_CONSTRAINT"
    assert result["step_results"][3]["rows"] == [[text("after error")]]
    assert stream.rows("SELECT x FROM t") == [[integer(1)]]

    (bad,) = stream.pipeline(
        {
            "type": "batch",
            "batch": {
                "steps": [{"stmt": stmt("SELECT 1"), "condition": {"type": "ok", "step": 0}}]
            },
        }
    )
    assert bad["error"]["code"] == "BATCH_COND_INVALID"  # conditions look only backwards


def test_sequence_runs_every_statement_and_stops_at_the_first_error(local: HranaServer) -> None:
    stream = RawStream(local.url)
    script = """
        CREATE TABLE t (x TEXT);  -- a comment; with a semicolon
        INSERT INTO t VALUES ('a;b');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;
        /* trailing comment */
    """
    (done,) = stream.pipeline({"type": "sequence", "sql": script})
    assert done == {"type": "ok", "response": {"type": "sequence"}}
    assert stream.rows("SELECT x FROM t") == [[text("a;b")]]

    stream.execute("BEGIN")
    (failed,) = stream.pipeline(
        {"type": "sequence", "sql": "INSERT INTO t VALUES ('c'); INSERT INTO nope VALUES (1); "}
    )
    assert failed["error"]["code"] == "SQLITE_ERROR"
    # A sequence never commits behind the client's back: the transaction is still open.
    (autocommit,) = stream.pipeline({"type": "get_autocommit"})
    assert autocommit["response"]["is_autocommit"] is False
    stream.execute("ROLLBACK")
    assert stream.rows("SELECT count(*) FROM t") == [[integer(1)]]


def test_split_sql_cuts_only_at_complete_statements() -> None:
    assert split_sql("SELECT ';'; SELECT 2") == ["SELECT ';';", " SELECT 2"]
    assert split_sql("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END;  ") == [
        "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END;"
    ]


def test_store_sql_and_close_sql_manage_sql_texts_per_stream(local: HranaServer) -> None:
    stream = RawStream(local.url)
    results = stream.pipeline(
        {"type": "store_sql", "sql_id": 1, "sql": "SELECT ? + 1"},
        {"type": "execute", "stmt": {"sql_id": 1, "args": [integer(41)]}},
        {"type": "describe", "sql_id": 1},
        {"type": "store_sql", "sql_id": 1, "sql": "SELECT 2"},
        {"type": "sequence", "sql_id": 1},
        {"type": "close_sql", "sql_id": 1},
        {"type": "close_sql", "sql_id": 1},  # closing an unknown id is fine
        {"type": "execute", "stmt": {"sql_id": 1}},
        {"type": "execute", "stmt": {"sql_id": 1, "sql": "SELECT 1"}},
    )
    outcomes = [r["type"] for r in results]
    assert outcomes == ["ok", "ok", "ok", "error", "error", "ok", "ok", "error", "error"]
    assert results[1]["response"]["result"]["rows"] == [[integer(42)]]
    assert results[2]["response"]["result"]["params"] == [{"name": None}]
    assert results[3]["error"]["code"] == "SQL_EXISTS"
    assert results[4]["error"]["code"] == "ARGS_INVALID"  # the stored SQL wants an argument
    assert results[7]["error"]["code"] == "SQL_NOT_FOUND"
    assert results[8]["error"]["code"] == "SQL_ID_AND_SQL_GIVEN"
    # Stored SQL belongs to its stream.
    (other,) = RawStream(local.url).pipeline({"type": "describe", "sql_id": 1})
    assert other["error"]["code"] == "SQL_NOT_FOUND"


def test_get_autocommit_follows_transactions(local: HranaServer) -> None:
    stream = RawStream(local.url)

    def autocommit() -> bool:
        (result,) = stream.pipeline({"type": "get_autocommit"})
        return bool(result["response"]["is_autocommit"])

    assert autocommit()
    stream.execute("BEGIN IMMEDIATE")
    assert not autocommit()
    stream.execute("COMMIT")
    assert autocommit()


def test_describe_reports_params_columns_and_flags(local: HranaServer) -> None:
    stream = RawStream(local.url)
    stream.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    results = stream.pipeline(
        {"type": "describe", "sql": "SELECT id, name AS n, 1 FROM t WHERE id = :id AND name = ?"},
        {"type": "describe", "sql": "UPDATE t SET name = ? RETURNING id"},
        {"type": "describe", "sql": "EXPLAIN SELECT 1"},
        {"type": "describe", "sql": "SELEC"},
        {"type": "describe", "sql": "  -- nothing  "},
    )
    select, update, explain = (r["response"]["result"] for r in results[:3])
    assert select == {
        "params": [{"name": ":id"}, {"name": None}],
        "cols": [
            {"name": "id", "decltype": "INTEGER"},
            {"name": "n", "decltype": "TEXT"},
            {"name": "1", "decltype": None},
        ],
        "is_explain": False,
        "is_readonly": True,
    }
    assert update["is_readonly"] is False
    assert update["cols"] == [{"name": "id", "decltype": "INTEGER"}]
    assert explain["is_explain"] is True
    assert results[3]["error"]["code"] == "SQLITE_ERROR"
    assert results[4]["error"]["code"] == "SQL_NO_STATEMENT"


def test_batons_rotate_and_old_unknown_or_closed_batons_are_refused(local: HranaServer) -> None:
    stream = RawStream(local.url)
    stream.execute("SELECT 1")
    first = stream.baton
    stream.execute("SELECT 2")
    assert stream.baton not in (None, first)

    for baton, code in ((first, "BATON_REUSED"), ("forged", "BATON_INVALID")):
        status, error = call(local.url, "/v3/pipeline", {"baton": baton, "requests": []})
        assert (status, error["code"]) == (400, code)
        assert error["message"]

    last = stream.baton
    (closed,) = stream.pipeline({"type": "close"})
    assert closed == {"type": "ok", "response": {"type": "close"}}
    assert stream.baton is None
    status, error = call(local.url, "/v3/pipeline", {"baton": last, "requests": []})
    assert (status, error["code"]) == (400, "BATON_REUSED")

    # Requests after `close` in the same pipeline fail; the stream ends either way.
    results = RawStream(local.url).pipeline({"type": "close"}, {"type": "get_autocommit"})
    assert results[1]["error"]["code"] == "STREAM_CLOSED"


def test_malformed_bodies_are_http_400(local: HranaServer) -> None:
    for body in ([], {"baton": None}, {"baton": 7, "requests": []}):
        status, error = call(local.url, "/v3/pipeline", body)
        assert (status, error["code"]) == (400, "PROTOCOL_ERROR")
    status, error = call(local.url, "/v3/nothing-here", {})
    assert (status, error["code"]) == (404, "NOT_FOUND")


def test_v2_pipeline_speaks_the_same_json(local: HranaServer) -> None:
    stream = RawStream(local.url, "/v2/pipeline")
    assert stream.rows("SELECT 'v2'") == [[text("v2")]]


def test_cursor_endpoint_streams_a_batch_as_json_lines(local: HranaServer) -> None:
    request = urllib.request.Request(
        local.url + "/v3/cursor",
        data=json.dumps(
            {
                "baton": None,
                "batch": {
                    "steps": [
                        {"stmt": stmt("SELECT 1 AS one UNION ALL SELECT 2")},
                        {"stmt": stmt("SELECT * FROM nowhere")},
                    ]
                },
            }
        ).encode(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        head, *entries = (json.loads(line) for line in response.read().splitlines())
    assert head["baton"] is not None
    assert [e["type"] for e in entries] == ["step_begin", "row", "row", "step_end", "step_error"]
    assert entries[0] == {
        "type": "step_begin",
        "step": 0,
        "cols": [{"name": "one", "decltype": None}],
    }
    assert entries[4]["error"]["code"] == "SQLITE_ERROR"


def test_idle_stream_expires_rolls_back_and_releases_its_lock(tmp_path: Path) -> None:
    server = HranaServer(tmp_path / "idle.db", token=TOKEN, idle_timeout=1.0).start()
    try:
        stream = RawStream(server.url)
        stream.execute("CREATE TABLE t (x INTEGER)")
        stream.execute("BEGIN IMMEDIATE")
        stream.execute("INSERT INTO t VALUES (1)")
        wait_for(lambda: server.stream_counts() == (0, 0), what="the idle stream to expire")

        status, error = call(server.url, "/v3/pipeline", {"baton": stream.baton, "requests": []})
        assert (status, error["code"]) == (500, "STREAM_EXPIRED")
        other = RawStream(server.url)
        other.execute("BEGIN IMMEDIATE")  # the write lock went with the expired stream
        assert other.rows("SELECT count(*) FROM t") == [[integer(0)]]
        other.execute("COMMIT")
    finally:
        server.stop()


def test_concurrent_streams_wait_for_the_writer_like_sqlite(local: HranaServer) -> None:
    first, second = RawStream(local.url), RawStream(local.url)
    first.execute("CREATE TABLE t (x INTEGER)")
    first.execute("BEGIN IMMEDIATE")
    first.execute("INSERT INTO t VALUES (1)")

    outcome: list[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(second.execute("BEGIN IMMEDIATE")))
    waiter.start()
    try:
        waiter.join(timeout=0.3)
        assert waiter.is_alive(), "the second writer should be waiting for the first"
        first.execute("COMMIT")
    finally:
        waiter.join(timeout=30)
    assert outcome, "the second writer never got the lock"
    assert second.rows("SELECT count(*) FROM t") == [[integer(1)]]
    second.execute("ROLLBACK")


def test_stop_closes_streams_and_refuses_new_connections(tmp_path: Path) -> None:
    server = HranaServer(tmp_path / "stop.db").start()
    stream = RawStream(server.url)
    stream.execute("CREATE TABLE t (x INTEGER)")
    stream.execute("BEGIN IMMEDIATE")
    stream.execute("INSERT INTO t VALUES (1)")
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        call(server.url, "/v3", token=None)
    restarted = HranaServer(tmp_path / "stop.db").start()
    try:
        assert RawStream(restarted.url).rows("SELECT count(*) FROM t") == [[integer(0)]]
    finally:
        restarted.stop()
