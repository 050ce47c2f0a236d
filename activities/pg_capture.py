"""The writes guard of a migration: which tables a migration touches, a trigger-fed record of
every write to them, and what reverting the migration would lose of the live writes.

Plain psycopg 3 functions on an open connection, run by the PostgreSQL activities inside their
own transactions. A function that needs several statements to stand or fall together runs
them in `conn.transaction()`: a savepoint in the caller's transaction, or a transaction of its
own on an idle autocommit connection.

How a write is recorded: each guarded table carries an AFTER INSERT/UPDATE/DELETE row trigger
that appends (table, op, old row, new row, by_migration) as jsonb to
`phasegate_capture.<capture>`. The trigger function renders rows with fixed output settings
(UTC, ISO intervals, shortest exact floats, hex bytea), and so does every comparison here, so
an image and a row compare equal whatever the writing session's settings were. Writes of the
session `mark_migration_session` marked are the migration's own and never count as live: on a
table with a primary key they are not recorded at all (a row is its key there), elsewhere they
are recorded with `by_migration` set, to follow a row through the migration's changes.

What counts as lost (`at_risk`): of each row's live writes, the latest one. On a table with a
primary key a row is its key; without one, a write is superseded by a later write whose old
row equals its image (through at most one write of the migration in between). The latest image
of an insert or update is lost when no row of the table holds it (equal on every column the
image and the table share; a column the table no longer has makes it lost only when not
`dropped_columns_ok`); a delete is undone when a row holding the deleted image is back; every
live row of a table that is gone is lost. Without a primary key identical rows cannot be told
apart: presence is checked, not how many. A live TRUNCATE is not recorded (row triggers do not
see it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, LiteralString

import psycopg
from pglast import ast, parse_sql
from pglast.enums import DropBehavior, ObjectType
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.parser import ParseError
from psycopg import pq, sql

from schemas.migration_messages import TableLoss

CAPTURE_SCHEMA = "phasegate_capture"
MIGRATION_SETTING = "phasegate.migration"
TRIGGER_PREFIX = "phasegate_capture_"
_CAPTURE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_LOCK_KEY = "phasegate_capture"
_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'phasegate_capture') "
    "AND n.nspname NOT LIKE 'pg\\_%'"
)
# The output settings every row image is rendered with, in the trigger and when comparing.
_CANONICAL = {
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}
# While comparing: hash joins over many captured rows stay in memory (a merge join would sort
# the whole table by its rows' jsonb), and queries that run once gain nothing from compiling.
_COMPARING = {**_CANONICAL, "work_mem": "64MB", "jit": "off", "enable_mergejoin": "off"}
# TG_ARGV: the capture table's name, and `keyed` on a table with a primary key, where the
# migration's own writes are not recorded: a row is its key there, and only live writes count.
_TRIGGER_BODY = """
DECLARE
  ours boolean := coalesce(current_setting('phasegate.migration', true), '') = TG_ARGV[0];
BEGIN
  IF ours AND TG_NARGS > 1 AND TG_ARGV[1] = 'keyed' THEN
    RETURN NULL;
  END IF;
  EXECUTE format(
    'INSERT INTO phasegate_capture.%I (relid, table_name, op, old_row, new_row, by_migration) '
    'VALUES ($1, $2, $3, $4, $5, $6)', TG_ARGV[0])
  USING TG_RELID,
        TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
        left(TG_OP, 1),
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
        ours;
  RETURN NULL;
END
"""
_CREATE_TRIGGER_FUNCTION = sql.SQL(
    "CREATE OR REPLACE FUNCTION phasegate_capture.capture() RETURNS trigger "
    "LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp {settings} AS {body}"
).format(
    settings=sql.SQL(" ").join(
        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in _CANONICAL.items()
    ),
    body=sql.Literal(_TRIGGER_BODY),
)


def capture_name(launch_id: str, phase: str) -> str:
    """The capture table's name for one launch and phase: short, stable and SQL-safe."""
    return "w_" + hashlib.sha256(f"{launch_id}/{phase}".encode()).hexdigest()[:20]


# --- what a script writes, read from its text -------------------------------------------


@dataclass
class WrittenTables:
    """What a script's statements write or change, as far as its text tells.

    `tables` are named as written (lower-cased unless quoted, quoted where needed,
    `schema.table` when qualified), ready for `resolve_tables`; `indexes` are indexes dropped,
    altered or renamed, whose table only the catalog knows; `opaque` describes each statement
    whose effects the text does not show (a DO block, CALL, EXECUTE, a call of a function that
    may write, a DROP or TRUNCATE that cascades)."""

    tables: set[str] = field(default_factory=set)
    indexes: set[str] = field(default_factory=set)
    opaque: list[str] = field(default_factory=list)


