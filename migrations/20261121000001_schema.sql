-- boxoffice schema: only what is confirmed and must survive anything.
-- Live state (queue, seat holds) is in Redis and can be rebuilt from here.

-- Catalog definitions. The working copy every Lua script reads is in Redis;
-- these rows are what the reconciler restores it from after a Redis loss.
create table events (
    event_id             text primary key,
    name                 text not null,
    admit_per_second     integer not null check (admit_per_second between 1 and 100000),
    max_active           integer not null check (max_active between 1 and 10000000),
    active_ttl_seconds   integer not null check (active_ttl_seconds between 1 and 86400),
    idle_timeout_seconds integer not null check (idle_timeout_seconds between 1 and 86400),
    paused               boolean not null default false,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);

create table schedules (
    event_id     text not null references events (event_id) on delete cascade,
    schedule_id  text not null,
    starts_at    timestamptz not null,
    seats        integer not null check (seats between 1 and 100000),
    row_size     integer not null check (row_size between 1 and 100000),
    price        numeric(20, 4) not null check (price > 0),
    hold_seconds integer not null check (hold_seconds between 1 and 3600),
    max_per_user integer not null check (max_per_user between 1 and 100),
    primary key (event_id, schedule_id)
);

-- Wallets: the balance is a cache of the ledger's sum, kept in step by
-- conditional updates in the same transaction as each ledger row.
create table wallets (
    user_id    text primary key,
    balance    numeric(24, 4) not null default 0
               constraint wallets_balance_non_negative check (balance >= 0),
    updated_at timestamptz not null default now()
);

-- Append-only ledger. `amount` is signed: + for a charge, - for a payment,
-- so sum(amount) per user equals the wallet balance.
create table ledger (
    seq            bigserial primary key,
    transaction_id uuid not null unique,
    user_id        text not null references wallets (user_id),
    kind           text not null check (kind in ('charge', 'payment')),
    amount         numeric(24, 4) not null check (amount <> 0),
    balance_after  numeric(24, 4) not null check (balance_after >= 0),
    payment_id     uuid,
    created_at     timestamptz not null default now(),
    check ((kind = 'charge') = (amount > 0))
);
create index ledger_user_seq on ledger (user_id, seq desc);

-- Confirmed payments. One payment per hold.
create table payments (
    payment_id      uuid primary key,
    user_id         text not null,
    event_id        text not null,
    schedule_id     text not null,
    hold_id         text not null constraint payments_hold_once unique,
    amount          numeric(24, 4) not null check (amount > 0),
    seats           integer[] not null,
    paid_at         timestamptz not null default now(),
    -- false until the Redis side (seats sold, hold dropped, queue entry
    -- ended) is confirmed; the reconciler finishes rows left false.
    redis_confirmed boolean not null default false,
    foreign key (event_id, schedule_id) references schedules (event_id, schedule_id)
);
create index payments_user on payments (user_id, paid_at desc);
create index payments_event_time on payments (event_id, paid_at);
create index payments_unconfirmed on payments (paid_at) where not redis_confirmed;

-- The last line against a double sale: a seat is sold at most once.
create table sold_seats (
    event_id    text not null,
    schedule_id text not null,
    seat_no     integer not null check (seat_no > 0),
    payment_id  uuid not null references payments (payment_id),
    constraint sold_seats_once primary key (event_id, schedule_id, seat_no)
);

-- Idempotency records, scoped to the user. `status` is null while the first
-- request is still running (the in-flight marker).
create table idempotency (
    user_id     text not null,
    key         text not null,
    fingerprint text not null,
    status      smallint,
    -- The first response, replayed byte for byte (text, not jsonb, which
    -- would reorder keys).
    response    text,
    created_at  timestamptz not null default now(),
    primary key (user_id, key)
);
create index idempotency_created on idempotency (created_at);

-- Transactional outbox, relayed to the Redis stream `boxoffice:events`.
create table outbox (
    id           bigserial primary key,
    message_id   uuid not null unique default gen_random_uuid(),
    topic        text not null,
    user_id      text not null,
    payload      jsonb not null,
    created_at   timestamptz not null default now(),
    published_at timestamptz
);
create index outbox_pending on outbox (id) where published_at is null;
