CREATE INDEX orders_v2_customer ON orders_v2 (customer_id);