# Unqualified functions known not to write any table; a function outside this list and outside
# pg_catalog may, so a statement calling one is opaque. (The sequence functions write
# sequences, not tables.)
_READ_ONLY_FUNCTION_NAMES = """
    abs age array_agg array_append array_cat array_length array_lower array_position
    array_positions array_prepend array_remove array_replace array_to_json array_to_string
    array_upper avg bit_and bit_length bit_or bool_and bool_or btrim cardinality cbrt ceil
    ceiling char_length character_length chr clock_timestamp coalesce concat concat_ws
    corr count cume_dist currval current_database current_schema current_setting
    current_user date_bin date_part date_trunc decode degrees dense_rank div encode every
    exp extract first_value floor format gen_random_uuid generate_series generate_subscripts
    greatest hashtext initcap isfinite json_agg json_array_elements json_array_length
    json_build_array json_build_object json_each json_each_text json_extract_path
    json_extract_path_text json_object json_object_agg json_object_keys json_populate_record
    json_populate_recordset json_strip_nulls json_to_record json_to_recordset json_typeof
    jsonb_agg jsonb_array_elements jsonb_array_elements_text jsonb_array_length
    jsonb_build_array jsonb_build_object jsonb_each jsonb_each_text jsonb_extract_path
    jsonb_extract_path_text jsonb_insert jsonb_object jsonb_object_agg jsonb_object_keys
    jsonb_path_exists jsonb_path_query jsonb_path_query_array jsonb_path_query_first
    jsonb_populate_record jsonb_populate_recordset jsonb_pretty jsonb_set jsonb_strip_nulls
    jsonb_to_record jsonb_to_recordset jsonb_typeof lag last_value lastval lead least left
    length ln localtime localtimestamp log log10 lower lpad ltrim make_date make_interval
    make_time make_timestamp make_timestamptz max md5 min mod nextval now nth_value ntile
    nullif octet_length overlay percent_rank percentile_cont percentile_disc pi position
    power quote_ident quote_literal quote_nullable radians random rank regexp_count
    regexp_instr regexp_like regexp_match regexp_matches regexp_replace regexp_split_to_array
    regexp_split_to_table repeat replace reverse right round row_number row_to_json rpad
    rtrim setval sha224 sha256 sha384 sha512 sign sqrt starts_with statement_timestamp
    stddev stddev_pop stddev_samp string_agg string_to_array string_to_table strpos substr
    substring sum timeofday to_char to_date to_hex to_json to_jsonb to_number to_timestamp
    transaction_timestamp translate trim trunc unnest upper uuid_generate_v4 var_pop
    var_samp variance width_bucket xmlagg
"""
_READ_ONLY_FUNCTIONS = frozenset(_READ_ONLY_FUNCTION_NAMES.split())
# Statements that name functions without calling them now (a default of a new, empty table, a
# view, a trigger or rule, a prepared statement), or only immutable ones (index expressions).
_CALLS_NOTHING_NOW = (
    ast.CreateStmt,
    ast.ViewStmt,
    ast.CreateFunctionStmt,
    ast.CreateTrigStmt,
    ast.RuleStmt,
    ast.IndexStmt,
    ast.PrepareStmt,
    ast.CommentStmt,
)
_DROPS_OF_RELATIONS = {
    ObjectType.OBJECT_TABLE,
    ObjectType.OBJECT_INDEX,
    ObjectType.OBJECT_VIEW,
    ObjectType.OBJECT_MATVIEW,
    ObjectType.OBJECT_TRIGGER,
    ObjectType.OBJECT_RULE,
    ObjectType.OBJECT_POLICY,
}
_ON_A_TABLE = {
    ObjectType.OBJECT_TRIGGER,
    ObjectType.OBJECT_RULE,
    ObjectType.OBJECT_POLICY,
}
_NEEDS_QUOTES = RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS | COL_NAME_KEYWORDS


def tables_written_by(script: str) -> WrittenTables:
    """The tables `script` writes, creates, alters, renames (both names), truncates or drops,
    by parsing it with PostgreSQL's own parser; a script it cannot parse raises ValueError with
    the parser's message. Temporary tables the script creates are left out."""
    try:
        statements = parse_sql(script)
    except ParseError as err:
        raise ValueError(f"cannot parse the script: {err}") from None
    found = WrittenTables()
    temporary: set[str] = set()
    for number, raw in enumerate(statements, start=1):
        if raw.stmt is None:
            continue
        for node in _walk(raw.stmt):
            _note(node, found, temporary)
        reason = _opaque_reason(raw.stmt)
        if reason is not None:
            found.opaque.append(f"statement {number}: {reason}")
    return found


def _walk(value: Any) -> Iterator[ast.Node]:
    if isinstance(value, ast.Node):
        yield value
        for name in value:
            yield from _walk(getattr(value, name))
    elif isinstance(value, tuple):
        for item in value:
            yield from _walk(item)


def _note(node: ast.Node, found: WrittenTables, temporary: set[str]) -> None:
    """Record what one node of a statement writes."""

    def table(rel: ast.RangeVar | None) -> None:
        if rel is None or rel.relname is None:
            return
        name = _qualified(rel.schemaname, rel.relname)
        if rel.relpersistence == "t":
            temporary.add(name)
        elif rel.schemaname is not None or name not in temporary:
            found.tables.add(name)

    match node:
        case ast.InsertStmt() | ast.UpdateStmt() | ast.DeleteStmt() | ast.MergeStmt():
            table(node.relation)
        case ast.TruncateStmt():
            for rel in node.relations or ():
                table(rel)
        case ast.CreateStmt():
            table(node.relation)
            for parent in node.inhRelations or ():
                table(parent)
        case ast.CreateTableAsStmt() if node.objtype == ObjectType.OBJECT_TABLE:
            table(node.into.rel if node.into is not None else None)
        case ast.SelectStmt() if node.intoClause is not None:
            table(node.intoClause.rel)
        case ast.IndexStmt() | ast.CreateTrigStmt() | ast.RuleStmt():
            table(node.relation)
        case ast.CreatePolicyStmt() | ast.AlterPolicyStmt():
            table(node.table)
        case ast.CopyStmt() if node.is_from:
            table(node.relation)
        case ast.AlterTableStmt() if node.objtype == ObjectType.OBJECT_TABLE:
            table(node.relation)
            for command in node.cmds or ():
                if isinstance(command, ast.AlterTableCmd) and isinstance(
                    command.def_, ast.PartitionCmd
                ):
                    table(command.def_.name)
        case ast.AlterTableStmt() if node.objtype == ObjectType.OBJECT_INDEX:
            _index(found, node.relation)
        case ast.RenameStmt():
            _renamed(node, found, table)
        case ast.AlterObjectSchemaStmt() if node.objectType == ObjectType.OBJECT_TABLE:
            table(node.relation)
            if node.relation is not None and node.relation.relname and node.newschema:
                found.tables.add(_qualified(node.newschema, node.relation.relname))
        case ast.DropStmt():
            _dropped(node, found)
        case _:
            pass


