-- Redis epochs (issue 12): one counter per event, bumped every time the
-- event's working copy is restored into Redis from PostgreSQL. Hold ids are
-- minted in Redis from `epoch * 1e9` upwards, so a restore (Redis restarted
-- empty, a shard failed over or lost) can never hand out a hold id that an
-- earlier incarnation already used and a payment may already carry.
create table redis_epochs (
    event_id    text primary key references events (event_id) on delete cascade,
    epoch       bigint not null check (epoch >= 1),
    restored_at timestamptz not null default now()
);
