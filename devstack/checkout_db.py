"""The checkout demo's database: an `orders` table in integer cents, read through the
`checkout_orders` view, which examples/migrations/checkout moves onto `orders_v2`.
"""

from __future__ import annotations

import psycopg

SCHEMA = """
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    total_cents integer NOT NULL CHECK (total_cents >= 0),
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE VIEW checkout_orders AS
    SELECT id, customer_id, (total_cents / 100.0)::numeric AS total, status, created_at
    FROM orders;
"""
# Deterministic rows, so two seeded databases are equal row for row.
ROWS = """
INSERT INTO orders (id, customer_id, total_cents, status, created_at)
SELECT n, 1 + (n * 7919) %% 5000, (n * 104729) %% 100000,
       (ARRAY['paid', 'shipped', 'refunded', 'open'])[1 + n %% 4],
       timestamptz '2026-01-01 00:00:00+00' + n * interval '37 seconds'
FROM generate_series(%s::bigint, %s::bigint) AS n
"""
# What the cutover runs: readers of checkout_orders move to orders_v2, and back.
VIEW_ON_V2 = (
    "CREATE OR REPLACE VIEW checkout_orders AS "
    "SELECT id, customer_id, total::numeric AS total, status, created_at FROM orders_v2"
)
VIEW_ON_V1 = (
    "CREATE OR REPLACE VIEW checkout_orders AS "
    "SELECT id, customer_id, (total_cents / 100.0)::numeric AS total, status, created_at "
    "FROM orders"
)


def seed_checkout(dsn: str, rows: int, *, batch: int = 200_000) -> None:
    """Create the schema and `rows` orders (in batches, so memory stays flat)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        for first in range(1, rows + 1, batch):
            conn.execute(ROWS, (first, min(first + batch - 1, rows)))
        conn.execute("ANALYZE orders")
