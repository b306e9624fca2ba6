-- Issue 17: the work a payment still owes lives in two small tables
-- instead of two flags on the payment row. Flipping `redis_confirmed` and
-- `rolled_up` rewrote the row twice per payment, and neither flip could be
-- a HOT update (each flag is in a partial index's predicate), so each added
-- a new entry to every index of payments: two row versions and about a
-- dozen index entries per payment, on the hot path's busiest table. A row
-- here is written by the payment's own statement (src/payments/pay.rs
-- `RECORD`) and deleted when its work is done: by the batched confirmation
-- marks or the reconciler (payments_unconfirmed), by the sales rollup
-- (payments_not_rolled_up). What was a flag is now "has a row here".
--
-- Not a rolling upgrade: an instance of an earlier release would record
-- payments without these rows (never rolled up, never finished by the
-- reconciler). Stop every earlier instance before the first new one
-- starts (docs/OPERATIONS.md, Health endpoints).

drop index payments_unconfirmed;
drop index payments_not_rolled_up;

-- The Redis side (seats sold, hold dropped, queue entry ended) not yet
-- confirmed; the reconciler finishes rows older than a second, oldest first.
create table payments_unconfirmed (
    payment_id uuid primary key,
    paid_at    timestamptz not null
);
create index payments_unconfirmed_paid_at on payments_unconfirmed (paid_at);

-- Payments not yet added to sales_hourly (the sales report's tail).
create table payments_not_rolled_up (
    event_id   text not null,
    payment_id uuid not null,
    primary key (event_id, payment_id)
);

insert into payments_unconfirmed (payment_id, paid_at)
select payment_id, paid_at from payments where not redis_confirmed;
insert into payments_not_rolled_up (event_id, payment_id)
select event_id, payment_id from payments where not rolled_up;

alter table payments drop column redis_confirmed, drop column rolled_up;
-- payments is now written once per payment (and once more by a refund):
-- the default vacuum thresholds do.
alter table payments reset (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);

-- Both tables see an insert and a delete per payment and stay small: vacuum
-- them often, so their dead rows never outnumber their live ones for long.
alter table payments_unconfirmed set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
alter table payments_not_rolled_up set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
