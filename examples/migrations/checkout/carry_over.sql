-- Live writes the undo of this migration would lose, kept: it runs after the down scripts,
-- in the same transaction, when a person answers `keep-writes`. `phasegate_writes` holds
-- the rows at risk (table_name, op, row as jsonb); a row carried over leaves it, and any
-- row still there afterwards stops the undo again.
--
-- Orders written to orders_v2 after the cutover go back to orders, in cents.
INSERT INTO orders (id, customer_id, total_cents, status, created_at)
SELECT (w.row ->> 'id')::bigint,
       (w.row ->> 'customer_id')::integer,
       round((w.row ->> 'total')::numeric * 100)::integer,
       w.row ->> 'status',
       (w.row ->> 'created_at')::timestamptz
FROM phasegate_writes AS w
WHERE w.table_name = 'public.orders_v2' AND w.op IN ('I', 'U')
ON CONFLICT (id) DO UPDATE
SET customer_id = EXCLUDED.customer_id,
    total_cents = EXCLUDED.total_cents,
    status = EXCLUDED.status,
    created_at = EXCLUDED.created_at;

DELETE FROM phasegate_writes WHERE table_name = 'public.orders_v2' AND op IN ('I', 'U');