def _renamed(
    node: ast.RenameStmt, found: WrittenTables, table: Callable[[ast.RangeVar | None], None]
) -> None:
    rel = node.relation
    if rel is None or rel.relname is None:
        return
    if node.renameType == ObjectType.OBJECT_TABLE:
        table(rel)
        if node.newname:
            found.tables.add(_qualified(rel.schemaname, node.newname))
    elif node.renameType == ObjectType.OBJECT_INDEX:
        _index(found, rel)
        if node.newname:
            found.indexes.add(_qualified(rel.schemaname, node.newname))
    elif node.renameType == ObjectType.OBJECT_COLUMN:
        if node.relationType == ObjectType.OBJECT_TABLE:
            table(rel)
    elif node.renameType in {ObjectType.OBJECT_TABCONSTRAINT, *_ON_A_TABLE}:
        table(rel)


def _dropped(node: ast.DropStmt, found: WrittenTables) -> None:
    for parts in node.objects or ():
        names = [item.sval for item in parts if isinstance(item, ast.String) and item.sval]
        if not names:
            continue
        if node.removeType == ObjectType.OBJECT_TABLE:
            found.tables.add(_qualified(*_schema_and_name(names)))
        elif node.removeType == ObjectType.OBJECT_INDEX:
            found.indexes.add(_qualified(*_schema_and_name(names)))
        elif node.removeType in _ON_A_TABLE and len(names) >= 2:
            found.tables.add(_qualified(*_schema_and_name(names[:-1])))


def _schema_and_name(names: list[str]) -> tuple[str | None, str]:
    return (names[-2] if len(names) >= 2 else None), names[-1]


def _index(found: WrittenTables, rel: ast.RangeVar | None) -> None:
    if rel is not None and rel.relname is not None:
        found.indexes.add(_qualified(rel.schemaname, rel.relname))


def _opaque_reason(statement: ast.Node) -> str | None:
    """Why the statement's effects cannot be read from its text, or None when they can."""
    match statement:
        case ast.DoStmt():
            return "a DO block"
        case ast.CallStmt():
            return f"CALL {_function_name(statement.funccall)}"
        case ast.DropStmt() if (
            statement.behavior == DropBehavior.DROP_CASCADE
            and statement.removeType not in _DROPS_OF_RELATIONS
        ):
            kind = statement.removeType.name.removeprefix("OBJECT_") if statement.removeType else ""
            return f"DROP {kind} ... CASCADE"
        case ast.TruncateStmt() if statement.behavior == DropBehavior.DROP_CASCADE:
            return "TRUNCATE ... CASCADE"
        case _:
            pass
    calls_now = not isinstance(statement, _CALLS_NOTHING_NOW)
    for node in _walk(statement):
        if isinstance(node, ast.ExecuteStmt):
            return f"EXECUTE {node.name}"
        if calls_now and isinstance(node, ast.FuncCall) and not _reads_only(node):
            return f"calls {_function_name(node)}(), which may write"
    return None


def _function_parts(call: ast.FuncCall | None) -> list[str]:
    if call is None:
        return []
    return [item.sval for item in call.funcname or () if isinstance(item, ast.String) and item.sval]


def _function_name(call: ast.FuncCall | None) -> str:
    return ".".join(_function_parts(call)) or "?"


def _reads_only(call: ast.FuncCall) -> bool:
    parts = _function_parts(call)
    if len(parts) == 2:
        return parts[0] == "pg_catalog"
    return len(parts) == 1 and parts[0] in _READ_ONLY_FUNCTIONS


