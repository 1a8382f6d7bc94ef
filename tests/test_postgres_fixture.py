"""The PostgreSQL fixtures do what the store's tests rely on: a real 15, a database of
each test's own, sessions an administrator can end, data that survives a restart and a
crash, and PgBouncer in transaction mode in front."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PgBouncer, PostgresCluster

_seen_databases: list[str] = []


def _database_name(url: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def test_a_database_is_reachable_and_is_postgresql_15(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute("SELECT version(), current_setting('server_version_num')")
        version, number = row.fetchone() or ("", "0")
    assert version.startswith("PostgreSQL 15."), version
    assert 150000 <= int(number) < 160000


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_has_a_database_of_its_own(postgres_url: str, run: int) -> None:
    name = _database_name(postgres_url)
    assert name not in _seen_databases
    with psycopg.connect(postgres_url) as connection:
        # A table of the same name in each run: it is new because the database is.
        connection.execute("CREATE TABLE marker (run int)")
        connection.execute("INSERT INTO marker VALUES (%s)", (run,))
        databases = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
    assert name in databases
    assert not databases & set(_seen_databases), "an earlier test's database was not dropped"
    _seen_databases.append(name)


def test_the_server_is_configured_for_the_tests(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('max_connections', 'synchronous_commit', 'fsync', 'listen_addresses',"
                " 'server_encoding', 'lc_collate')"
            ).fetchall()
        )
    assert settings == {
        "max_connections": "200",
        "synchronous_commit": "on",
        "fsync": "on",
        "listen_addresses": "127.0.0.1",
        "server_encoding": "UTF8",
        "lc_collate": "C",
    }
    assert postgres_cluster.psql("SELECT 6 * 7", _database_name(postgres_url)).strip() == "42"


def test_terminate_backends_ends_the_matching_sessions(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    dbname = _database_name(postgres_url)
    with (
        psycopg.connect(postgres_url, application_name="victim") as victim,
        psycopg.connect(postgres_url, application_name="bystander", autocommit=True) as other,
    ):
        victim.execute("SELECT 1")
        assert postgres_cluster.terminate_backends(dbname, application_name="victim") == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert other.execute("SELECT 1").fetchone() == (1,)
        assert postgres_cluster.terminate_backends(dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")
    assert postgres_cluster.terminate_backends(dbname) == 0


def test_restart_keeps_the_port_and_the_data(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before the restart')")
    port, pid = postgres_cluster.port, postgres_cluster.pid
    postgres_cluster.restart()
    assert postgres_cluster.port == port
    assert postgres_cluster.pid != pid
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("before the restart",)]


def test_kill_then_start_recovers_what_was_committed(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE ledger (n int)")
        connection.execute("INSERT INTO ledger VALUES (1)")
        open_transaction = psycopg.connect(postgres_url)
        open_transaction.execute("INSERT INTO ledger VALUES (2)")  # never committed
        postgres_cluster.kill()
        assert not postgres_cluster.running
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
    open_transaction.close()
    log_before = len(postgres_cluster.log)
    postgres_cluster.start()
    assert "automatic recovery in progress" in postgres_cluster.log[log_before:]
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT n FROM ledger").fetchall() == [(1,)]


def test_a_test_may_leave_the_cluster_stopped(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    """postgres_url's teardown starts it again to drop the database, and the next test's
    postgres_url finds it running."""
    postgres_cluster.stop()
    assert not postgres_cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=5)


def test_pgbouncer_forwards_in_transaction_mode(pgbouncer: PgBouncer, postgres_url: str) -> None:
    dbname = _database_name(postgres_url)
    url = pgbouncer.url(dbname)
    assert url != postgres_url
    with (
        psycopg.connect(url, prepare_threshold=None, autocommit=True) as first,
        psycopg.connect(url, prepare_threshold=None, autocommit=True) as second,
    ):
        assert first.execute("SELECT current_database()").fetchone() == (dbname,)
        first.execute("CREATE TABLE through_the_pool (n int)")
        with first.transaction():
            first.execute("INSERT INTO through_the_pool VALUES (1)")
        # Both clients stay connected, yet between transactions neither holds a server
        # session: the second is lent the one the first gave back (session mode would
        # give it a server connection of its own).
        backend = first.execute("SELECT pg_backend_pid()").fetchone()
        assert second.execute("SELECT pg_backend_pid()").fetchone() == backend
    with psycopg.connect(postgres_url) as direct:
        assert direct.execute("SELECT n FROM through_the_pool").fetchall() == [(1,)]
