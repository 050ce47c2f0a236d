"""Bringing back only the tables a migration touched from a `pg_dump -Fc` archive of the whole
database, inside a transaction the caller owns, without dropping or overwriting anything else.

`table_objects` reads what belongs to each table, the plain views that read it, and what else
outside depends on it; `select_entries` keeps exactly those tables' and views' entries of the
archive's table of contents; `restore_tables` drops the views and tables as they are now and
replays pg_restore's SQL for the kept entries on the caller's connection, COPY data streamed.
pg_restore always reads the archive from its stdin (`pg_restore_from_stream`), so an encrypted
archive is decrypted on the way in and never lands on disk in clear. Errors carry names and
the server's message, never a row.
"""

from __future__ import annotations

import contextlib
import graphlib
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import psycopg
from pglast import parser as pg_parser
from psycopg import sql
from pydantic import Field

from activities.errors import MigrationError
from activities.pg_errors import describe, without_row_values
from schemas.basics import Message

# Runs `pg_restore <args>` on the archive and yields its stdout line by line, newline kept.
RunPgRestore = Callable[[list[str]], Iterator[bytes]]

CAPTURE_TRIGGER_PREFIX = "phasegate_capture_"
COPY_CHUNK_BYTES = 1 << 20
PROGRESS_BYTES = 64 << 20
# pg_restore turns these off for its own session; a restore inside the caller's transaction
# keeps the caller's timeouts, so a lock wait behind live traffic still ends.
_CALLERS_SETTINGS = frozenset(
    {
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_timeout",
    }
)
# Every entry type pg_dump writes, so that `DEFAULT ACL` is never read as a `DEFAULT`.
_ENTRY_TYPES = sorted(
    [
        "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOB METADATA", "BLOBS", "CAST",
        "CHECK CONSTRAINT", "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE",
        "DATABASE PROPERTIES", "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER",
        "EXTENSION", "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE",
        "FUNCTION", "INDEX", "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY",
        "PROCEDURAL LANGUAGE", "PROCEDURE", "PUBLICATION", "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH",
        "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER",
        "SHELL TYPE", "STATISTICS", "STATISTICS DATA", "STDSTRINGS", "SUBSCRIPTION",
        "SUBSCRIPTION TABLE", "TABLE", "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM",
        "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
    ],
    key=len,
    reverse=True,
)  # fmt: skip
_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_ENTRY_HEADER = re.compile(rb"^-- (?:Data for )?Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$")
_COPY = re.compile(rb"\ACOPY\s.*\sFROM stdin;\s*\Z", re.DOTALL)
_SET = re.compile(rb"\ASET ([a-z_]+) = (.*);\s*\Z", re.DOTALL)
_SET_CONFIG = re.compile(rb"\ASELECT pg_catalog\.set_config\('([a-z_]+)', (.*), false\);\s*\Z")
_END_OF_COPY = b"\\."
# psql commands pg_restore writes around a script; they mean nothing to the server.
_PSQL_COMMANDS = (b"\\restrict ", b"\\unrestrict ")


class ViewObjects(Message):
    """A plain view and what DROP VIEW takes with it, by name, as `pg_restore --list` names
    them: it holds no data, so a restore drops it and creates it again from the archive."""

    namespace: str
    name: str
    owner: str = ""
    columns: list[str] = Field(default_factory=list)
    defaults: list[str] = Field(default_factory=list)  # columns with a default
    rules: list[str] = Field(default_factory=list)  # `_RETURN` included
    triggers: list[str] = Field(default_factory=list)

    @property
    def view(self) -> str:
        return f"{self.namespace}.{self.name}"


class TableObjects(Message):
    """One table and the objects DROP TABLE takes with it, by name, as `pg_restore --list`
    names them. `views` are the plain views outside the restored set that read it, directly
    or through other views, each after the views it reads: a restore drops them and creates
    them again from the archive. `dependents` are the other objects outside the restored set
    that use it or one of those views (materialized views, other tables' foreign keys,
    partitions, other tables' defaults on its sequences...), which make a restore refuse
    rather than drop them."""

    namespace: str
    name: str
    owner: str = ""
    partitioned: bool = False  # its rows live in its partitions: it has no data of its own
    partition_of: str = ""  # the partitioned table it is a partition of, `schema.table`
    columns: list[str] = Field(default_factory=list)
    defaults: list[str] = Field(default_factory=list)  # columns with a default
    constraints: list[str] = Field(default_factory=list)
    indexes: list[str] = Field(default_factory=list)
    sequences: list[tuple[str, str]] = Field(default_factory=list)  # owned: (schema, name)
    triggers: list[str] = Field(default_factory=list)  # never the capture triggers
    policies: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    statistics: list[tuple[str, str]] = Field(default_factory=list)  # (schema, name)
    views: list[ViewObjects] = Field(default_factory=list)
    dependents: list[str] = Field(default_factory=list)

    @property
    def table(self) -> str:
        return f"{self.namespace}.{self.name}"


# --- what belongs to a table -------------------------------------------------------------


