"""PostgreSQL errors in words that never quote a row: what every PostgreSQL activity reports.

The server's DETAIL (`Failing row contains (...)`, `Key (id)=(5)`), CONTEXT and the tools'
`Command was` lines quote rows or statements with values, so they are left out; a data
exception's quoted value (`invalid input syntax for type integer: "abc"`) is hidden.
"""

from __future__ import annotations

import re

import psycopg


def without_row_values(text: str) -> str:
    """A server or pg_dump/pg_restore message without the lines that can quote rows."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not re.match(r"^\s*(DETAIL|CONTEXT|Command was|LINE \d+):", line)
    )


def describe(err: psycopg.Error) -> str:
    """The server's message with what it names (table, column, constraint) and its SQLSTATE,
    never the rows."""
    diag = err.diag
    message = diag.message_primary or without_row_values(str(err).strip())
    if (diag.sqlstate or "").startswith("22"):
        message = re.sub(r'"[^"]*"', '"…"', message)
    parts = [message]
    named = [
        f"{label} {value}"
        for label, value in (
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        )
        if value
    ]
    if named:
        parts.append(", ".join(named))
    if diag.sqlstate:
        parts.append(f"SQLSTATE {diag.sqlstate}")
    return " — ".join(parts)
