-- Admission autopilot (issue 17): per event, admission either runs at the
-- fixed `admit_per_second` or is steered by the autopilot between
-- `min_admit_per_second` and `max_admit_per_second` so admitted buyers'
-- p99 latency stays under `target_p99_ms` (see docs/QUEUE.md).
-- Existing events keep fixed admission; their bounds start at 1 and their
-- own rate.
alter table events
    add column admission_mode       text    not null default 'fixed'
        check (admission_mode in ('fixed', 'auto')),
    add column target_p99_ms        integer not null default 50
        check (target_p99_ms between 1 and 60000),
    add column min_admit_per_second integer not null default 1
        check (min_admit_per_second between 1 and 100000),
    add column max_admit_per_second integer;
update events set max_admit_per_second = admit_per_second;
alter table events
    alter column max_admit_per_second set not null,
    add constraint events_admit_bounds
        check (max_admit_per_second between 1 and 100000
               and min_admit_per_second <= max_admit_per_second);
