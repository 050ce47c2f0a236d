"""Restoring only the touched tables from a real pg_dump archive into a real PostgreSQL, inside
the caller's transaction: the tables and the plain views over them come back exactly, nothing
else is touched, a rollback undoes it all, and a table something else depends on (a view the
backup does not have, a materialized view, another table's foreign key or default) is
refused."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

from activities.errors import MigrationError
from activities.pg_table_restore import (
    RunPgRestore,
    TableObjects,
    pg_restore_from_stream,
    restore_tables,
    select_entries,
    table_objects,
)
from devstack.postgres_cluster import PostgresCluster

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE b (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE a (
    id serial PRIMARY KEY,
    b_id int NOT NULL REFERENCES b (id),
    note text,
    CONSTRAINT a_note_short CHECK (length(note) < 200)
);
CREATE INDEX a_note_idx ON a (note);
COMMENT ON TABLE a IS 'orders of the test; with a semicolon;
and a second line';
CREATE FUNCTION keep_row() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER a_keep BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION keep_row();
CREATE TRIGGER phasegate_capture_a AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION keep_row();
CREATE TABLE c (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE VIEW c_count AS SELECT count(*) AS n FROM c;
CREATE TABLE z (id int PRIMARY KEY, label text);
INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 10) AS i;
INSERT INTO a (b_id, note) SELECT 1 + i % 10, E'note\\t' || i || E'\\n;' FROM generate_series(1, 1000) AS i;
INSERT INTO c (v) SELECT 'c' || i FROM generate_series(1, 100) AS i;
INSERT INTO z SELECT i, 'z' || i FROM generate_series(1, 5) AS i;
"""


