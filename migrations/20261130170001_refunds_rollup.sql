-- Refunds enter the sales rollup the way payments do: a flag says which
-- refunds sales_hourly already counts (in the hour of the refund).
alter table refunds add column rolled_up boolean not null default false;
create index refunds_not_rolled_up on refunds (refund_id) where not rolled_up;
