-- Fair start (issue 14): the sale window, the proof-of-work difficulty and
-- the draw's seed of each event. The seed is drawn when the event is
-- created and kept here so the commitment published from the moment the
-- pre-queue opens stays valid across a Redis loss; it is revealed only
-- after `sale_opens_at`.
alter table events
    add column sale_prequeue_opens_at    timestamptz,
    add column sale_opens_at             timestamptz,
    add column sale_closes_at            timestamptz,
    add column challenge_difficulty_bits integer not null default 0
        check (challenge_difficulty_bits between 0 and 28),
    add column draw_seed                 bytea;
