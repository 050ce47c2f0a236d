"""The writes guard against a real PostgreSQL: what scripts touch, the capture of live writes,
and what reverting would lose of them."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from activities.pg_capture import (
    WrittenTables,
    at_risk,
    capture_name,
    catalog_shapes,
    guarded_tables,
    install_capture,
    load_writes_table,
    mark_migration_session,
    remove_capture,
    resolve_tables,
    save_writes,
    tables_written_by,
    tables_written_in_transaction,
    write_counts,
)
from devstack.checkout_db import seed_checkout
from devstack.postgres_cluster import PostgresCluster
from schemas.migration_messages import TableLoss
from tests.support.postgres import EXAMPLE_MIGRATIONS, CheckoutDatabase

integration = pytest.mark.integration
CAPTURE = capture_name("launch-capture", "migrate")
NEW_ORDER = (
    "INSERT INTO orders (id, customer_id, total_cents, status, created_at) "
    "VALUES ({id}, 7, 1250, 'open', timestamptz '2026-03-01 12:00:00+00')"
)


def connect(db: CheckoutDatabase) -> psycopg.Connection[Any]:
    return psycopg.connect(db.dsn, autocommit=True)


def live(db: CheckoutDatabase, *statements: str) -> None:
    """Writes by an application session (not the migration's), each committed on its own."""
    with connect(db) as conn:
        # A session time zone other than the checker's: images must still compare equal.
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        for statement in statements:
            conn.execute(statement.encode())


@contextmanager
def migration(db: CheckoutDatabase) -> Iterator[psycopg.Connection[Any]]:
    """The migration's session, inside a transaction that is rolled back at the end (as a
    revert whose loss check stops it)."""
    with connect(db) as conn:
        mark_migration_session(conn, CAPTURE)
        with conn.transaction(force_rollback=True):
            yield conn


def guard(db: CheckoutDatabase, *tables: str) -> list[str]:
    with connect(db) as conn:
        return install_capture(conn, CAPTURE, tables)


def captured(db: CheckoutDatabase) -> list[tuple[Any, ...]]:
    return db.query(
        f"SELECT table_name, op, by_migration, old_row ->> 'id', new_row ->> 'id' "
        f"FROM phasegate_capture.{CAPTURE} ORDER BY id"
    )


# --- what a script writes ---------------------------------------------------------------


def test_the_example_migrations_name_what_they_write() -> None:
    expected = {
        "001_create_orders_v2.sql": WrittenTables(tables={"orders_v2"}),
        "001_create_orders_v2.down.sql": WrittenTables(tables={"orders_v2"}),
        "002_copy_orders.sql": WrittenTables(tables={"orders_v2"}),
        "002_copy_orders.down.sql": WrittenTables(tables={"orders_v2"}),
        "003_index_orders_v2.sql": WrittenTables(tables={"orders_v2"}),
        "003_index_orders_v2.down.sql": WrittenTables(indexes={"orders_v2_customer"}),
    }
    for name, written in expected.items():
        assert tables_written_by((EXAMPLE_MIGRATIONS / name).read_text()) == written, name


@pytest.mark.parametrize(
    ("script", "tables", "indexes"),
    [
        ('ALTER TABLE "Orders" RENAME TO orders_old', {'"Orders"', "orders_old"}, set()),
        ("ALTER TABLE shop.orders RENAME TO orders_v1", {"shop.orders", "shop.orders_v1"}, set()),
        ("ALTER TABLE orders SET SCHEMA archive", {"orders", "archive.orders"}, set()),
        ("ALTER INDEX idx RENAME TO idx2", set(), {"idx", "idx2"}),
        ("ALTER TABLE orders RENAME COLUMN total TO amount", {"orders"}, set()),
        ("CREATE TABLE a AS SELECT 1 AS n; SELECT 2 AS n INTO b", {"a", "b"}, set()),
        ("TRUNCATE a, s.b; COPY c FROM STDIN; COPY d TO STDOUT", {"a", "s.b", "c"}, set()),
        ("DROP TABLE a, s.b; DROP INDEX s.i", {"a", "s.b"}, {"s.i"}),
        ("CREATE TRIGGER t AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION f()", {"a"}, set()),
        (
            "DROP TRIGGER t ON s.a; CREATE RULE r AS ON INSERT TO b DO ALSO NOTIFY b",
            {"s.a", "b"},
            set(),
        ),
        ("MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN DELETE", {"a"}, set()),
        (
            "WITH gone AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM gone",
            {"a", "b"},
            set(),
        ),
        ("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)", {"p1", "p"}, set()),
        (
            "CREATE TEMP TABLE t (n int); INSERT INTO t VALUES (1); INSERT INTO a SELECT * FROM t",
            {"a"},
            set(),
        ),
        (
            'CREATE TABLE "select" (n int); UPDATE "Mixed"."Case" SET n = 1',
            {'"select"', '"Mixed"."Case"'},
            set(),
        ),
        (
            "SELECT count(*), lower(status), pg_catalog.now() FROM orders; VACUUM orders",
            set(),
            set(),
        ),
    ],
)
def test_a_script_names_the_tables_it_writes(
    script: str, tables: set[str], indexes: set[str]
) -> None:
    assert tables_written_by(script) == WrittenTables(tables=tables, indexes=indexes)


@pytest.mark.parametrize(
    ("script", "opaque"),
    [
        ("DO $$ BEGIN DELETE FROM orders; END $$", ["statement 1: a DO block"]),
        ("SELECT 1; CALL archive_orders(30)", ["statement 2: CALL archive_orders"]),
        ("EXECUTE wipe(1)", ["statement 1: EXECUTE wipe"]),
        ("SELECT purge_old()", ["statement 1: calls purge_old(), which may write"]),
        ("UPDATE a SET n = app.next(n)", ["statement 1: calls app.next(), which may write"]),
        ("DROP SCHEMA app CASCADE", ["statement 1: DROP SCHEMA ... CASCADE"]),
        ("TRUNCATE a CASCADE", ["statement 1: TRUNCATE ... CASCADE"]),
        ("CREATE TABLE a (id uuid DEFAULT app.new_id())", []),
    ],
)
def test_statements_whose_effects_the_text_hides_are_opaque(script: str, opaque: list[str]) -> None:
    assert tables_written_by(script).opaque == opaque


def test_a_script_that_does_not_parse_raises_the_parsers_message() -> None:
    with pytest.raises(ValueError, match='syntax error at or near "TABEL"'):
        tables_written_by("CREATE TABEL orders (id int)")


# --- what the catalog says --------------------------------------------------------------


@integration
def test_names_resolve_to_the_tables_they_are_now(checkout_db: CheckoutDatabase) -> None:
    with connect(checkout_db) as conn:
        conn.execute('CREATE SCHEMA shop; CREATE TABLE shop."Carts" (id int)')
        resolved = resolve_tables(
            conn, ["orders", "public.orders", 'shop."Carts"', "missing", "checkout_orders"]
        )
        assert resolved == {
            "orders": "public.orders",
            "public.orders": "public.orders",
            'shop."Carts"': "shop.Carts",
        }
        with pytest.raises(ValueError, match="not a table name: 'orders; DROP TABLE orders'"):
            resolve_tables(conn, ["orders; DROP TABLE orders"])


@integration
def test_catalog_shapes_change_for_the_tables_a_script_changes(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
        before = catalog_shapes(conn)
        assert set(before) == {"public.orders", "public.audit"}
        install_capture(conn, CAPTURE, ["public.audit"])  # the capture's own trigger is no change
        conn.execute("CREATE INDEX orders_status ON orders (status)")
        conn.execute("INSERT INTO audit VALUES (1)")
        after = catalog_shapes(conn)
        conn.execute("ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'open'")
        assert catalog_shapes(conn)["public.orders"] != after["public.orders"]
    assert after["public.audit"] == before["public.audit"]
    assert after["public.orders"] != before["public.orders"]


@integration
def test_a_transaction_sees_its_own_writes_only(checkout_db: CheckoutDatabase) -> None:
    """On PostgreSQL 15 the statistics view holds the session's earlier, unreported writes
    as well: what counts is the growth since the transaction began."""
    with connect(checkout_db) as conn, connect(checkout_db) as other:
        conn.execute("CREATE TABLE audit (id int); CREATE TABLE carts (id int)")
        conn.execute("INSERT INTO carts VALUES (1)")  # an earlier transaction of this session
        with conn.transaction():
            start = write_counts(conn)
            assert tables_written_in_transaction(conn, start) == set()
            other.execute("INSERT INTO audit VALUES (1); DELETE FROM orders WHERE id = 1")
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = 2")
            conn.execute("CREATE TEMP TABLE scratch (n int); INSERT INTO scratch VALUES (1)")
            assert tables_written_in_transaction(conn, start) == {"public.orders"}
            conn.execute("DELETE FROM audit")
            assert tables_written_in_transaction(conn, start) == {
                "public.orders",
                "public.audit",
            }


# --- the capture ------------------------------------------------------------------------


@integration
def test_live_writes_are_captured_apart_from_the_migrations_own(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        conn.execute("CREATE TABLE notes (id int, body text)")  # no primary key
    assert guard(checkout_db, "public.orders", "public.notes", "public.missing") == [
        "public.notes",
        "public.orders",
    ]
    assert guard(checkout_db, "public.orders") == ["public.orders"]  # idempotent
    live(
        checkout_db,
        NEW_ORDER.format(id=40_001),
        "UPDATE orders SET status = 'paid' WHERE id = 40001",
        "DELETE FROM orders WHERE id = 3",
        "INSERT INTO notes VALUES (1, 'live')",
    )
    with connect(checkout_db) as conn:
        mark_migration_session(conn, CAPTURE)
        conn.execute("UPDATE orders SET status = 'shipped' WHERE id = 4")  # a key: not recorded
        conn.execute("INSERT INTO notes VALUES (2, 'migration')")
        assert guarded_tables(conn, CAPTURE) == {"public.orders", "public.notes"}
    assert captured(checkout_db) == [
        ("public.orders", "I", False, None, "40001"),
        ("public.orders", "U", False, "40001", "40001"),
        ("public.orders", "D", False, "3", None),
        ("public.notes", "I", False, None, "1"),
        ("public.notes", "I", True, None, "2"),
    ]
    image = checkout_db.scalar(f"SELECT new_row FROM phasegate_capture.{CAPTURE} WHERE id = 1")
    assert image == {
        "id": 40_001,
        "customer_id": 7,
        "total_cents": 1250,
        "status": "open",
        "created_at": "2026-03-01T12:00:00+00:00",  # UTC whatever the writer's time zone
    }


@integration
def test_a_writer_without_rights_on_the_capture_still_writes(
    checkout_db: CheckoutDatabase,
) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    guard(checkout_db, "public.orders")
    with connect(checkout_db) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {}").format(
                sql.Identifier(role)
            )
        )
    try:
        with psycopg.connect(checkout_db.dsn, user=role, autocommit=True) as app:
            app.execute(NEW_ORDER.format(id=40_002).encode())
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(f"SELECT * FROM phasegate_capture.{CAPTURE}".encode())
        assert captured(checkout_db) == [("public.orders", "I", False, None, "40002")]
    finally:
        with connect(checkout_db) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@integration
def test_a_table_a_script_creates_is_guarded_inside_its_transaction(
    checkout_db: CheckoutDatabase,
) -> None:
    script = (EXAMPLE_MIGRATIONS / "001_create_orders_v2.sql").read_text()
    with connect(checkout_db) as conn:
        mark_migration_session(conn, CAPTURE)
        with conn.transaction():
            conn.execute(script.encode())
            created = resolve_tables(conn, tables_written_by(script).tables)
            assert install_capture(conn, CAPTURE, created.values()) == ["public.orders_v2"]
    live(checkout_db, "INSERT INTO orders_v2 VALUES (1, 2, 3.5, 'open', now())")
    assert captured(checkout_db) == [("public.orders_v2", "I", False, None, "1")]


@integration
def test_remove_capture_leaves_nothing_behind(checkout_db: CheckoutDatabase) -> None:
    other = capture_name("launch-other", "migrate")
    guard(checkout_db, "public.orders")
    with connect(checkout_db) as conn:
        install_capture(conn, other, ["public.orders"])
        remove_capture(conn, CAPTURE)
        assert guarded_tables(conn, CAPTURE) == set()
        assert guarded_tables(conn, other) == {"public.orders"}  # another launch's stays
        remove_capture(conn, other)
        remove_capture(conn, other)  # idempotent
    assert checkout_db.query("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'phasegate%'") == []
    assert checkout_db.query("SELECT 1 FROM pg_namespace WHERE nspname = 'phasegate_capture'") == []
    assert checkout_db.query("SELECT 1 FROM pg_proc WHERE proname = 'capture'") == []
    live(checkout_db, NEW_ORDER.format(id=40_003))  # writes go on without the trigger


# --- what reverting would lose ----------------------------------------------------------


@integration
def test_nothing_is_at_risk_without_a_capture_or_live_writes(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        assert at_risk(conn, CAPTURE) == {}
    guard(checkout_db, "public.orders")
    with migration(checkout_db) as conn:
        conn.execute("UPDATE orders SET status = 'open' WHERE id < 10")
        assert at_risk(conn, CAPTURE) == {}


@integration
def test_rows_of_a_table_the_revert_drops_are_lost(checkout_db: CheckoutDatabase) -> None:
    with connect(checkout_db) as conn:
        mark_migration_session(conn, CAPTURE)
        for name in ("001_create_orders_v2", "002_copy_orders"):
            conn.execute((EXAMPLE_MIGRATIONS / f"{name}.sql").read_text().encode())
        install_capture(conn, CAPTURE, ["public.orders_v2"])
    live(
        checkout_db,
        "INSERT INTO orders_v2 VALUES (40001, 7, 12.50, 'open', now())",
        "INSERT INTO orders_v2 VALUES (40002, 7, 1.00, 'open', now())",
        "UPDATE orders_v2 SET status = 'paid' WHERE id IN (40001, 5)",
        "DELETE FROM orders_v2 WHERE id IN (40002, 6)",
    )
    with migration(checkout_db) as conn:
        conn.execute("DROP TABLE orders_v2")
        # 40001 (inserted, then updated) and 5 (updated); deletes of a gone table undo nothing
        assert at_risk(conn, CAPTURE) == {
            "public.orders_v2": TableLoss(rows_lost=2, table_gone=True)
        }


@integration
def test_a_column_the_revert_drops_loses_nothing(checkout_db: CheckoutDatabase) -> None:
    with connect(checkout_db) as conn:
        mark_migration_session(conn, CAPTURE)
        install_capture(conn, CAPTURE, ["public.orders"])
        conn.execute("ALTER TABLE orders ADD COLUMN note text")
    live(
        checkout_db,
        NEW_ORDER.format(id=40_001),
        "UPDATE orders SET note = 'gift', status = 'paid' WHERE id IN (40001, 8)",
    )
    with migration(checkout_db) as conn:
        conn.execute("ALTER TABLE orders DROP COLUMN note")
        assert at_risk(conn, CAPTURE) == {}
        assert at_risk(conn, CAPTURE, dropped_columns_ok=False) == {
            "public.orders": TableLoss(rows_lost=2)
        }


@integration
def test_a_row_inserted_updated_and_kept_is_not_lost(checkout_db: CheckoutDatabase) -> None:
    guard(checkout_db, "public.orders")
    live(
        checkout_db,
        NEW_ORDER.format(id=40_001),
        "UPDATE orders SET status = 'paid' WHERE id = 40001",
        "UPDATE orders SET status = 'shipped', total_cents = 990 WHERE id = 40001",
    )
    with migration(checkout_db) as conn:
        assert at_risk(conn, CAPTURE) == {}
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = 40001")  # the revert's own
        assert at_risk(conn, CAPTURE) == {"public.orders": TableLoss(rows_lost=1)}


@integration
def test_restoring_a_table_loses_live_inserts_and_updates_and_undoes_deletes(
    checkout_db: CheckoutDatabase,
) -> None:
    guard(checkout_db, "public.orders")
    before = checkout_db.query("SELECT * FROM orders WHERE id IN (9, 10, 11, 13) ORDER BY id")
    live(
        checkout_db,
        NEW_ORDER.format(id=40_001),
        NEW_ORDER.format(id=40_002),
        "UPDATE orders SET status = 'late' WHERE id IN (9, 10)",
        "DELETE FROM orders WHERE id IN (11, 12)",
        NEW_ORDER.format(id=40_003),
        "DELETE FROM orders WHERE id = 40003",  # inserted and deleted live: nothing to keep
        "UPDATE orders SET id = 40004 WHERE id = 13",  # a key moved: 13 deleted, 40004 new
    )
    with migration(checkout_db) as conn:
        # The table as the backup had it, as far as these rows go.
        conn.execute("DELETE FROM orders WHERE id > 30000")
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO orders VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
                before,
            )
        assert at_risk(conn, CAPTURE) == {
            # 40001, 40002, 40004 gone; 9 and 10 back to their old status
            "public.orders": TableLoss(rows_lost=5, deletes_undone=2)  # 11 and 13 are back
        }


@integration
def test_a_table_without_a_primary_key_is_compared_row_by_content(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        conn.execute("CREATE TABLE notes (author text, body text, at timestamptz)")
        conn.execute(
            "INSERT INTO notes SELECT 'seed', 'note ' || n, '2026-01-01' FROM generate_series(1, 5) n"
        )
    guard(checkout_db, "public.notes")
    live(
        checkout_db,
        "INSERT INTO notes VALUES ('ann', 'kept', '2026-03-01 10:00+00')",
        "UPDATE notes SET body = 'kept, edited' WHERE author = 'ann'",
        "INSERT INTO notes VALUES ('bob', 'lost', '2026-03-01 11:00+00')",
        "DELETE FROM notes WHERE body IN ('note 1', 'note 2')",
        "UPDATE notes SET body = 'note 3 edited' WHERE body = 'note 3'",
        "INSERT INTO notes VALUES ('cat', 'hop', '2026-03-01 12:00+00')",
    )
    with connect(checkout_db) as conn:
        # The migration changes a live row, then live traffic changes it again: the live
        # insert is superseded through the migration's write.
        mark_migration_session(conn, CAPTURE)
        conn.execute("UPDATE notes SET author = 'cat2' WHERE body = 'hop'")
    live(checkout_db, "UPDATE notes SET body = 'hop edited' WHERE body = 'hop'")
    with migration(checkout_db) as conn:
        assert at_risk(conn, CAPTURE) == {}
        conn.execute("DELETE FROM notes WHERE author = 'bob'")
        conn.execute("INSERT INTO notes VALUES ('seed', 'note 1', '2026-01-01')")
        conn.execute("UPDATE notes SET body = 'note 3' WHERE body = 'note 3 edited'")
        assert at_risk(conn, CAPTURE) == {"public.notes": TableLoss(rows_lost=2, deletes_undone=1)}


@integration
def test_a_key_the_reverted_table_cannot_hold_is_compared_by_content(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        conn.execute("CREATE TABLE codes (code text PRIMARY KEY, label text)")
    guard(checkout_db, "public.codes")
    live(checkout_db, "INSERT INTO codes VALUES ('abc', 'x'), ('42', 'y')")
    with migration(checkout_db) as conn:
        conn.execute("DROP TABLE codes")  # restored from a backup taken when codes were numbers
        conn.execute("CREATE TABLE codes (code int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO codes VALUES (42, 'y')")
        assert at_risk(conn, CAPTURE) == {"public.codes": TableLoss(rows_lost=2)}


@integration
def test_rows_written_before_the_key_existed_are_compared_by_content(
    checkout_db: CheckoutDatabase,
) -> None:
    with connect(checkout_db) as conn:
        conn.execute("CREATE TABLE tags (name text, weight int)")
    guard(checkout_db, "public.tags")
    live(checkout_db, "INSERT INTO tags VALUES ('new', 1), ('sale', 2)")
    with migration(checkout_db) as conn:
        conn.execute("ALTER TABLE tags ADD COLUMN id serial PRIMARY KEY")
        assert at_risk(conn, CAPTURE) == {}
        conn.execute("DELETE FROM tags WHERE name = 'sale'")
        assert at_risk(conn, CAPTURE) == {"public.tags": TableLoss(rows_lost=1)}


@integration
def test_a_table_renamed_by_the_migration_is_followed(checkout_db: CheckoutDatabase) -> None:
    guard(checkout_db, "public.orders")
    live(checkout_db, NEW_ORDER.format(id=40_001))
    with connect(checkout_db) as conn:
        mark_migration_session(conn, CAPTURE)
        conn.execute("ALTER TABLE orders RENAME TO orders_v1")
    live(checkout_db, "UPDATE orders_v1 SET status = 'paid' WHERE id = 40001")
    with migration(checkout_db) as conn:
        conn.execute("ALTER TABLE orders_v1 RENAME TO orders")
        assert at_risk(conn, CAPTURE) == {}
        conn.execute("DELETE FROM orders WHERE id = 40001")
        assert at_risk(conn, CAPTURE) == {"public.orders_v1": TableLoss(rows_lost=1)}


@integration
def test_saved_writes_hold_every_live_write_or_those_at_risk(
    checkout_db: CheckoutDatabase,
) -> None:
    guard(checkout_db, "public.orders")
    live(
        checkout_db,
        NEW_ORDER.format(id=40_001),
        NEW_ORDER.format(id=40_002),
        "UPDATE orders SET status = 'paid' WHERE id = 40002",
        "DELETE FROM orders WHERE id = 14",
    )
    with migration(checkout_db) as conn:
        conn.execute("UPDATE orders SET status = 'open' WHERE id = 15")  # not a live write
        conn.execute("DELETE FROM orders WHERE id = 40002")
        everything, risky = io.BytesIO(), io.BytesIO()
        assert save_writes(conn, CAPTURE, everything, only_at_risk=False) == 4
        assert save_writes(conn, CAPTURE, risky, only_at_risk=True) == 1
        assert load_writes_table(conn, CAPTURE) == 1
        carried = conn.execute("SELECT table_name, op, row FROM phasegate_writes").fetchall()
    lines = [json.loads(line) for line in everything.getvalue().splitlines()]
    assert [(line["table"], line["op"]) for line in lines] == [
        ("public.orders", "I"),
        ("public.orders", "I"),
        ("public.orders", "U"),
        ("public.orders", "D"),
    ]
    assert lines[3]["old"]["id"] == 14
    assert lines[3]["new"] is None
    assert lines[0]["at"].endswith("+00:00")
    (at_risk_line,) = [json.loads(line) for line in risky.getvalue().splitlines()]
    assert at_risk_line == lines[2]
    assert carried == [("public.orders", "U", lines[2]["new"])]
    with connect(checkout_db) as conn, pytest.raises(ValueError, match="inside a transaction"):
        load_writes_table(conn, CAPTURE)


@integration
def test_at_risk_leaves_the_sessions_settings_as_they_were(
    checkout_db: CheckoutDatabase,
) -> None:
    guard(checkout_db, "public.orders")
    live(checkout_db, NEW_ORDER.format(id=40_001))
    with migration(checkout_db) as conn:
        conn.execute("SET TimeZone = 'America/Lima'")
        conn.execute("DELETE FROM orders WHERE id = 40001")
        assert at_risk(conn, CAPTURE) == {"public.orders": TableLoss(rows_lost=1)}
        assert conn.execute("SHOW TimeZone").fetchone() == ("America/Lima",)


@pytest.fixture
def million_orders(postgres: PostgresCluster, tmp_path: Path) -> Iterator[CheckoutDatabase]:
    """A checkout database of a million orders, dropped after the test."""
    name = f"capture_scale_{uuid.uuid4().hex[:8]}"
    dsn = postgres.create_database(name)
    seed_checkout(dsn, 1_000_000)
    yield CheckoutDatabase(dsn=dsn, dsn_file=tmp_path / "unused.dsn", workdir=tmp_path)
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@integration
def test_at_risk_scales_to_a_hundred_thousand_writes_on_a_million_rows(
    million_orders: CheckoutDatabase,
) -> None:
    db = million_orders
    guard(db, "public.orders")
    started = time.monotonic()
    live(
        db,
        "UPDATE orders SET status = 'late' WHERE id <= 50000",
        "INSERT INTO orders SELECT n, 1, 100, 'open', now() FROM generate_series(1000001, 1049000) n",
        "DELETE FROM orders WHERE id BETWEEN 60001 AND 61000",
    )
    captured_s = time.monotonic() - started
    assert db.scalar(f"SELECT count(*) FROM phasegate_capture.{CAPTURE}") == 100_000
    with migration(db) as conn:
        conn.execute("DELETE FROM orders WHERE id > 1000000 AND id % 10 = 0")  # 4,900 lost
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 50000 AND id % 10 = 0")
        conn.execute(  # 100 live deletes undone: the rows are back as they were
            f"INSERT INTO orders SELECT (jsonb_populate_record(NULL::orders, old_row)).* "
            f"FROM phasegate_capture.{CAPTURE} WHERE op = 'D' AND (old_row ->> 'id')::int <= 60100"
        )
        started = time.monotonic()
        losses = at_risk(conn, CAPTURE)
        at_risk_s = time.monotonic() - started
        started = time.monotonic()
        saved = save_writes(conn, CAPTURE, io.BytesIO(), only_at_risk=True)
        save_s = time.monotonic() - started
    print(
        f"\ncapture of 100,000 live writes: {captured_s:.1f}s; at_risk: {at_risk_s:.2f}s; "
        f"save_writes(only_at_risk): {save_s:.2f}s"
    )
    assert losses == {"public.orders": TableLoss(rows_lost=9_900, deletes_undone=100)}
    assert saved == 10_000
