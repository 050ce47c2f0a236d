TRUNCATE orders_v2;