def _quoted(part: str) -> str:
    """`part` as an SQL identifier: bare when PostgreSQL would read it back unchanged."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", part) and part not in _NEEDS_QUOTES:
        return part
    return '"' + part.replace('"', '""') + '"'


def _qualified(schema: str | None, name: str) -> str:
    return f"{_quoted(schema)}.{_quoted(name)}" if schema else _quoted(name)


# --- what the catalog says ------------------------------------------------------------------

_IDENT = r'(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*|"(?:[^"]|"")+")'
_TABLE_NAME = re.compile(rf"^{_IDENT}(?:\.{_IDENT})?$")


def resolve_tables(conn: psycopg.Connection[Any], names: Iterable[str]) -> dict[str, str]:
    """Each name (SQL syntax: `orders`, `public."Orders"`) that is a table now, mapped to its
    `schema.table`, looked up with the session's search_path; names of no table (missing, a
    view, a temporary table) are left out. A name that is not SQL raises ValueError."""
    given = sorted(set(names))
    bad = [name for name in given if not _TABLE_NAME.match(name)]
    if bad:
        raise ValueError(
            f"not a table name: {', '.join(repr(name) for name in bad)} "
            '(write table or schema.table, double-quoted where SQL needs it: "Orders")'
        )
    rows = conn.execute(
        "SELECT given, n.nspname || '.' || c.relname FROM unnest(%s::text[]) AS given "
        "JOIN pg_class c ON c.oid = to_regclass(given) "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'",
        (given,),
    ).fetchall()
    return {str(name): str(table) for name, table in rows}


def catalog_shapes(
    conn: psycopg.Connection[Any], full: Iterable[str] | None = None
) -> dict[str, str]:
    """Every user table's `schema.table` → an md5 of its shape. Two calls around a script
    show which tables it changed.

    The tables in `full` (every table when None) are read in full: kind, columns (name,
    type, not null, default, identity, generated), constraint, index, trigger (other than
    the capture's) and rule definitions. Rendering those definitions locks the table, so
    every other table gets a shape read from the catalog alone, which waits on no lock a live
    writer holds: its columns, and the names and kinds of its constraints, indexes, triggers
    and rules."""
    names = None if full is None else sorted(set(full))
    rows = conn.execute(
        f"""
        SELECT n.nspname || '.' || c.relname, md5(CASE
          WHEN %(all)s OR (n.nspname || '.' || c.relname) = ANY(%(full)s) THEN concat_ws(E'\\n',
          c.relkind::text,
          (SELECT string_agg(format('column %%s %%s %%s %%s %%s %%s', quote_ident(a.attname),
                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity,
                    a.attgenerated), E'\\n' ORDER BY a.attnum)
           FROM pg_attribute a
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
          (SELECT string_agg(format('constraint %%s %%s', quote_ident(k.conname),
                    pg_get_constraintdef(k.oid)), E'\\n' ORDER BY k.conname)
           FROM pg_constraint k WHERE k.conrelid = c.oid),
          (SELECT string_agg(pg_get_indexdef(i.indexrelid), E'\\n'
                    ORDER BY pg_get_indexdef(i.indexrelid))
           FROM pg_index i WHERE i.indrelid = c.oid),
          (SELECT string_agg(pg_get_triggerdef(t.oid), E'\\n' ORDER BY t.tgname)
           FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
             AND t.tgname NOT LIKE 'phasegate\\_capture\\_%%'),
          (SELECT string_agg(pg_get_ruledef(r.oid), E'\\n' ORDER BY r.rulename)
           FROM pg_rewrite r WHERE r.ev_class = c.oid))
          ELSE concat_ws(E'\\n', 'light', c.relkind::text,
          (SELECT string_agg(format('column %%s %%s %%s %%s %%s %%s', quote_ident(a.attname),
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,
                    a.attidentity, a.attgenerated), E'\\n' ORDER BY a.attnum)
           FROM pg_attribute a
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
          (SELECT string_agg(format('constraint %%s %%s %%s', quote_ident(k.conname), k.contype,
                    k.conkey), E'\\n' ORDER BY k.conname)
           FROM pg_constraint k WHERE k.conrelid = c.oid),
          (SELECT string_agg(format('index %%s %%s %%s', x.relname, i.indkey, i.indisunique),
                    E'\\n' ORDER BY x.relname)
           FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = c.oid),
          (SELECT string_agg(format('trigger %%s %%s', t.tgname, t.tgtype), E'\\n'
                    ORDER BY t.tgname)
           FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
             AND t.tgname NOT LIKE 'phasegate\\_capture\\_%%'),
          (SELECT string_agg(format('rule %%s', r.rulename), E'\\n' ORDER BY r.rulename)
           FROM pg_rewrite r WHERE r.ev_class = c.oid))
          END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS.replace("%", "%%")}
        """.encode(),
        {"all": names is None, "full": names or []},
    ).fetchall()
    return {str(name): str(shape) for name, shape in rows}


WriteCounts = dict[int, int]


def write_counts(conn: psycopg.Connection[Any]) -> WriteCounts:
    """The session's not-yet-reported row writes per table (by oid): take them at the start
    of a transaction, then `tables_written_in_transaction` tells what the transaction wrote.

    PostgreSQL 15 reports a session's writes to the shared statistics at most once a second,
    between transactions, and `pg_stat_xact_user_tables` shows what is not reported yet, so it
    can hold an earlier transaction's writes too; the difference from the start cannot."""
    rows = conn.execute(
        "SELECT relid, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables"
    ).fetchall()
    return {int(relid): int(count) for relid, count in rows}


def tables_written_in_transaction(
    conn: psycopg.Connection[Any], since: Mapping[int, int]
) -> set[str]:
    """`schema.table` of the user tables this session inserted into, updated or deleted from
    since `since` (its `write_counts` at the start of the current transaction). Other
    sessions' writes never show; neither do temporary tables nor the capture tables."""
    rows = conn.execute(
        "SELECT relid, schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del "
        "FROM pg_stat_xact_user_tables "
        "WHERE schemaname <> 'phasegate_capture' AND schemaname NOT LIKE 'pg\\_%'"
    ).fetchall()
    return {str(name) for relid, name, count in rows if count > since.get(int(relid), 0)}


# --- the capture ------------------------------------------------------------------------


def _capture_table(capture: str) -> sql.Identifier:
    if not _CAPTURE_NAME.match(capture):
        raise ValueError(f"capture name {capture!r}: use lower-case letters, digits and _")
    return sql.Identifier(CAPTURE_SCHEMA, capture)


def _trigger(capture: str) -> sql.Identifier:
    return sql.Identifier(TRIGGER_PREFIX + capture)


def _schema_and_table(table: str) -> tuple[str, str]:
    schema, dot, name = table.partition(".")
    if not dot or not schema or not name:
        raise ValueError(f"{table!r}: name a table as schema.table (as resolve_tables gives it)")
    return schema, name


def install_capture(
    conn: psycopg.Connection[Any], capture: str, tables: Iterable[str]
) -> list[str]:
    """Record every write to `tables` (`schema.table`, as `resolve_tables` gives them) in
    `phasegate_capture.<capture>`; returns those that carry the capture's trigger now, sorted.
    Idempotent: the schema, table and function are made when missing, tables already guarded
    are left alone, and names of no table are skipped.

    Any role may append to the capture table (INSERT is granted to PUBLIC; nothing in it is
    readable to others): the trigger runs as the writer, and a live writer that could not
    record its write would fail."""
    target = _capture_table(capture)
    trigger = _trigger(capture)
    guarded: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS phasegate_capture")
        conn.execute("GRANT USAGE ON SCHEMA phasegate_capture TO PUBLIC")
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " relid oid NOT NULL,"
                " table_name text NOT NULL,"
                " op text NOT NULL CHECK (op IN ('I', 'U', 'D')),"
                " old_row jsonb,"
                " new_row jsonb,"
                " by_migration boolean NOT NULL,"
                " txid bigint NOT NULL DEFAULT txid_current(),"
                " at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(target)
        )
        conn.execute(sql.SQL("GRANT INSERT ON TABLE {} TO PUBLIC").format(target))
        current = _scalar(
            conn,
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('phasegate_capture.capture()')",
        )
        if current != _TRIGGER_BODY:
            conn.execute(_CREATE_TRIGGER_FUNCTION)
        for table in sorted(set(tables)):
            schema, name = _schema_and_table(table)
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid "
                " AND t.tgname = %s), "
                "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (TRIGGER_PREFIX + capture, schema, name),
            ).fetchone()
            if row is None:
                continue
            present, keyed = row
            if not present:
                arguments = [sql.Literal(capture)] + ([sql.Literal("keyed")] if keyed else [])
                # On a keyed table the migration's own writes are not recorded: the condition
                # keeps PostgreSQL from queueing a trigger event for each of them at all.
                skip_own = (
                    sql.SQL("WHEN (coalesce(current_setting({}, true), '') <> {}) ").format(
                        sql.Literal(MIGRATION_SETTING), sql.Literal(capture)
                    )
                    if keyed
                    else sql.SQL("")
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                        "{}EXECUTE FUNCTION phasegate_capture.capture({})"
                    ).format(
                        trigger,
                        sql.Identifier(schema, name),
                        skip_own,
                        sql.SQL(", ").join(arguments),
                    )
                )
            guarded.append(table)
    return guarded