def table_objects(conn: psycopg.Connection[Any], tables: Iterable[str]) -> dict[str, TableObjects]:
    """Each of `tables` (`schema.table`, or a bare name found on the search path) that exists
    as a table, keyed `schema.table`; `views` and `dependents` count only objects outside
    this set."""
    found: dict[int, tuple[str, str, str, bool, str]] = {}
    for table in tables:
        namespace, dot, name = table.partition(".")
        row = conn.execute(
            """
            SELECT c.oid, n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relkind = 'p',
              (SELECT pn.nspname || '.' || p.relname FROM pg_inherits i
               JOIN pg_class p ON p.oid = i.inhparent
               JOIN pg_namespace pn ON pn.oid = p.relnamespace
               WHERE c.relispartition AND i.inhrelid = c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND CASE WHEN %(bare)s
              THEN c.oid = to_regclass(quote_ident(%(table)s))
              ELSE n.nspname = %(namespace)s AND c.relname = %(name)s END
            """,
            {"bare": not dot, "table": table, "namespace": namespace, "name": name},
        ).fetchone()
        if row is not None:
            found[int(row[0])] = (str(row[1]), str(row[2]), str(row[3]), bool(row[4]), row[5] or "")
    views, dependents = _reach(conn, list(found))
    result: dict[str, TableObjects] = {}
    for oid, (namespace, name, owner, partitioned, parent) in found.items():
        objects = TableObjects(
            namespace=namespace,
            name=name,
            owner=owner,
            partitioned=partitioned,
            partition_of=parent,
            columns=_names(
                conn,
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                oid,
            ),
            defaults=_names(
                conn,
                "SELECT a.attname FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = %s "
                "ORDER BY a.attnum",
                oid,
            ),
            constraints=_names(
                conn, "SELECT conname FROM pg_constraint WHERE conrelid = %s ORDER BY 1", oid
            ),
            indexes=_names(
                conn,
                "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = %s ORDER BY 1",
                oid,
            ),
            sequences=_qualified(
                conn,
                """
                SELECT sn.nspname, s.relname FROM pg_depend d
                JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                JOIN pg_namespace sn ON sn.oid = s.relnamespace
                WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = %s AND d.deptype IN ('a', 'i')
                ORDER BY 1, 2
                """,
                oid,
            ),
            triggers=_names(
                conn,
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal "
                "AND tgname NOT LIKE 'phasegate\\_capture\\_%%' ORDER BY 1",
                oid,
            ),
            policies=_names(
                conn, "SELECT polname FROM pg_policy WHERE polrelid = %s ORDER BY 1", oid
            ),
            rules=_names(
                conn,
                "SELECT rulename FROM pg_rewrite WHERE ev_class = %s AND rulename <> '_RETURN' "
                "ORDER BY 1",
                oid,
            ),
            statistics=_qualified(
                conn,
                "SELECT n.nspname, s.stxname FROM pg_statistic_ext s "
                "JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.stxrelid = %s ORDER BY 1, 2",
                oid,
            ),
            views=views[oid],
            dependents=dependents[oid],
        )
        result[objects.table] = objects
    return result


