//! Integration tests: the real app on port 0 against real Redis and
//! PostgreSQL. Each test gets its own database and Redis key prefix, so
//! tests run in parallel and never flush anything.

#[allow(dead_code)] // shared helpers; not every test binary uses each one
mod helpers;

mod admin;
mod audit;
mod autopilot;
mod cluster;
mod crash;
mod dashboard;
mod expiry;
mod fair;
mod foundation;
mod holds;
mod hygiene;
mod jobs;
mod ops;
mod outage;
mod payments;
mod queue;
mod races;
#[allow(dead_code)] // shared harness; not every test uses each part
mod redis_harness;
mod redis_loss;
mod refunds;
mod stall;
mod trust;