def mark_migration_session(conn: psycopg.Connection[Any], capture: str) -> None:
    """Flag this session's writes as the migration's own (`by_migration`) for `capture`.
    A session-level setting: it lasts until the session ends, unless set inside a transaction
    that rolls back."""
    _capture_table(capture)
    conn.execute("SELECT set_config(%s, %s, false)", (MIGRATION_SETTING, capture))


def guarded_tables(conn: psycopg.Connection[Any], capture: str) -> set[str]:
    """`schema.table` of every table carrying the capture's trigger."""
    _capture_table(capture)
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgname = %s AND t.tgparentid = 0",
        (TRIGGER_PREFIX + capture,),
    ).fetchall()
    return {str(row[0]) for row in rows}


def remove_capture(conn: psycopg.Connection[Any], capture: str) -> None:
    """Drop the capture's trigger from every table carrying it, then its table; the function
    and the schema go with the last capture. Idempotent."""
    target = _capture_table(capture)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK_KEY,))
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE t.tgname = %s AND t.tgparentid = 0",
            (TRIGGER_PREFIX + capture,),
        ).fetchall()
        for schema, name in rows:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    _trigger(capture), sql.Identifier(schema, name)
                )
            )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        others = _scalar(
            conn,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'phasegate_capture' AND c.relkind = 'r'",
        )
        users = _scalar(
            conn,
            "SELECT count(*) FROM pg_trigger "
            "WHERE tgfoid = to_regprocedure('phasegate_capture.capture()')",
        )
        if others or users:
            return
        conn.execute("DROP FUNCTION IF EXISTS phasegate_capture.capture()")
        empty = not _scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_namespace n "
            "ON d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid "
            "WHERE n.nspname = 'phasegate_capture')",
        )
        if empty:
            conn.execute("DROP SCHEMA IF EXISTS phasegate_capture")


