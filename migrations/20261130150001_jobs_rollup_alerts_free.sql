-- Issue 15: leased jobs with fencing tokens, the sales rollup, availability
-- alerts and free schedules.

-- Fencing tokens: one row per leased job. Every acquisition of a job's
-- lease takes the next token (`fence + 1`); every write the job makes
-- checks, in its own transaction and under this row's lock, that its token
-- is still the newest, so a leader paused past its lease cannot write.
create table job_fences (
    name        text primary key,
    fence       bigint not null check (fence > 0),
    holder      text not null,
    acquired_at timestamptz not null default clock_timestamp()
);

-- One row per round a leased job completed (written by the round's fenced
-- transaction): who ran it, under which token, from when to when. Lets an
-- operator (and the tests) see that rounds never overlapped.
create table job_runs (
    id          bigserial primary key,
    name        text not null,
    fence       bigint not null,
    holder      text not null,
    started_at  timestamptz not null,
    finished_at timestamptz not null default clock_timestamp(),
    items       bigint not null default 0
);
create index job_runs_name on job_runs (name, id);

-- Sales per schedule and hour, kept by the rollup job. `refunds` counts
-- refunded seats in the hour of the refund (0 until refunds exist; the
-- rollup adds them the same way it adds payments, from a not-yet-rolled-up
-- flag on the refund rows).
create table sales_hourly (
    event_id    text not null,
    schedule_id text not null,
    hour        timestamptz not null,
    seats       bigint not null default 0,
    refunds     bigint not null default 0,
    revenue     numeric(28, 4) not null default 0,
    payments    bigint not null default 0,
    primary key (event_id, schedule_id, hour),
    foreign key (event_id, schedule_id) references schedules (event_id, schedule_id)
);

-- A payment is in the rollup or in the tail, never both: the rollup adds a
-- batch of payments and flips their flag in one transaction. The partial
-- index keeps the tail cheap to find whatever the table's size.
alter table payments add column rolled_up boolean not null default false;
create index payments_not_rolled_up on payments (event_id, payment_id) where not rolled_up;
-- Each flag flip leaves a dead entry in that index until vacuum; vacuum
-- payments after 2 % of it changed (not the default 20 %), so the tail's
-- index stays small at a million payments.
alter table payments set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 5000);

-- Availability alerts: per schedule the threshold and the level last
-- announced ('ok', 'low', 'sold_out'); a message is written when the level
-- changes, so each crossing is announced once.
alter table schedules add column low_seats_threshold integer
    check (low_seats_threshold between 0 and 100000);
create table schedule_alerts (
    event_id    text not null,
    schedule_id text not null,
    level       text not null default 'ok' check (level in ('ok', 'low', 'sold_out')),
    changed_at  timestamptz not null default now(),
    primary key (event_id, schedule_id),
    foreign key (event_id, schedule_id) references schedules (event_id, schedule_id) on delete cascade
);

-- Free schedules: price 0, and a zero-amount payment is the registration.
alter table schedules drop constraint schedules_price_check,
    add constraint schedules_price_check check (price >= 0);
alter table payments drop constraint payments_amount_check,
    add constraint payments_amount_check check (amount >= 0);
