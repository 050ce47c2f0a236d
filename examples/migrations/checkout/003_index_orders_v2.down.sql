DROP INDEX orders_v2_customer;