# --- what reverting would lose ----------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The table now holding what was captured under some (oid, name) pairs, or None when
    it is gone; a renamed table is found by its oid, one restored from a backup by its name."""

    table: tuple[str, str] | None
    relids: list[int]
    names: list[str]


def at_risk(
    conn: psycopg.Connection[Any], capture: str, *, dropped_columns_ok: bool = True
) -> dict[str, TableLoss]:
    """What the database as this transaction sees it (typically reverted, not committed)
    lacks of the live writes captured: per table written (its name when written), the rows
    whose latest live version is gone and the live deletes undone. Tables with nothing at risk
    are left out, so an empty answer means nothing would be lost."""
    losses: dict[str, TableLoss] = {}
    with _at_risk_rows(conn, capture, dropped_columns_ok=dropped_columns_ok) as filled:
        if not filled:
            return losses
        rows = conn.execute(
            "SELECT table_name, kind, count(*) FROM pg_temp.phasegate_at_risk GROUP BY 1, 2"
        ).fetchall()
    for table_name, kind, count in rows:
        loss = losses.setdefault(str(table_name), TableLoss())
        if kind == "undone":
            loss.deletes_undone += int(count)
        else:
            loss.rows_lost += int(count)
            loss.table_gone = loss.table_gone or kind == "gone"
    return losses


def save_writes(
    conn: psycopg.Connection[Any], capture: str, out: BinaryIO, *, only_at_risk: bool
) -> int:
    """Write the captured live writes to `out` as JSON lines
    `{"table", "op", "old", "new", "at"}`, oldest first: all of them, or only those whose
    latest images `at_risk` counts. Streams through a server-side cursor; returns the number of
    lines."""
    target = _capture_table(capture)
    lines = 0
    with conn.transaction(), _comparing(conn):
        if not _exists(conn, target):
            return 0
        select = sql.SQL(
            "SELECT json_build_object('table', c.table_name, 'op', c.op, 'old', c.old_row, "
            "'new', c.new_row, 'at', c.at)::text FROM {} c "
        ).format(target)
        with _at_risk_rows(conn, capture, dropped_columns_ok=True, needed=only_at_risk):
            where = (
                sql.SQL("WHERE c.id IN (SELECT capture_id FROM pg_temp.phasegate_at_risk) ")
                if only_at_risk
                else sql.SQL("WHERE NOT c.by_migration ")
            )
            with conn.cursor(name=f"phasegate_save_{capture}") as cursor:
                cursor.itersize = 2000
                cursor.execute(select + where + sql.SQL("ORDER BY c.id"))
                for (line,) in cursor:
                    out.write(str(line).encode() + b"\n")
                    lines += 1
    return lines


def load_writes_table(conn: psycopg.Connection[Any], capture: str) -> int:
    """Fill `TEMP TABLE phasegate_writes (table_name text, op text, row jsonb) ON COMMIT DROP`
    with the latest images at risk (the new row of an insert or update, the old row of a
    delete), for a migration's `carry_over.sql` to read; returns how many. Must run inside
    the caller's transaction, where the carry-over follows."""
    if conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise ValueError("load_writes_table runs inside a transaction: the table drops at commit")
    conn.execute("DROP TABLE IF EXISTS pg_temp.phasegate_writes")
    conn.execute(
        "CREATE TEMP TABLE phasegate_writes (table_name text, op text, row jsonb) ON COMMIT DROP"
    )
    with _at_risk_rows(conn, capture, dropped_columns_ok=True) as filled:
        if not filled:
            return 0
        cursor = conn.execute(
            "INSERT INTO phasegate_writes (table_name, op, row) "
            "SELECT table_name, op, image FROM pg_temp.phasegate_at_risk ORDER BY capture_id"
        )
        return cursor.rowcount


@contextmanager
def _at_risk_rows(
    conn: psycopg.Connection[Any], capture: str, *, dropped_columns_ok: bool, needed: bool = True
) -> Iterator[bool]:
    """Fill `pg_temp.phasegate_at_risk (capture_id, table_name, op, image, kind)` with the
    latest live images at risk (kind `lost`, `gone` or `undone`), yield whether there is a
    capture at all, and drop the table after."""
    target = _capture_table(capture)
    if not needed:
        yield True
        return
    with conn.transaction(), _comparing(conn):
        if not _exists(conn, target):
            yield False
            return
        conn.execute("DROP TABLE IF EXISTS pg_temp.phasegate_at_risk")
        conn.execute(
            "CREATE TEMP TABLE phasegate_at_risk (capture_id bigint NOT NULL, "
            "table_name text NOT NULL, op text NOT NULL, image jsonb, kind text NOT NULL)"
        )
        for found in _targets(conn, target):
            _fill(conn, target, found, dropped_columns_ok)
        yield True
        conn.execute("DROP TABLE IF EXISTS pg_temp.phasegate_at_risk")


def _targets(conn: psycopg.Connection[Any], capture: sql.Identifier) -> list[_Target]:
    """Group what was captured by the table holding it now."""
    rows = conn.execute(
        sql.SQL(
            "WITH pairs AS (SELECT relid, table_name, bool_or(NOT by_migration) AS live "
            "FROM {} GROUP BY 1, 2), "
            "tables AS (SELECT c.oid, n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')) "
            "SELECT p.relid, p.table_name, p.live, t.oid, t.nspname, t.relname FROM pairs p "
            "LEFT JOIN LATERAL ("
            " SELECT 0 AS rank, * FROM tables WHERE tables.oid = p.relid"
            " UNION ALL"
            " SELECT 1, * FROM tables WHERE tables.nspname || '.' || tables.relname = p.table_name"
            " ORDER BY 1 LIMIT 1) t ON true "
            "ORDER BY 1, 2"
        ).format(capture)
    ).fetchall()
    groups: dict[Any, tuple[tuple[str, str] | None, list[int], list[str], list[bool]]] = {}
    for relid, table_name, live, oid, schema, name in rows:
        key = ("at", int(oid)) if oid is not None else ("gone", int(relid))
        table = (str(schema), str(name)) if oid is not None else None
        group = groups.setdefault(key, (table, [], [], []))
        group[1].append(int(relid))
        group[2].append(str(table_name))
        group[3].append(bool(live))
    return [
        _Target(table=table, relids=relids, names=names)
        for table, relids, names, live in groups.values()
        if any(live)
    ]


