//! boxoffice: a Redis-first engine for ticket flash sales.
//!
//! - [`queue`]: the virtual waiting room (join, poll, stream, admission ticks).
//! - [`fair`]: fair start (sale window, the pre-queue draw, proof of work).
//! - [`catalog`]: events and schedules (defined in PostgreSQL, served from Redis).
//! - [`holds`]: atomic all-or-nothing seat holds that expire on their own.
//! - [`wallet`] and [`payments`]: money in PostgreSQL, exactly-once payments.
//! - [`jobs`]: work that runs on one instance at a time, under a Redlock
//!   lease with fencing tokens (sales rollup, availability alerts, purges).
//! - [`auth`]: the credentials (user assertions, queue tokens, service key).
//! - [`store`]: the Redis and PostgreSQL adapters; `lua/` holds every script.
//! - [`http`]: the HTTP API, translating requests to domain calls; its
//!   handlers share the [`state`], which no domain module names.
//! - [`app`]: the wiring (builds the state, serves, runs the loops of
//!   [`background`] with the parts they need).
//! - [`money`], [`time`]: how amounts and timestamps are written out.
//! - [`process`]: settings of the whole process, made at its start.

pub mod app;
pub mod audit;
pub mod auth;
pub mod background;
pub mod catalog;
pub mod config;
pub mod demo;
pub mod effects;
pub mod fair;
pub mod holds;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod jobs;
pub mod later;
pub mod money;
pub mod payments;
pub mod process;
pub mod queue;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod token;
pub mod wallet;
