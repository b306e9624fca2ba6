//! Integration tests: the real app on port 0 against real Redis and
//! PostgreSQL. Each test gets its own database and Redis key prefix, so
//! tests run in parallel and never flush anything.

#[allow(dead_code)] // shared helpers; not every test binary uses each one
mod helpers;

mod admin;
mod dashboard;
mod fair;
mod foundation;
mod holds;
mod ops;
mod outage;
mod payments;
mod queue;
