-- The instance working on a claim: the key of the advisory lock it holds
-- while it lives (src/store/pg.rs, Pg::stay_alive). A claim whose owner no
-- longer holds its lock was left by a dead process and is taken over at
-- once instead of after the stale time (src/idempotency.rs). Null: claimed
-- before this column, or by an instance without its lock at the time.
alter table idempotency add column owner integer;