def _view_objects(conn: psycopg.Connection[Any], oid: int) -> ViewObjects:
    row = conn.execute(
        "SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    assert row is not None  # read in the same transaction that found it
    return ViewObjects(
        namespace=str(row[0]),
        name=str(row[1]),
        owner=str(row[2]),
        columns=_names(
            conn,
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            oid,
        ),
        defaults=_names(
            conn,
            "SELECT a.attname FROM pg_attrdef d JOIN pg_attribute a "
            "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = %s "
            "ORDER BY a.attnum",
            oid,
        ),
        rules=_names(conn, "SELECT rulename FROM pg_rewrite WHERE ev_class = %s ORDER BY 1", oid),
        triggers=_names(
            conn,
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal ORDER BY 1",
            oid,
        ),
    )


def _names(conn: psycopg.Connection[Any], query: str, oid: int) -> list[str]:
    return [str(row[0]) for row in conn.execute(query.encode(), (oid,))]


def _qualified(conn: psycopg.Connection[Any], query: str, oid: int) -> list[tuple[str, str]]:
    return [(str(row[0]), str(row[1])) for row in conn.execute(query.encode(), (oid,))]


def _reach(
    conn: psycopg.Connection[Any], oids: list[int]
) -> tuple[dict[int, list[ViewObjects]], dict[int, list[str]]]:
    """For each relation of `oids`, the plain views outside the set that read it (directly or
    through other views, each after the views it reads), and the other objects outside the
    set that depend on it or on one of those views."""
    readers = _readers(conn, oids)
    views = {
        oid: _view_objects(conn, oid)
        for oid in dict.fromkeys(view for found in readers.values() for view in found)
    }
    direct = _dependents(conn, [*oids, *views])
    dependents: dict[int, list[str]] = {}
    for oid in oids:
        dependents[oid] = list(direct.get(oid, []))
        for view in readers.get(oid, []):
            dependents[oid] += [
                f"{description} (through view {views[view].view})"
                for description in direct.get(view, [])
            ]
    return {oid: [views[view] for view in readers.get(oid, [])] for oid in oids}, dependents


def _readers(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, list[int]]:
    """For each relation of `oids`, the plain views outside the set whose query reads it, its
    row type or its owned sequences, or reads such a view: deepest last, so that each comes
    after the views it reads. A rule of a view counts as the view's query does: DROP VIEW
    takes it along and the archive has it."""
    if not oids:
        return {}
    rows = conn.execute(
        """
        WITH RECURSIVE ours AS (SELECT unnest(%(oids)s::oid[]) AS oid),
        refs AS (
          SELECT 'pg_class'::regclass AS refclass, oid AS ref, oid AS tab FROM ours
          UNION ALL SELECT 'pg_class'::regclass, d.objid, d.refobjid FROM pg_depend d
            JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT oid FROM ours)
          UNION ALL SELECT 'pg_type'::regclass, c.reltype, c.oid
            FROM pg_class c WHERE c.oid IN (SELECT oid FROM ours)
          UNION ALL SELECT 'pg_type'::regclass, t.typarray, c.oid
            FROM pg_class c JOIN pg_type t ON t.oid = c.reltype
            WHERE c.oid IN (SELECT oid FROM ours) AND t.typarray <> 0
        ),
        readers(tab, oid, depth) AS (
          SELECT DISTINCT r.tab, w.ev_class, 1
          FROM refs r
          JOIN pg_depend d ON d.refclassid = r.refclass AND d.refobjid = r.ref
            AND d.classid = 'pg_rewrite'::regclass AND d.deptype = 'n'
          JOIN pg_rewrite w ON w.oid = d.objid
          JOIN pg_class v ON v.oid = w.ev_class AND v.relkind = 'v'
          WHERE w.ev_class NOT IN (SELECT oid FROM ours)
          UNION
          SELECT r.tab, w.ev_class, r.depth + 1
          FROM readers r
          JOIN pg_class rv ON rv.oid = r.oid
          JOIN pg_type rt ON rt.oid = rv.reltype
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.deptype = 'n'
            AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = rv.oid)
                 OR (d.refclassid = 'pg_type'::regclass
                     AND d.refobjid IN (rv.reltype, rt.typarray)))
          JOIN pg_rewrite w ON w.oid = d.objid
          JOIN pg_class v ON v.oid = w.ev_class AND v.relkind = 'v'
          WHERE w.ev_class <> r.oid AND w.ev_class NOT IN (SELECT oid FROM ours)
            AND r.depth < 100
        )
        SELECT r.tab, r.oid FROM readers r
        JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
        GROUP BY r.tab, r.oid, n.nspname, c.relname
        ORDER BY r.tab, max(r.depth), n.nspname, c.relname
        """,
        {"oids": oids},
    ).fetchall()
    result: dict[int, list[int]] = {}
    for tab, oid in rows:
        result.setdefault(int(tab), []).append(int(oid))
    return result


def _dependents(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, list[str]]:
    """For each relation, the objects outside the set that depend on it, its row type or its
    owned sequences, in words: `view s.v`, `the foreign key f of table s.t`, `partition s.p`,
    or PostgreSQL's own description. A partition counts although DROP TABLE would take it
    without CASCADE: it is another table."""
    if not oids:
        return {}
    rows = conn.execute(
        """
        WITH ours AS (SELECT unnest(%(oids)s::oid[]) AS oid),
        seqs AS (
          SELECT d.objid AS oid, d.refobjid AS tab FROM pg_depend d
          JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
            AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT oid FROM ours)
        ),
        refs AS (
          SELECT 'pg_class'::regclass AS refclass, oid AS ref, oid AS tab FROM ours
          UNION ALL SELECT 'pg_class'::regclass, oid, tab FROM seqs
          UNION ALL SELECT 'pg_type'::regclass, c.reltype, c.oid
            FROM pg_class c WHERE c.oid IN (SELECT oid FROM ours)
          UNION ALL SELECT 'pg_type'::regclass, t.typarray, c.oid
            FROM pg_class c JOIN pg_type t ON t.oid = c.reltype
            WHERE c.oid IN (SELECT oid FROM ours) AND t.typarray <> 0
        ),
        deps AS (
          SELECT DISTINCT r.tab, d.classid, d.objid, d.objsubid
          FROM refs r JOIN pg_depend d ON d.refclassid = r.refclass AND d.refobjid = r.ref
          WHERE d.deptype = 'n' OR (d.deptype = 'a' AND d.classid = 'pg_class'::regclass
            AND EXISTS (SELECT 1 FROM pg_inherits i
                        WHERE i.inhrelid = d.objid AND i.inhparent = d.refobjid))
        )
        SELECT DISTINCT d.tab,
          CASE
            WHEN d.classid = 'pg_rewrite'::regclass AND v.relkind IN ('v', 'm') THEN
              format('%%s %%s.%%s',
                     CASE v.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END,
                     vn.nspname, v.relname)
            WHEN d.classid = 'pg_constraint'::regclass AND k.contype = 'f' THEN
              format('the foreign key %%s of table %%s.%%s', k.conname, kn.nspname, kt.relname)
            WHEN d.objsubid = 0 AND rel.relkind IN ('r', 'p', 'f') THEN
              format('%%s %%s.%%s',
                     CASE WHEN rel.relispartition THEN 'partition'
                          WHEN rel.relkind = 'f' THEN 'foreign table' ELSE 'table' END,
                     reln.nspname, rel.relname)
            ELSE pg_describe_object(d.classid, d.objid, d.objsubid)
          END
        FROM deps d
        LEFT JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid
        LEFT JOIN pg_class v ON v.oid = w.ev_class
        LEFT JOIN pg_namespace vn ON vn.oid = v.relnamespace
        LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid
        LEFT JOIN pg_class kt ON kt.oid = k.conrelid
        LEFT JOIN pg_namespace kn ON kn.oid = kt.relnamespace
        LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
        LEFT JOIN pg_trigger tg ON d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid
        LEFT JOIN pg_policy po ON d.classid = 'pg_policy'::regclass AND po.oid = d.objid
        LEFT JOIN pg_statistic_ext st
          ON d.classid = 'pg_statistic_ext'::regclass AND st.oid = d.objid
        LEFT JOIN pg_index ix ON d.classid = 'pg_class'::regclass AND ix.indexrelid = d.objid
        LEFT JOIN pg_class rel ON d.classid = 'pg_class'::regclass AND rel.oid = d.objid
        LEFT JOIN pg_namespace reln ON reln.oid = rel.relnamespace
        WHERE NOT coalesce(
          (d.classid = 'pg_class'::regclass
             AND (d.objid IN (SELECT oid FROM ours) OR d.objid IN (SELECT oid FROM seqs)
                  OR ix.indrelid IN (SELECT oid FROM ours)))
          OR w.ev_class IN (SELECT oid FROM ours)
          OR k.conrelid IN (SELECT oid FROM ours)
          OR ad.adrelid IN (SELECT oid FROM ours)
          OR tg.tgrelid IN (SELECT oid FROM ours)
          OR po.polrelid IN (SELECT oid FROM ours)
          OR st.stxrelid IN (SELECT oid FROM ours),
          false)
        ORDER BY 1, 2
        """,
        {"oids": oids},
    ).fetchall()
    result: dict[int, list[str]] = {}
    for tab, description in rows:
        result.setdefault(int(tab), []).append(str(description))
    return result


# --- the archive's entries of those tables ------------------------------------------------


def select_entries(listing: str, at_backup: dict[str, TableObjects]) -> str:
    """The lines of `pg_restore --list` output that restore `at_backup`'s tables: the table,
    its data (and its attachment as a partition), columns' defaults, constraints (a foreign
    key only where its own table is restored), indexes, triggers (never a capture trigger),
    policies, rules, statistics, owned sequences with their values, and comments, grants and
    security labels on all of these; then the views that read them, with their columns'
    defaults, rules, triggers, comments, grants and security labels.

    A line reads `id; tableoid oid TYPE schema tag owner`; TYPE and tag may hold spaces
    (`FK CONSTRAINT public orders orders_customer_fkey phasegate`), so each wanted entry is
    matched whole. Names in comment and grant tags are quoted as pg_dump quotes them. Lines
    stay in the archive's order, which creates what a view reads before the view."""
    kept, missing_tables, missing_views = _selection(listing, at_backup)
    if missing_tables or missing_views:
        raise _not_in_backup(missing_tables, missing_views)
    return kept


def _selection(
    listing: str, at_backup: dict[str, TableObjects]
) -> tuple[str, list[str], list[str]]:
    """`select_entries`' lines, and the tables and views the listing has no entry for."""
    wanted: set[tuple[str, str]] = set()
    owners: set[str] = set()
    required: dict[tuple[str, str], str] = {}
    views: dict[str, ViewObjects] = {}
    for objects in at_backup.values():
        owners.add(objects.owner)
        wanted.update(_entries(objects))
        for desc in ("TABLE",) if objects.partitioned else ("TABLE", "TABLE DATA"):
            required[(desc, f"{objects.namespace} {objects.name}")] = objects.table
        views.update((view.view, view) for view in objects.views)
    for view in views.values():
        owners.add(view.owner)
        wanted.update(_view_entries(view))
    # A partition restored without its parent is attached last, once its own indexes exist:
    # attaching then adopts them for the parent's indexes instead of building new ones.
    lone = [t for t in at_backup.values() if t.partition_of and t.partition_of not in at_backup]
    attach_last = {("TABLE ATTACH", f"{t.namespace} {t.name}") for t in lone}
    wanted -= {("INDEX ATTACH", f"{t.namespace} {index}") for t in lone for index in t.indexes}
    kept: list[str] = []
    last: list[str] = []
    seen: set[tuple[str, str]] = set()
    for line in listing.splitlines():
        entry = _toc_entry(line, owners)
        if entry is None:
            continue
        desc, named = entry
        match = next((candidate for candidate in named if (desc, candidate) in wanted), None)
        if match is None:
            continue
        (last if (desc, match) in attach_last else kept).append(line)
        seen.add((desc, match))
    kept += last
    missing_tables = sorted({table for key, table in required.items() if key not in seen})
    missing_views = sorted(
        name
        for name, view in views.items()
        if ("VIEW", f"{view.namespace} {view.name}") not in seen
    )
    return "".join(f"{line}\n" for line in kept), missing_tables, missing_views


def _not_in_backup(tables: list[str], views: list[str]) -> MigrationError:
    if tables:
        return MigrationError(
            f"the backup has no table or data for {', '.join(tables)}: it was not taken with "
            "those tables in it; restore the database from it by hand or skip this undo"
        )
    return MigrationError(
        f"the backup has no {'view' if len(views) == 1 else 'views'} {_words(views)}, though "
        "the tables stored with it say the restored tables had them: it was not taken with "
        "those tables; restore the database from it by hand or skip this undo"
    )


def _toc_entry(line: str, owners: set[str]) -> tuple[str, list[str]] | None:
    """A listing line's TYPE and its possible `schema tag` readings (the owner is the last
    word, or one of the tables' owners when that has spaces); None for comments."""
    found = _TOC_LINE.match(line)
    if found is None:
        return None
    rest = found.group(4)
    desc = next((d for d in _ENTRY_TYPES if rest.startswith(f"{d} ")), None)
    if desc is None:
        return None
    named = rest[len(desc) + 1 :]
    readings = [named.rsplit(" ", 1)[0]] if " " in named else []
    readings += [named[: -len(owner) - 1] for owner in owners if named.endswith(f" {owner}")]
    return desc, readings


def _entries(objects: TableObjects) -> Iterator[tuple[str, str]]:
    """(TYPE, `schema tag`) of every entry that belongs to the table."""
    schema, table = objects.namespace, objects.name
    yield "TABLE", f"{schema} {table}"
    yield "TABLE DATA", f"{schema} {table}"
    yield "TABLE ATTACH", f"{schema} {table}"  # as a partition of its parent
    yield "ROW SECURITY", f"{schema} {table}"
    for column in objects.defaults:
        yield "DEFAULT", f"{schema} {table} {column}"
    for constraint in objects.constraints:
        for desc in ("CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT"):
            yield desc, f"{schema} {table} {constraint}"
    for trigger in objects.triggers:
        if not trigger.startswith(CAPTURE_TRIGGER_PREFIX):
            yield "TRIGGER", f"{schema} {table} {trigger}"
    for policy in objects.policies:
        yield "POLICY", f"{schema} {table} {policy}"
    for rule in objects.rules:
        yield "RULE", f"{schema} {table} {rule}"
    for index in objects.indexes:
        yield "INDEX", f"{schema} {index}"
        yield "INDEX ATTACH", f"{schema} {index}"  # to its parent's partitioned index
    for stat_schema, stat in objects.statistics:
        yield "STATISTICS", f"{stat_schema} {stat}"
    for seq_schema, seq in objects.sequences:
        for desc in ("SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET"):
            yield desc, f"{seq_schema} {seq}"
    # Comments, grants and labels name their object in pg_dump's quoting.
    described: list[tuple[str, str]] = [(schema, f"TABLE {q}") for q in _quoted(table)]
    for q_table in _quoted(table):
        described += [
            (schema, f"COLUMN {q_table}.{q}") for column in objects.columns for q in _quoted(column)
        ]
        for kind, names in (
            ("CONSTRAINT", objects.constraints),
            ("TRIGGER", [t for t in objects.triggers if not t.startswith(CAPTURE_TRIGGER_PREFIX)]),
            ("POLICY", objects.policies),
            ("RULE", objects.rules),
        ):
            described += [
                (schema, f"{kind} {q} ON {q_table}") for name in names for q in _quoted(name)
            ]
    described += [(schema, f"INDEX {q}") for index in objects.indexes for q in _quoted(index)]
    described += [(s, f"STATISTICS {q}") for s, stat in objects.statistics for q in _quoted(stat)]
    described += [(s, f"SEQUENCE {q}") for s, seq in objects.sequences for q in _quoted(seq)]
    for where, tag in described:
        for desc in ("COMMENT", "ACL", "SECURITY LABEL"):
            yield desc, f"{where} {tag}"


def _view_entries(view: ViewObjects) -> Iterator[tuple[str, str]]:
    """(TYPE, `schema tag`) of every entry that belongs to the view."""
    schema, name = view.namespace, view.name
    yield "VIEW", f"{schema} {name}"
    for column in view.defaults:
        yield "DEFAULT", f"{schema} {name} {column}"
    for rule in view.rules:  # `_RETURN` only where pg_dump had to split a view from its query
        yield "RULE", f"{schema} {name} {rule}"
    for trigger in view.triggers:
        yield "TRIGGER", f"{schema} {name} {trigger}"
    described: list[str] = []
    for q_view in _quoted(name):
        described += [f"VIEW {q_view}", f"TABLE {q_view}"]  # grants name a view a TABLE
        described += [f"COLUMN {q_view}.{q}" for column in view.columns for q in _quoted(column)]
        for kind, names in (("RULE", view.rules), ("TRIGGER", view.triggers)):
            described += [f"{kind} {q} ON {q_view}" for item in names for q in _quoted(item)]
    for tag in described:
        for desc in ("COMMENT", "ACL", "SECURITY LABEL"):
            yield desc, f"{schema} {tag}"


def _quoted(name: str) -> list[str]:
    """How pg_dump may write a name in a tag: bare when it is a plain lower-case word (quoted
    if it is a keyword, which depends on pg_dump's version, so both), else double-quoted."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return [name, f'"{name}"']
    return ['"' + name.replace('"', '""') + '"']


# --- running pg_restore on a streamed archive ----------------------------------------------


def pg_restore_from_stream(
    pg_restore: str, write_archive: Callable[[IO[bytes]], None]
) -> RunPgRestore:
    """A `RunPgRestore` that starts `pg_restore <args>` reading the archive from its stdin,
    which `write_archive` fills from a helper thread (pg_restore may stop reading early, as
    `--list` does: the broken pipe that follows is expected). A failure of `write_archive`
    is raised as it is; pg_restore's is a `MigrationError` with its message."""

    def run(args: list[str]) -> Iterator[bytes]:
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                [pg_restore, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            assert process.stdin is not None
            assert process.stdout is not None
            feeding = _Feeder(process.stdin, write_archive)
            try:
                yield from process.stdout
                process.stdout.close()
                returncode = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                feeding.join()
            feeding.raise_failure()
            if returncode != 0:
                stderr.seek(0)
                message = without_row_values(stderr.read()[-4000:].decode(errors="replace"))
                raise MigrationError(
                    f"pg_restore {' '.join(a for a in args if not a.startswith('/'))} failed "
                    f"({returncode}): {message.strip()[-1500:]}"
                )

    return run


class _Feeder:
    """Writes the archive into pg_restore's stdin from a thread, keeping what went wrong."""

    def __init__(self, stdin: IO[bytes], write_archive: Callable[[IO[bytes]], None]) -> None:
        self._stdin = stdin
        self._write_archive = write_archive
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._write_archive(self._stdin)
        except BrokenPipeError:
            pass  # pg_restore read what it needed, or failed: its exit code says which
        except BaseException as err:
            self._failure = err
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._stdin.close()

    def join(self) -> None:
        self._thread.join()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


# --- the restore ---------------------------------------------------------------------------


def restore_tables(
    conn: psycopg.Connection[Any],
    *,
    run_pg_restore: RunPgRestore,
    at_backup: dict[str, TableObjects],
    drop_now: list[str],
    on_progress: Callable[[str], None],
    progress_bytes: int = PROGRESS_BYTES,
) -> int:
    """Put `at_backup`'s tables back as the archive holds them; returns the rows restored.

    `conn` must be inside a transaction the caller opened (`conn.info.transaction_status` is
    INTRANS, e.g. within `with conn.transaction():` or after a statement without autocommit):
    the restore runs in a savepoint of it, so on any failure the savepoint is rolled back and
    the caller's transaction is left as it was and still usable; on success nothing is
    committed, the caller commits or rolls back.

    `at_backup` is `table_objects` of the touched tables taken with the backup (stored beside
    it); `drop_now` names the touched tables as they are now, those the migration created or
    renamed included. The caller's statement_timeout bounds each statement, the COPY of the
    largest table and its index builds included, and `conn.cancel()` from another thread
    stops the one running.

    Plain views that read the restored tables (directly or through other views) hold no
    data: they are dropped and created again as `at_backup` and the archive have them, with
    their grants, comments, rules and triggers. A view in `at_backup` that exists now but
    reads none of the tables any more is put back as it was too.

    It refuses (MigrationError, before changing anything) when anything else outside the
    restored tables depends on one of them or on one of those views, now or at the backup
    (materialized views, other tables' foreign keys, partitions, other tables' defaults on
    their sequences), or when a view that reads them now cannot be created again from the
    archive (it did not exist at the backup). Otherwise it drops (no CASCADE) those views,
    then `drop_now` and every `at_backup` table that exists now, replays the archive's
    entries of `at_backup`'s tables and views, then moves each owned sequence to the further
    of its restored value and its value before the drop. The session settings pg_restore's
    SQL makes are local to the savepoint's work and put back afterwards; the caller's
    timeouts stay in force.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise ValueError("restore_tables needs a connection inside an open transaction")
    for objects in at_backup.values():
        _refuse(objects.table, objects.dependents, when="at the backup")
    to_drop = list(dict.fromkeys([*drop_now, *at_backup]))
    now = table_objects(conn, to_drop)
    selected, missing_tables, missing_views = "", list[str](), list[str]()
    if at_backup:
        listing = b"".join(run_pg_restore(["--list"])).decode("utf-8", errors="surrogateescape")
        selected, missing_tables, missing_views = _selection(listing, at_backup)
    at_backup_views = {view.view for t in at_backup.values() for view in t.views}
    recreated = at_backup_views - set(missing_views)
    for objects in now.values():
        _refuse(
            objects.table,
            [
                *objects.dependents,
                *(f"view {v.view}" for v in objects.views if v.view not in recreated),
            ],
            when="now",
        )
    views = _views_to_drop(conn, now, at_backup_views, recreated)
    if missing_tables or missing_views:
        raise _not_in_backup(missing_tables, missing_views)
    with conn.transaction(savepoint_name="phasegate_restore_tables"):
        before = _sequence_values(conn, [seq for t in now.values() for seq in t.sequences])
        if views:
            names = ", ".join(v.view for v in views)
            on_progress(f"dropping views {names}")
            _execute(
                conn,
                sql.SQL("DROP VIEW {}").format(
                    sql.SQL(", ").join(sql.Identifier(v.namespace, v.name) for v in views)
                ),
                f"dropping views {names}",
            )
        if now:
            on_progress(f"dropping {', '.join(now)}")
            _execute(
                conn,
                sql.SQL("DROP TABLE {}").format(
                    sql.SQL(", ").join(sql.Identifier(t.namespace, t.name) for t in now.values())
                ),
                f"dropping {', '.join(now)}",
            )
        if not at_backup:
            return 0
        rows = _replay(conn, run_pg_restore, selected, on_progress, progress_bytes)
        restored = [seq for t in at_backup.values() for seq in t.sequences]
        _advance_sequences(conn, before, _sequence_values(conn, restored))
    return rows


def _views_to_drop(
    conn: psycopg.Connection[Any],
    now: dict[str, TableObjects],
    at_backup_views: set[str],
    recreated: set[str],
) -> list[ViewObjects]:
    """The views to drop before the tables, each before the views it reads: those reading the
    tables now, and the backup's views that exist now but read none of the tables any more
    (they are created again from the archive, so they must go first), with their readers.
    Refuses when one of the latter has a reader that cannot be created again, or another
    dependent."""
    views = {view.view: view for t in now.values() for view in t.views}
    elsewhere: dict[int, str] = {}
    for name in sorted(at_backup_views - set(views)):
        namespace, _, relname = name.partition(".")
        if (oid := _view_oid(conn, namespace, relname)) is not None:
            elsewhere[oid] = name
    readers, dependents = _reach(conn, list(elsewhere))
    for oid, name in elsewhere.items():
        _refuse(
            f"view {name}",
            [
                *dependents[oid],
                *(f"view {v.view}" for v in readers[oid] if v.view not in recreated),
            ],
            when="now",
        )
        views.update((v.view, v) for v in [_view_objects(conn, oid), *readers[oid]])
    return _readers_first(conn, list(views.values()))


def _readers_first(conn: psycopg.Connection[Any], views: list[ViewObjects]) -> list[ViewObjects]:
    """`views` ordered so that each comes before the views it reads."""
    oids: dict[int, ViewObjects] = {}
    for view in views:
        if (oid := _view_oid(conn, view.namespace, view.name)) is not None:
            oids[oid] = view
    edges = conn.execute(
        """
        SELECT DISTINCT c.oid, w.ev_class
        FROM pg_class c JOIN pg_type t ON t.oid = c.reltype
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.deptype = 'n'
          AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid)
               OR (d.refclassid = 'pg_type'::regclass
                   AND d.refobjid IN (c.reltype, t.typarray)))
        JOIN pg_rewrite w ON w.oid = d.objid
        WHERE c.oid = ANY(%(oids)s::oid[]) AND w.ev_class = ANY(%(oids)s::oid[])
          AND w.ev_class <> c.oid
        """,
        {"oids": list(oids)},
    ).fetchall()
    readers: dict[int, set[int]] = {oid: set() for oid in oids}
    for read, reader in edges:
        readers[int(read)].add(int(reader))
    return [oids[oid] for oid in graphlib.TopologicalSorter(readers).static_order()]


def _view_oid(conn: psycopg.Connection[Any], namespace: str, name: str) -> int | None:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'v' AND n.nspname = %s AND c.relname = %s",
        (namespace, name),
    ).fetchone()
    return None if row is None else int(row[0])


def _refuse(what: str, dependents: list[str], *, when: str) -> None:
    if dependents:
        raise MigrationError(
            f"cannot restore {what} from the backup: {_words(dependents)} "
            f"{'depends' if len(dependents) == 1 else 'depend'} on it ({when}), and "
            "restoring it would drop them; give every migration script a down script "
            "(NNN_name.down.sql) so the undo runs those instead"
        )


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _replay(
    conn: psycopg.Connection[Any],
    run_pg_restore: RunPgRestore,
    selected: str,
    on_progress: Callable[[str], None],
    progress_bytes: int,
) -> int:
    fd, list_file = tempfile.mkstemp(prefix="phasegate-restore-", suffix=".list")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(selected)
        lines = run_pg_restore(["-L", list_file, "-f", "-"])
        try:
            return _ScriptRunner(conn, on_progress, progress_bytes).run(lines)
        finally:
            close = getattr(lines, "close", None)
            if callable(close):
                close()
    finally:
        os.unlink(list_file)


class _ScriptRunner:
    """Executes pg_restore's SQL script on the caller's connection: statements one at a time
    (complete when the SQL scanner ends on a top-level `;`), COPY blocks streamed in chunks,
    session settings made transaction-local and put back at the end."""

    def __init__(
        self, conn: psycopg.Connection[Any], on_progress: Callable[[str], None], every: int
    ) -> None:
        self._conn = conn
        self._cursor = conn.cursor()
        self._on_progress = on_progress
        self._every = every
        self._entry = "the backup's SQL"
        self._saved: dict[str, str] = {}

    def run(self, script: Iterator[bytes]) -> int:
        lines = iter(script)  # COPY blocks are read from the same position
        rows = 0
        statement: list[bytes] = []
        for line in lines:
            if not statement:
                if header := _ENTRY_HEADER.match(line.rstrip(b"\r\n")):
                    name, kind, schema = (
                        part.decode(errors="replace") for part in header.groups()[:3]
                    )
                    self._entry = f"{kind} {name} ({schema})"
                    self._on_progress(f"restoring {self._entry}")
                    continue
                if not line.strip() or line.startswith(b"--"):
                    continue
                if line.startswith(b"\\"):
                    if line.startswith(_PSQL_COMMANDS):
                        continue
                    raise MigrationError(
                        f"pg_restore's script for {self._entry} has a psql command "
                        f"{line.split()[0].decode(errors='replace')}, which a restore into a "
                        "transaction cannot run"
                    )
            statement.append(line)
            if line.rstrip().endswith(b";") and _complete(b"".join(statement)):
                text = b"".join(statement)
                statement = []
                if _COPY.match(text):
                    rows += self._copy(text, lines)
                else:
                    self._statement(text)
        if statement:
            raise MigrationError(
                f"pg_restore's script ended inside a statement of {self._entry}; the archive "
                "may be cut short"
            )
        for name, value in self._saved.items():
            self._execute(b"SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
        return rows

    def _statement(self, text: bytes) -> None:
        if setting := _SET.match(text):
            name = setting.group(1).decode()
            if name in _CALLERS_SETTINGS:
                return
            self._save(name)
            text = b"SET LOCAL " + text[len(b"SET ") :]
        elif setting := _SET_CONFIG.match(text):
            self._save(setting.group(1).decode())
            text = text[: text.rindex(b"false")] + b"true);"
        elif text.lstrip().upper().startswith((b"SET ", b"RESET ")):
            raise MigrationError(
                f"pg_restore's script for {self._entry} changes a session setting in an "
                "unexpected way; restore this backup by hand"
            )
        self._execute(text)

    def _save(self, name: str) -> None:
        if name not in self._saved:
            row = self._cursor.execute("SELECT current_setting(%s)", (name,)).fetchone()
            assert row is not None
            self._saved[name] = str(row[0])

    def _copy(self, text: bytes, lines: Iterator[bytes]) -> int:
        """Stream one COPY block to the server, at most COPY_CHUNK_BYTES held at a time."""
        chunk: list[bytes] = []
        size = total = count = 0
        reported = 0
        ended = False
        try:
            with self._cursor.copy(text.rstrip().removesuffix(b";")) as copy:
                for line in lines:
                    if line.rstrip(b"\r\n") == _END_OF_COPY:
                        ended = True
                        break
                    chunk.append(line)
                    size += len(line)
                    count += 1
                    if size >= COPY_CHUNK_BYTES:
                        copy.write(b"".join(chunk))
                        total += size
                        chunk, size = [], 0
                        if total - reported >= self._every:
                            reported = total
                            self._on_progress(
                                f"restoring {self._entry}: {total >> 20} MB, {count} rows so far"
                            )
                if not ended:
                    raise MigrationError(
                        f"pg_restore's data for {self._entry} ended without its end mark; the "
                        "archive may be cut short"
                    )
                if chunk:
                    copy.write(b"".join(chunk))
        except psycopg.Error as err:
            raise MigrationError(
                f"restoring {self._entry} from the backup failed: {describe(err)}"
            ) from None
        self._on_progress(f"restored {self._entry}: {count} rows")
        return self._cursor.rowcount if self._cursor.rowcount >= 0 else count

    def _execute(self, text: bytes, params: tuple[Any, ...] | None = None) -> None:
        try:
            self._cursor.execute(text, params)
        except psycopg.Error as err:
            raise MigrationError(
                f"restoring {self._entry} from the backup failed: {describe(err)}"
            ) from None


def _complete(text: bytes) -> bool:
    """Whether `text` ends a statement: its last token is a `;` outside any parentheses, and
    no string, quoted name or comment is left open."""
    try:
        # Latin-1 keeps every byte a character: quotes and `;` are ASCII in every server
        # encoding, so only the tokens' boundaries matter here.
        tokens = pg_parser.scan(text.decode("latin-1"))
    except pg_parser.ParseError:
        return False
    depth = 0
    for token in tokens:
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
    return bool(tokens) and tokens[-1].name == "ASCII_59" and depth == 0


# --- sequences ----------------------------------------------------------------------------


def _sequence_values(
    conn: psycopg.Connection[Any], sequences: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int | None, int]]:
    """Each existing sequence's last value handed out (None before the first) and increment."""
    values: dict[tuple[str, str], tuple[int | None, int]] = {}
    for schema, name in sequences:
        row = conn.execute(
            "SELECT last_value, increment_by FROM pg_sequences "
            "WHERE schemaname = %s AND sequencename = %s",
            (schema, name),
        ).fetchone()
        if row is not None:
            values[(schema, name)] = (None if row[0] is None else int(row[0]), int(row[1]))
    return values


def _advance_sequences(
    conn: psycopg.Connection[Any],
    before: dict[tuple[str, str], tuple[int | None, int]],
    restored: dict[tuple[str, str], tuple[int | None, int]],
) -> None:
    """Never hand out again a value the sequence gave before the drop: rows written since the
    backup may be carried over with those ids."""
    for key, (value, _) in restored.items():
        earlier = before.get(key, (None, 0))[0]
        increment = restored[key][1]
        if earlier is None:
            continue
        if value is None or (earlier > value if increment > 0 else earlier < value):
            _execute(
                conn,
                sql.SQL("SELECT pg_catalog.setval({}, {}, true)").format(
                    sql.Literal(sql.Identifier(*key).as_string(conn)), sql.Literal(earlier)
                ),
                f"moving sequence {'.'.join(key)} past its values before the restore",
            )


# --- errors -------------------------------------------------------------------------------


def _execute(conn: psycopg.Connection[Any], query: sql.Composed, doing: str) -> None:
    try:
        conn.execute(query)
    except psycopg.Error as err:
        raise MigrationError(f"{doing} failed: {describe(err)}") from None
