-- The new orders table: amounts in a numeric column instead of integer cents.
CREATE TABLE orders_v2 (
    id          bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    total       numeric(12, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
);
