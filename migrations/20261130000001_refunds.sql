-- Refunds and cancellations: money back exactly once, seats back on sale.

-- The ledger gains kind 'refund' (positive, like a charge).
alter table ledger drop constraint ledger_kind_check;
alter table ledger drop constraint ledger_check;
alter table ledger add constraint ledger_kind_check
    check (kind in ('charge', 'payment', 'refund'));
alter table ledger add constraint ledger_sign_check
    check ((kind in ('charge', 'refund')) = (amount > 0));

-- At most one refund per payment: the unique constraint decides races.
create table refunds (
    refund_id       uuid primary key,
    payment_id      uuid not null constraint refunds_once unique references payments (payment_id),
    amount          numeric(24, 4) not null check (amount >= 0),
    created_at      timestamptz not null default now(),
    -- false until the seats are back on sale in Redis; the reconciler
    -- finishes rows left false.
    redis_confirmed boolean not null default false
);
create index refunds_unconfirmed on refunds (created_at) where not redis_confirmed;

alter table payments add column refunded_at timestamptz;
create index payments_live_by_schedule on payments (event_id, schedule_id) where refunded_at is null;

-- A refunded payment's rows leave sold_seats (the seat can be sold again;
-- the unique constraint keeps guarding every live sale). The payment keeps
-- its seats in payments.seats for the record.

alter table schedules add column cancelled_at timestamptz;