# Captures of one target: the (oid, name) pairs it was written under.
_SOURCE = sql.SQL(
    "SELECT id, table_name, op, old_row, new_row, by_migration FROM {capture} "
    "WHERE {live} (relid, table_name) IN "
    "(SELECT * FROM unnest(%(relids)s::oid[], %(names)s::text[]))"
)
# The latest live images without a primary key: an insert or update until a later write
# (live, or the migration's followed by a live one) starts from its image; a delete until a
# later live write brings its image back.
_LATEST_BY_CHAIN = sql.SQL(
    "WITH src AS MATERIALIZED ({source}), "
    "hop AS (SELECT d.id, d.old_row FROM src d WHERE d.by_migration AND d.new_row IS NOT NULL "
    " AND EXISTS (SELECT 1 FROM src e WHERE NOT e.by_migration AND e.old_row = d.new_row "
    " AND e.id > d.id)), "
    "successor AS (SELECT id, old_row FROM src WHERE NOT by_migration AND old_row IS NOT NULL "
    " UNION ALL SELECT id, old_row FROM hop), "
    "latest AS ("
    " SELECT l.id, l.table_name, l.op, l.new_row AS image FROM src l"
    " WHERE NOT l.by_migration AND l.op IN ('I', 'U') AND NOT EXISTS ("
    "  SELECT 1 FROM successor s WHERE s.old_row = l.new_row AND s.id > l.id)"
    " UNION ALL"
    " SELECT d.id, d.table_name, 'D', d.old_row FROM src d"
    " WHERE NOT d.by_migration AND d.op = 'D' AND NOT EXISTS ("
    "  SELECT 1 FROM src r WHERE NOT r.by_migration AND r.new_row = d.old_row AND r.id > d.id)) "
)
_INSERT_AT_RISK = sql.SQL(
    "INSERT INTO pg_temp.phasegate_at_risk (capture_id, table_name, op, image, kind) "
)


def _fill(
    conn: psycopg.Connection[Any],
    capture: sql.Identifier,
    target: _Target,
    dropped_columns_ok: bool,
) -> None:
    params: dict[str, Any] = {"relids": target.relids, "names": target.names}
    every_write = _SOURCE.format(capture=capture, live=sql.SQL(""))
    if target.table is None:
        _latest_by_chain(conn, every_write, params)
        conn.execute(
            _INSERT_AT_RISK
            + sql.SQL(
                "SELECT id, table_name, op, image, 'gone' FROM pg_temp.phasegate_latest "
                "WHERE op <> 'D'"
            )
        )
        conn.execute("DROP TABLE pg_temp.phasegate_latest")
        return
    table = sql.Identifier(*target.table)
    columns, key = _columns(conn, target.table)
    params["columns"] = columns
    live_writes = _SOURCE.format(capture=capture, live=sql.SQL("NOT by_migration AND"))
    if key and not _keys_missing(conn, live_writes, key, params):
        try:
            with conn.transaction():
                _fill_by_key(conn, capture, live_writes, table, key, dropped_columns_ok, params)
            return
        except (psycopg.errors.DataError, psycopg.errors.IntegrityConstraintViolation):
            pass  # a key value the key's type no longer takes: compare whole rows instead
    _fill_by_content(conn, every_write, table, columns, dropped_columns_ok, params)


def _columns(conn: psycopg.Connection[Any], table: tuple[str, str]) -> tuple[list[str], list[str]]:
    """The table's columns and its primary key's columns (none without a primary key)."""
    oid = _scalar(
        conn,
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        table,
    )
    columns = [
        str(row[0])
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
    ]
    key = [
        str(row[0])
        for row in conn.execute(
            "SELECT a.attname FROM pg_index i "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
            (oid,),
        )
    ]
    return columns, key


def _keys_missing(
    conn: psycopg.Connection[Any], live_writes: sql.Composed, key: list[str], params: dict[str, Any]
) -> bool:
    """Whether some live image lacks a column of today's primary key (written before the
    column existed): such rows cannot be found by key."""
    return bool(
        conn.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM ({}) s "
                "WHERE NOT ((s.new_row IS NULL OR s.new_row ?& %(key)s::text[]) "
                "AND (s.old_row IS NULL OR s.old_row ?& %(key)s::text[])))"
            ).format(live_writes),
            {**params, "key": key},
        ).fetchone()
        == (True,)
    )


def _fill_by_key(
    conn: psycopg.Connection[Any],
    capture: sql.Identifier,
    live_writes: sql.Composed,
    table: sql.Identifier,
    key: list[str],
    dropped_columns_ok: bool,
    params: dict[str, Any],
) -> None:
    """The at-risk images of a table with a primary key: the latest live write of each key
    (an update that moved a row to another key also deletes the old key), compared with the
    row holding that key now. The latest writes go to an analyzed temporary table first, so
    the planner joins by index for a few and by hash for many."""

    def key_of(row: str) -> sql.Composed:
        return sql.SQL("jsonb_build_object({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}, {}->{}").format(sql.Literal(c), sql.Identifier(row), sql.Literal(c))
                for c in key
            )
        )

    slots = [sql.Identifier(f"key_{n}") for n in range(len(key))]
    conn.execute("DROP TABLE IF EXISTS pg_temp.phasegate_latest")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE phasegate_latest AS "
            "WITH src AS ({live_writes}), "
            "ev AS (SELECT id, 0 AS deleted, {new_key} AS key FROM src WHERE op <> 'D' "
            " UNION ALL "
            " SELECT id, 1, {old_key} FROM src "
            " WHERE op = 'D' OR (op = 'U' AND {old_key} <> {new_key})) "
            "SELECT l.m[1] AS capture_id, l.m[2] AS deleted, {key_columns} "
            "FROM (SELECT key, max(ARRAY[id, deleted]) AS m FROM ev GROUP BY key) AS l "
            "CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, l.key) AS k"
        ).format(
            live_writes=live_writes,
            new_key=key_of("new_row"),
            old_key=key_of("old_row"),
            key_columns=sql.SQL(", ").join(
                sql.SQL("k.{} AS {}").format(sql.Identifier(c), slot)
                for c, slot in zip(key, slots, strict=True)
            ),
            table=table,
        ),
        params,
    )
    conn.execute("ANALYZE pg_temp.phasegate_latest")
    image = sql.SQL("(CASE WHEN l.deleted = 1 THEN c.old_row ELSE c.new_row END)")
    conn.execute(
        _INSERT_AT_RISK
        + sql.SQL(
            "SELECT c.id, c.table_name, CASE WHEN l.deleted = 1 THEN 'D' ELSE c.op END, "
            " {image}, CASE WHEN l.deleted = 1 THEN 'undone' ELSE 'lost' END "
            "FROM pg_temp.phasegate_latest l JOIN {capture} c ON c.id = l.capture_id "
            "LEFT JOIN {table} t ON {same_key} "
            "WHERE (l.deleted = 1) = (t.{first} IS NOT NULL AND {matches})"
        ).format(
            image=image,
            capture=capture,
            table=table,
            same_key=sql.SQL(" AND ").join(
                sql.SQL("t.{} = l.{}").format(sql.Identifier(c), slot)
                for c, slot in zip(key, slots, strict=True)
            ),
            first=sql.Identifier(key[0]),
            matches=_matches(image, dropped_columns_ok),
        ),
        params,
    )
    conn.execute("DROP TABLE pg_temp.phasegate_latest")


