INSERT INTO orders_v2 (id, customer_id, total, status, created_at)
SELECT id, customer_id, total_cents / 100.0, status, created_at FROM orders;