@pytest.fixture
def db(postgres: PostgresCluster) -> str:
    dsn = postgres.create_database(f"tables_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    return dsn


def dump(postgres: PostgresCluster, dsn: str, path: Path) -> Path:
    """pg_dump -Fc into a pipe, as a backup streamed through encryption is written: the
    archive has no data offsets, and pg_restore reads it strictly in order."""
    with (
        path.open("wb") as out,
        subprocess.Popen(
            [str(postgres.bin_dir / "pg_dump"), "-Fc", f"--dbname={dsn}"], stdout=subprocess.PIPE
        ) as process,
    ):
        assert process.stdout is not None
        shutil.copyfileobj(process.stdout, out)
    assert process.returncode == 0
    return path


def from_file(postgres: PostgresCluster, archive: Path) -> RunPgRestore:
    def write(pipe: IO[bytes]) -> None:
        with archive.open("rb") as source:
            shutil.copyfileobj(source, pipe)

    return pg_restore_from_stream(str(postgres.bin_dir / "pg_restore"), write)


def listing(postgres: PostgresCluster, archive: Path) -> str:
    return b"".join(from_file(postgres, archive)(["--list"])).decode()


def objects(dsn: str, tables: list[str]) -> dict[str, TableObjects]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return table_objects(conn, tables)


def shape(conn: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """A table's columns, rows, indexes, constraints, triggers and comment, as text."""

    def rows(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(query.encode(), params or None)]

    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
        return {"exists": False}
    return {
        "columns": rows(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
            "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
            "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        ),
        "rows": rows(
            f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
        ),
        "indexes": rows(
            "SELECT indexdef FROM pg_indexes WHERE schemaname || '.' || tablename = %s ORDER BY 1",
            (table,),
        ),
        "constraints": rows(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass ORDER BY 1",
            (table,),
        ),
        "triggers": rows(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "ORDER BY 1",
            (table,),
        ),
        "comment": rows("SELECT obj_description(%s::regclass, 'pg_class')", (table,)),
    }


def everything(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT schemaname || '.' || tablename FROM pg_tables "
                "WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        result: dict[str, Any] = {table: shape(conn, table) for table in tables}
        result["views"] = conn.execute(
            "SELECT c.relname, pg_get_viewdef(c.oid), c.relacl::text, "
            "obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm') "
            "ORDER BY 1"
        ).fetchall()
        result["sequences"] = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"
        ).fetchall()
        return result


def migrate(dsn: str, text: str) -> None:
    """What a migration and the live traffic beside it did after the backup."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())


@pytest.fixture
def backup(
    db: str, postgres: PostgresCluster, tmp_path: Path
) -> tuple[Path, dict[str, TableObjects]]:
    """The archive, and table a as it was when it was taken."""
    return dump(postgres, db, tmp_path / "backup.dump"), objects(db, ["public.a"])


AFTER_BACKUP = """
ALTER TABLE a ADD COLUMN extra int NOT NULL DEFAULT 7;
CREATE INDEX a_extra_idx ON a (extra);
INSERT INTO a (b_id, note) SELECT 2, 'live ' || i FROM generate_series(1, 50) AS i;
UPDATE a SET note = 'changed' WHERE id <= 20;
INSERT INTO c (v) SELECT 'live c' || i FROM generate_series(1, 20) AS i;
CREATE TABLE d (id int PRIMARY KEY);
INSERT INTO d VALUES (1);
"""


def test_table_objects_names_what_belongs_to_a_table_and_what_depends_on_it(db: str) -> None:
    migrate(
        db,
        """
        CREATE VIEW a_notes AS SELECT id, note FROM a;
        ALTER VIEW a_notes ALTER COLUMN note SET DEFAULT 'new';
        CREATE RULE a_notes_delete AS ON DELETE TO a_notes DO INSTEAD NOTHING;
        CREATE TRIGGER a_notes_insert INSTEAD OF INSERT ON a_notes
          FOR EACH ROW EXECUTE FUNCTION keep_row();
        CREATE VIEW a_short AS SELECT note FROM a_notes WHERE id < 10;
        CREATE VIEW a_next AS SELECT last_value FROM a_id_seq;
        CREATE VIEW b_names AS SELECT name FROM b;
        CREATE MATERIALIZED VIEW a_counts AS SELECT count(*) AS n FROM a_short;
        CREATE TABLE e (id int PRIMARY KEY, a_id int REFERENCES a (id));
        CREATE TABLE f (id int, a_id int REFERENCES a (id));
        """,
    )

    found = objects(db, ["public.a", "public.f", "public.missing", "c_count"])

    assert set(found) == {"public.a", "public.f"}  # a view and a missing table are not tables
    a = found["public.a"]
    assert (a.namespace, a.name, a.owner) == ("public", "a", "phasegate")
    assert a.columns == ["id", "b_id", "note"]
    assert a.defaults == ["id"]
    assert a.constraints == ["a_b_id_fkey", "a_note_short", "a_pkey"]
    assert a.indexes == ["a_note_idx", "a_pkey"]
    assert a.sequences == [("public", "a_id_seq")]
    assert a.triggers == ["a_keep"]  # never the capture trigger
    # Views over a, over its sequence and over those views, each after the views it reads.
    assert [view.view for view in a.views] == ["public.a_next", "public.a_notes", "public.a_short"]
    notes = a.views[1]
    assert (notes.owner, notes.columns, notes.defaults) == ("phasegate", ["id", "note"], ["note"])
    assert (notes.rules, notes.triggers) == (["_RETURN", "a_notes_delete"], ["a_notes_insert"])
    # f is restored with a, so only e's foreign key and what reads a view stand in the way.
    assert a.dependents == [
        "the foreign key e_a_id_fkey of table public.e",
        "materialized view public.a_counts (through view public.a_short)",
    ]
    assert found["public.f"].dependents == []
    assert found["public.f"].views == []


def test_select_entries_keeps_exactly_the_tables_entries(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    dsn = postgres.create_database(f"toc_{uuid.uuid4().hex[:8]}")
    migrate(
        dsn,
        """
        DO $$BEGIN CREATE ROLE phasegate_reader; EXCEPTION WHEN duplicate_object THEN END$$;
        CREATE SCHEMA other;
        CREATE TABLE b (id int PRIMARY KEY);
        CREATE TABLE a (id serial PRIMARY KEY, b_id int REFERENCES b (id), note text);
        CREATE TABLE other.a (id int PRIMARY KEY);
        CREATE TABLE "a b" (id int);
        CREATE TABLE "We ird" ("Id" serial PRIMARY KEY, "x y" int UNIQUE);
        CREATE TABLE "user" (id bigint GENERATED BY DEFAULT AS IDENTITY, n int);
        CREATE INDEX a_note_idx ON a (note);
        ALTER TABLE a ADD CONSTRAINT a_positive CHECK (id > 0) NOT VALID;
        CREATE FUNCTION t() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN RETURN NEW; END$f$;
        CREATE TRIGGER a_t BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION t();
        CREATE TRIGGER phasegate_capture_a AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION t();
        CREATE POLICY a_all ON a USING (true);
        ALTER TABLE a ENABLE ROW LEVEL SECURITY;
        CREATE STATISTICS a_stats ON b_id, note FROM a;
        COMMENT ON TABLE a IS 'a';
        COMMENT ON COLUMN a.note IS 'note';
        COMMENT ON INDEX a_note_idx IS 'index';
        COMMENT ON CONSTRAINT a_b_id_fkey ON a IS 'fk';
        COMMENT ON TRIGGER phasegate_capture_a ON a IS 'capture';
        COMMENT ON TABLE "We ird" IS 'weird';
        COMMENT ON COLUMN "We ird"."x y" IS 'column';
        COMMENT ON TABLE "user" IS 'keyword';
        COMMENT ON TABLE "a b" IS 'space';
        GRANT SELECT, INSERT ON a TO phasegate_reader;
        GRANT SELECT (note) ON a TO phasegate_reader;
        GRANT USAGE ON SEQUENCE a_id_seq TO phasegate_reader;
        GRANT SELECT ON b TO phasegate_reader;
        CREATE VIEW a_view AS SELECT id, note FROM a;
        CREATE VIEW "a view" AS SELECT note FROM a_view;
        CREATE VIEW b_view AS SELECT id FROM b;
        CREATE VIEW "a view 2" AS SELECT id FROM b;
        ALTER VIEW a_view ALTER COLUMN note SET DEFAULT 'n';
        CREATE RULE a_view_delete AS ON DELETE TO a_view DO INSTEAD NOTHING;
        CREATE TRIGGER a_view_insert INSTEAD OF INSERT ON a_view
          FOR EACH ROW EXECUTE FUNCTION t();
        COMMENT ON VIEW a_view IS 'view';
        COMMENT ON COLUMN a_view.note IS 'view column';
        COMMENT ON TRIGGER a_view_insert ON a_view IS 'view trigger';
        COMMENT ON RULE a_view_delete ON a_view IS 'view rule';
        COMMENT ON VIEW b_view IS 'not restored';
        GRANT SELECT ON "a view" TO phasegate_reader;
        GRANT SELECT (id) ON a_view TO phasegate_reader;
        GRANT SELECT ON "a view 2" TO phasegate_reader;
        """,
    )
    archive = dump(postgres, dsn, tmp_path / "toc.dump")
    at_backup = objects(dsn, ["public.a", "public.We ird", "public.user"])

    kept = select_entries(listing(postgres, archive), at_backup)

    entries = sorted(line.split(" ", 3)[3].removesuffix(" phasegate") for line in kept.splitlines())
    assert entries == sorted(
        [
            "TABLE public a",
            "TABLE DATA public a",
            "SEQUENCE public a_id_seq",
            "SEQUENCE OWNED BY public a_id_seq",
            "SEQUENCE SET public a_id_seq",
            "DEFAULT public a id",
            "CONSTRAINT public a a_pkey",
            "CHECK CONSTRAINT public a a_positive",
            "FK CONSTRAINT public a a_b_id_fkey",
            "INDEX public a_note_idx",
            "TRIGGER public a a_t",
            "POLICY public a a_all",
            "ROW SECURITY public a",
            "STATISTICS public a_stats",
            "COMMENT public TABLE a",
            "COMMENT public COLUMN a.note",
            "COMMENT public INDEX a_note_idx",
            "COMMENT public CONSTRAINT a_b_id_fkey ON a",
            "ACL public TABLE a",
            "ACL public COLUMN a.note",
            "ACL public SEQUENCE a_id_seq",
            "TABLE public We ird",
            "TABLE DATA public We ird",
            "SEQUENCE public We ird_Id_seq",
            "SEQUENCE OWNED BY public We ird_Id_seq",
            "SEQUENCE SET public We ird_Id_seq",
            "DEFAULT public We ird Id",
            "CONSTRAINT public We ird We ird_pkey",
            "CONSTRAINT public We ird We ird_x y_key",
            'COMMENT public TABLE "We ird"',
            'COMMENT public COLUMN "We ird"."x y"',
            "TABLE public user",
            "TABLE DATA public user",
            "SEQUENCE public user_id_seq",
            "SEQUENCE SET public user_id_seq",
            'COMMENT public TABLE "user"',
            "VIEW public a_view",
            "DEFAULT public a_view note",
            "RULE public a_view a_view_delete",
            "TRIGGER public a_view a_view_insert",
            "COMMENT public VIEW a_view",
            "COMMENT public COLUMN a_view.note",
            "COMMENT public TRIGGER a_view_insert ON a_view",
            "COMMENT public RULE a_view_delete ON a_view",
            "ACL public COLUMN a_view.id",
            "VIEW public a view",
            'ACL public TABLE "a view"',
        ]
    )


def test_select_entries_refuses_an_archive_without_the_table(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    archive = dump(postgres, db, tmp_path / "before.dump")
    migrate(db, "CREATE TABLE later (id int PRIMARY KEY)")

    with pytest.raises(MigrationError, match=r"the backup has no table or data for public\.later"):
        select_entries(listing(postgres, archive), objects(db, ["public.later"]))
    migrate(db, "CREATE VIEW a_later AS SELECT note FROM a")
    with pytest.raises(MigrationError, match=r"the backup has no view public\.a_later, though"):
        select_entries(listing(postgres, archive), objects(db, ["public.a"]))


def test_restore_brings_back_only_the_touched_table(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    with psycopg.connect(db, autocommit=True) as conn:
        as_backed_up = shape(conn, "public.a")
    migrate(db, AFTER_BACKUP)
    before = everything(db)
    progress: list[str] = []

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open
        rows = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a", "public.d"],
            on_progress=progress.append,
        )
        conn.commit()

    after = everything(db)
    assert rows == 1000
    # Exactly as at the backup, but for the capture trigger, which stays out.
    assert as_backed_up["triggers"] == [("a_keep",), ("phasegate_capture_a",)]
    assert after["public.a"] == {**as_backed_up, "triggers": [("a_keep",)]}
    assert "public.d" not in after
    for untouched in ("public.b", "public.c", "public.z", "views", "sequences"):
        assert after[untouched] == before[untouched]
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT n FROM c_count").fetchone() == (120,)
        # The sequence never goes back: ids handed out after the backup stay unused.
        assert conn.execute("SELECT nextval('a_id_seq')").fetchone() == (1051,)
    assert "restoring TABLE DATA a (public)" in progress
    assert "restored TABLE DATA a (public): 1000 rows" in progress


def test_rolled_back_restore_leaves_everything_as_it_was(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    migrate(db, AFTER_BACKUP)
    before = everything(db)

    with psycopg.connect(db, autocommit=True) as conn, conn.transaction() as outer:
        restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a", "public.d"],
            on_progress=lambda _: None,
        )
        assert conn.execute("SELECT count(*) FROM a").fetchone() == (1000,)
        raise psycopg.Rollback(outer)

    assert everything(db) == before


def test_restore_keeps_the_callers_session_settings(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    migrate(db, AFTER_BACKUP)
    names = ["search_path", "statement_timeout", "lock_timeout", "client_min_messages",
             "row_security", "check_function_bodies", "default_tablespace", "client_encoding"]  # fmt: skip

    with psycopg.connect(db) as conn:
        conn.execute("SET LOCAL statement_timeout = '5min'")
        conn.execute("SET LOCAL lock_timeout = '7s'")
        settings = [conn.execute("SELECT current_setting(%s)", (n,)).fetchone() for n in names]
        restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a"],
            on_progress=lambda _: None,
        )
        assert [conn.execute("SELECT current_setting(%s)", (n,)).fetchone() for n in names] == (
            settings
        )
        assert conn.execute("SELECT count(*) FROM a").fetchone() == (1000,)  # unqualified works
        conn.rollback()


def test_a_table_something_else_depends_on_is_refused(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    migrate(
        db,
        AFTER_BACKUP + "CREATE VIEW a_notes AS SELECT note FROM a; "
        "CREATE TABLE e (id int PRIMARY KEY, a_id int REFERENCES a (id));",
    )
    before = everything(db)

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(MigrationError) as refused:
            restore_tables(
                conn,
                run_pg_restore=from_file(postgres, archive),
                at_backup=at_backup,
                drop_now=["public.a", "public.d"],
                on_progress=lambda _: None,
            )
        conn.commit()

    assert str(refused.value) == (
        "cannot restore public.a from the backup: the foreign key e_a_id_fkey of table "
        "public.e and view public.a_notes depend on it (now), and restoring it would drop "
        "them; give every migration script a down script (NNN_name.down.sql) so the undo "
        "runs those instead"
    )
    assert everything(db) == before


def refusal(
    postgres: PostgresCluster, db: str, archive: Path, at_backup: dict[str, TableObjects]
) -> str:
    """The refusal of restoring table a, after checking that it changed nothing."""
    before = everything(db)
    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(MigrationError) as refused:
            restore_tables(
                conn,
                run_pg_restore=from_file(postgres, archive),
                at_backup=at_backup,
                drop_now=["public.a"],
                on_progress=lambda _: None,
            )
        conn.commit()
    assert everything(db) == before
    return str(refused.value)


def test_a_view_the_backup_does_not_have_is_refused(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(db, "CREATE VIEW a_notes AS SELECT id, note FROM a")
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a"])
    migrate(db, "CREATE VIEW a_later AS SELECT note FROM a_notes WHERE id > 10")

    assert refusal(postgres, db, archive, at_backup) == (
        "cannot restore public.a from the backup: view public.a_later depends on it (now), and "
        "restoring it would drop them; give every migration script a down script "
        "(NNN_name.down.sql) so the undo runs those instead"
    )
    # A view the tables stored with the backup name, but which the archive lacks.
    migrate(db, "DROP VIEW a_later")
    older = dump(postgres, db, tmp_path / "older.dump")
    migrate(db, "CREATE VIEW a_since AS SELECT id FROM a")
    assert refusal(postgres, db, older, objects(db, ["public.a"])).startswith(
        "cannot restore public.a from the backup: view public.a_since depends on it (now)"
    )


def test_what_is_not_a_plain_view_is_still_refused(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(db, "CREATE MATERIALIZED VIEW a_counts AS SELECT count(*) AS n FROM a")
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a"])
    migrate(db, "DROP MATERIALIZED VIEW a_counts")
    assert refusal(postgres, db, archive, at_backup).startswith(
        "cannot restore public.a from the backup: materialized view public.a_counts depends on "
        "it (at the backup)"
    )

    archive = dump(postgres, db, tmp_path / "plain.dump")
    at_backup = objects(db, ["public.a"])
    migrate(
        db,
        "CREATE VIEW a_notes AS SELECT id, note FROM a; "
        "CREATE MATERIALIZED VIEW a_note_counts AS SELECT count(*) AS n FROM a_notes; "
        "CREATE TABLE g (id int DEFAULT nextval('a_id_seq'));",
    )
    message = refusal(postgres, db, archive, at_backup)
    assert message.startswith("cannot restore public.a from the backup: ")
    assert "default value for column id of table g" in message
    assert "materialized view public.a_note_counts (through view public.a_notes)" in message
    assert "and view public.a_notes depend on it (now)" in message


def test_views_over_the_tables_come_back_as_at_the_backup(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(
        db,
        """
        DO $$BEGIN CREATE ROLE phasegate_reader; EXCEPTION WHEN duplicate_object THEN END$$;
        CREATE VIEW a_notes AS SELECT a.id, a.note, b.name FROM a JOIN b ON b.id = a.b_id;
        CREATE VIEW a_short AS SELECT id, note FROM a_notes WHERE id <= 10;
        COMMENT ON VIEW a_notes IS 'notes with their b';
        GRANT SELECT ON a_short TO phasegate_reader;
        """,
    )
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a"])
    with psycopg.connect(db, autocommit=True) as conn:
        as_backed_up = shape(conn, "public.a")
    views_at_backup = everything(db)["views"]
    # The migration moves the view onto its new column (a cutover), and drops the grant.
    migrate(
        db,
        AFTER_BACKUP
        + """
        CREATE OR REPLACE VIEW a_notes AS
          SELECT a.id, a.note, b.name, a.extra FROM a JOIN b ON b.id = a.b_id;
        COMMENT ON VIEW a_notes IS 'moved';
        REVOKE SELECT ON a_short FROM phasegate_reader;
        """,
    )
    before = everything(db)
    assert before["views"] != views_at_backup
    progress: list[str] = []

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        rows = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a", "public.d"],
            on_progress=progress.append,
        )
        conn.commit()

    after = everything(db)
    assert [view.view for view in at_backup["public.a"].views] == [
        "public.a_notes",
        "public.a_short",
    ]
    assert rows == 1000
    assert after["views"] == views_at_backup
    assert after["public.a"] == {**as_backed_up, "triggers": [("a_keep",)]}
    for untouched in ("public.b", "public.c", "public.z"):
        assert after[untouched] == before[untouched]
    assert "dropping views public.a_short, public.a_notes" in progress
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute(
            "SELECT has_table_privilege('phasegate_reader', 'a_short', 'SELECT')"
        ).fetchone() == (True,)
        assert conn.execute("SELECT count(*), min(note) FROM a_short").fetchone() == (
            10,
            "note\t1\n;",
        )


def test_views_dropped_or_moved_elsewhere_come_back_as_at_the_backup(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(
        db,
        "CREATE VIEW a_ids AS SELECT id FROM a; "
        "CREATE VIEW a_ids_twice AS SELECT id * 2 AS id FROM a_ids; "
        "CREATE VIEW a_notes AS SELECT note FROM a;",
    )
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a"])
    views_at_backup = everything(db)["views"]
    # a_ids (and so a_ids_twice) now reads a table the restore leaves alone.
    migrate(
        db,
        "CREATE OR REPLACE VIEW a_ids AS SELECT id FROM z; DROP VIEW a_notes; "
        "ALTER TABLE a DROP COLUMN note;",
    )

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a"],
            on_progress=lambda _: None,
        )
        conn.commit()

    assert everything(db)["views"] == views_at_backup
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), max(id) FROM a_ids_twice").fetchone() == (1000, 2000)


def test_rolled_back_restore_with_views_leaves_everything_as_it_was(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(
        db,
        "CREATE VIEW a_notes AS SELECT id, note FROM a; "
        "CREATE VIEW a_short AS SELECT note FROM a_notes WHERE id < 10; "
        "COMMENT ON VIEW a_short IS 'short';",
    )
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a"])
    migrate(
        db,
        AFTER_BACKUP + "CREATE OR REPLACE VIEW a_notes AS SELECT id, note, extra FROM a; "
        "COMMENT ON VIEW a_short IS 'changed';",
    )
    before = everything(db)

    with psycopg.connect(db, autocommit=True) as conn, conn.transaction() as outer:
        restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a", "public.d"],
            on_progress=lambda _: None,
        )
        assert conn.execute("SELECT count(*) FROM a_short").fetchone() == (9,)
        assert conn.execute(
            "SELECT obj_description('a_short'::regclass, 'pg_class')"
        ).fetchone() == ("short",)
        raise psycopg.Rollback(outer)

    assert everything(db) == before


def test_renamed_created_and_dropped_tables_come_back_as_at_the_backup(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    archive = dump(postgres, db, tmp_path / "backup.dump")
    at_backup = objects(db, ["public.a", "public.z", "public.a_old", "public.n"])
    with psycopg.connect(db, autocommit=True) as conn:
        expected = {table: shape(conn, table) for table in ("public.a", "public.z")}
    expected["public.a"]["triggers"] = [("a_keep",)]  # no capture trigger comes back
    migrate(
        db,
        "ALTER TABLE a RENAME TO a_old; DROP TABLE z; "
        "CREATE TABLE n (id int PRIMARY KEY); INSERT INTO n VALUES (1);",
    )

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        rows = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a", "public.z", "public.a_old", "public.n"],
            on_progress=lambda _: None,
        )
        conn.commit()
        found = {
            table: shape(conn, table)
            for table in ("public.a", "public.z", "public.a_old", "public.n")
        }

    assert set(at_backup) == {"public.a", "public.z"}
    assert rows == 1005
    assert found == {**expected, "public.a_old": {"exists": False}, "public.n": {"exists": False}}


def test_partitioned_tables_come_back_attached(
    postgres: PostgresCluster, db: str, tmp_path: Path
) -> None:
    migrate(
        db,
        """
        CREATE TABLE p (id int, k int, note text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
        CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);
        CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2);
        CREATE INDEX p_note ON p (note);
        INSERT INTO p SELECT i, 1 + i % 2, 'p' || i FROM generate_series(1, 100) AS i;
        """,
    )
    archive = dump(postgres, db, tmp_path / "backup.dump")
    tables = ["public.p", "public.p1", "public.p2"]
    with psycopg.connect(db, autocommit=True) as conn:
        expected = {table: shape(conn, table) for table in tables}
    whole, child = objects(db, tables), objects(db, ["public.p1"])
    migrate(db, "INSERT INTO p VALUES (1000, 1, 'live'), (1001, 2, 'live')")

    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(MigrationError, match=r"partition public\.p1 and partition public\.p2"):
            restore_tables(
                conn,
                run_pg_restore=from_file(postgres, archive),
                at_backup=objects(db, ["public.p"]),
                drop_now=["public.p"],
                on_progress=lambda _: None,
            )
        restored_child = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=child,
            drop_now=["public.p1"],
            on_progress=lambda _: None,
        )
        after_child = {table: shape(conn, table) for table in tables}
        conn.rollback()
        migrate(db, "ALTER TABLE p ADD COLUMN extra int")
        conn.execute("SELECT 1")
        restored_whole = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=whole,
            drop_now=tables,
            on_progress=lambda _: None,
        )
        conn.commit()
        after_whole = {table: shape(conn, table) for table in tables}

    assert restored_child == 50
    assert after_child["public.p1"] == expected["public.p1"]
    assert after_child["public.p2"]["rows"][0][0] == 51  # p2 keeps its live row
    assert restored_whole == 100
    assert after_whole == expected


def test_a_failing_restore_rolls_back_to_where_the_caller_was(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    migrate(db, AFTER_BACKUP + "DELETE FROM a WHERE b_id = 3; DELETE FROM b WHERE id = 3;")

    with psycopg.connect(db) as conn:
        conn.execute("INSERT INTO z VALUES (100, 'the caller wrote this')")
        with pytest.raises(MigrationError) as failed:
            restore_tables(
                conn,
                run_pg_restore=from_file(postgres, archive),
                at_backup=at_backup,
                drop_now=["public.a", "public.d"],
                on_progress=lambda _: None,
            )
        # The savepoint is gone, the caller's transaction is not: a is as the migration left it.
        assert conn.execute("SELECT count(*) FROM a WHERE extra = 7").fetchone() == (950,)
        assert conn.execute("SELECT count(*) FROM z").fetchone() == (6,)
        conn.rollback()

    message = str(failed.value)
    assert message.startswith(
        "restoring FK CONSTRAINT a a_b_id_fkey (public) from the backup failed"
    )
    assert "a_b_id_fkey" in message
    assert "SQLSTATE 23503" in message
    assert "Key (" not in message
    assert "note" not in message


def test_the_callers_transaction_is_required(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]]
) -> None:
    archive, at_backup = backup
    with psycopg.connect(db) as conn, pytest.raises(ValueError, match="open transaction"):
        restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.a"],
            on_progress=lambda _: None,
        )
    assert objects(db, ["public.a"])["public.a"] == at_backup["public.a"]


def test_a_broken_archive_changes_nothing(
    postgres: PostgresCluster, db: str, backup: tuple[Path, dict[str, TableObjects]], tmp_path: Path
) -> None:
    archive, at_backup = backup
    migrate(db, AFTER_BACKUP)
    before = everything(db)
    data = archive.read_bytes()
    cut = tmp_path / "cut.dump"
    cut.write_bytes(data[: len(data) * 2 // 3])

    def failing(pipe: IO[bytes]) -> None:
        pipe.write(data[: len(data) // 2])
        raise MigrationError("backup.dump.enc: authentication failed at chunk 3")

    runners: list[tuple[RunPgRestore, str]] = [
        (from_file(postgres, cut), "pg_restore -L .* failed"),
        (
            pg_restore_from_stream(str(postgres.bin_dir / "pg_restore"), failing),
            "authentication failed",
        ),
    ]
    for run, error in runners:
        with psycopg.connect(db) as conn:
            conn.execute("SELECT 1")
            with pytest.raises(MigrationError, match=error):
                restore_tables(
                    conn,
                    run_pg_restore=run,
                    at_backup=at_backup,
                    drop_now=["public.a", "public.d"],
                    on_progress=lambda _: None,
                )
            conn.commit()
        assert everything(db) == before


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/self/status has no {field}")


def test_a_million_rows_stream_in_bounded_memory(
    postgres: PostgresCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres.create_database(f"big_{uuid.uuid4().hex[:8]}")
    migrate(
        dsn,
        "CREATE TABLE big (id bigserial PRIMARY KEY, payload text NOT NULL); "
        "INSERT INTO big (payload) SELECT md5(i::text) || md5((-i)::text) "
        "FROM generate_series(1, 1000000) AS i;",
    )
    archive = dump(postgres, dsn, tmp_path / "big.dump")
    at_backup = objects(dsn, ["public.big"])
    migrate(dsn, "INSERT INTO big (payload) SELECT 'live' FROM generate_series(1, 10)")
    progress: list[str] = []
    Path("/proc/self/clear_refs").write_text("5")  # the peak below is this restore's own
    resident = _resident_kib("VmRSS")
    started = time.monotonic()

    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        rows = restore_tables(
            conn,
            run_pg_restore=from_file(postgres, archive),
            at_backup=at_backup,
            drop_now=["public.big"],
            on_progress=progress.append,
            progress_bytes=16 << 20,
        )
        conn.commit()
        count = conn.execute("SELECT count(*), max(id) FROM big").fetchone()
        next_id = conn.execute("SELECT nextval('big_id_seq')").fetchone()

    seconds = time.monotonic() - started
    grown_mib = (_resident_kib("VmHWM") - resident) / 1024
    with capsys.disabled():
        print(
            f"\n1,000,000 rows ({archive.stat().st_size >> 20} MiB archive) restored in "
            f"{seconds:.1f} s; peak RSS {grown_mib:.1f} MiB above the {resident / 1024:.0f} MiB "
            "before"
        )
    assert rows == 1_000_000
    assert count == (1_000_000, 1_000_000)
    assert next_id == (1_000_011,)
    assert any("MB, " in line and "rows so far" in line for line in progress)
    # COPY data is about 70 MiB; holding it, or its lines, would take far more than this.
    assert grown_mib < 40