def _matches(image: sql.Composable, dropped_columns_ok: bool) -> sql.Composed:
    """Whether row `t` holds `image` exactly: every column of the image equal, and (when
    `dropped_columns_ok`) columns the table no longer has left out, as long as one is left.
    `R || I = R || (I - C)` says that I agrees with R on the columns C they share."""
    row = sql.SQL("to_jsonb(t)")
    if not dropped_columns_ok:
        return sql.SQL("({row} = {image} OR {row} || {image} = {row})").format(row=row, image=image)
    return sql.SQL(
        "({row} = {image} OR ({image} ?| %(columns)s::text[] "
        "AND {row} || {image} = {row} || ({image} - %(columns)s::text[])))"
    ).format(row=row, image=image)


def _latest_by_chain(
    conn: psycopg.Connection[Any], every_write: sql.Composed, params: dict[str, Any]
) -> None:
    """`pg_temp.phasegate_latest (id, table_name, op, image, keys, found)`: the latest live
    images by the chaining rule with their sorted keys, analyzed for the joins that follow."""
    conn.execute("DROP TABLE IF EXISTS pg_temp.phasegate_latest")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE phasegate_latest AS ")
        + _LATEST_BY_CHAIN.format(source=every_write)
        + sql.SQL(
            "SELECT *, ARRAY(SELECT jsonb_object_keys(image) ORDER BY 1) AS keys, "
            "false AS found FROM latest"
        ),
        params,
    )
    conn.execute("ANALYZE pg_temp.phasegate_latest")


def _fill_by_content(
    conn: psycopg.Connection[Any],
    every_write: sql.Composed,
    table: sql.Identifier,
    columns: list[str],
    dropped_columns_ok: bool,
    params: dict[str, Any],
) -> None:
    """The at-risk images of a table without a usable primary key: the latest images by the
    chaining rule, matched against whole rows projected on the image's columns, in one hash
    join per set of columns the images have (few: one per shape the table had)."""
    _latest_by_chain(conn, every_write, params)
    shapes = conn.execute("SELECT DISTINCT keys FROM pg_temp.phasegate_latest").fetchall()
    for (keys,) in shapes:
        other = [c for c in columns if c not in keys]
        extra = [k for k in keys if k not in columns]
        if len(extra) == len(keys) or (extra and not dropped_columns_ok):
            continue  # no column of the image is left, or one it needs is gone
        image = sql.SQL("k.image - %(extra)s::text[]" if extra else "k.image")
        row = sql.SQL("to_jsonb(t) - %(other)s::text[]" if other else "to_jsonb(t)")
        conn.execute(
            sql.SQL(
                "UPDATE pg_temp.phasegate_latest l SET found = true FROM ("
                " SELECT DISTINCT k.id, k.op FROM pg_temp.phasegate_latest k"
                " JOIN {table} t ON {image} = {row} WHERE k.keys = %(keys)s::text[]"
                ") AS f WHERE f.id = l.id AND f.op = l.op"
            ).format(table=table, image=image, row=row),
            {"keys": keys, "extra": extra, "other": other},
        )
    conn.execute(
        _INSERT_AT_RISK
        + sql.SQL(
            "SELECT id, table_name, op, image, CASE WHEN op = 'D' THEN 'undone' ELSE 'lost' END "
            "FROM pg_temp.phasegate_latest WHERE (op = 'D') = found"
        )
    )
    conn.execute("DROP TABLE pg_temp.phasegate_latest")


# --- small things -----------------------------------------------------------------------


@contextmanager
def _comparing(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Render values as the capture trigger does (and give the comparisons memory), restoring
    the session's settings after."""
    names = list(_COMPARING)
    before = conn.execute(
        "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name", (names,)
    ).fetchall()
    conn.execute(
        "SELECT set_config(name, value, false) "
        "FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
        (names, list(_COMPARING.values())),
    )
    try:
        yield
    finally:
        if conn.info.transaction_status != pq.TransactionStatus.INERROR:
            conn.execute(
                "SELECT set_config(name, value, false) "
                "FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
                ([str(row[0]) for row in before], [str(row[1]) for row in before]),
            )


def _exists(conn: psycopg.Connection[Any], table: sql.Identifier) -> bool:
    return _scalar(conn, "SELECT to_regclass(%s)", (table.as_string(conn),)) is not None


def _scalar(
    conn: psycopg.Connection[Any], query: LiteralString, params: tuple[Any, ...] = ()
) -> Any:
    row = conn.execute(query, params or None).fetchone()
    return None if row is None else row[0]
