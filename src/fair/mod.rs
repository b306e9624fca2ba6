//! Fair start: the sale window, the pre-queue draw and its verification,
//! and the proof-of-work challenge against bots (SPEC invariant 12).
//!
//! The draw is decided before anyone arrives: every event gets a random
//! 32-byte seed when it is created, and `sha256(seed)` is published as the
//! commitment. A user who joins the pre-queue gets the score
//! [`draw_score`]`(seed, user)` — a keyed hash of the user id, so joining
//! twice or from fifty tabs gives the same score — and waits in the same
//! sorted set as everyone else, below every later joiner (whose score is
//! their join sequence, ≥ 1). At `opens_at` nothing has to move: the
//! pre-queue is already in draw order ahead of the queue, so no Redis
//! command ever walks the million entries. The seed is revealed after
//! `opens_at` and anyone can recompute the order (docs/FAIRNESS.md).

pub mod challenge;

use std::{collections::HashMap, sync::RwLock};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{
    ids::{EventId, UserId},
    store::{Dependency, StoreError, redis as store_redis, redis::Redis},
};

/// The published ordering rule, word for word what [`draw_score`] does.
pub const DRAW_RULE: &str = "order by the first 13 hex digits (52 bits) of \
HMAC-SHA256(key = seed bytes, message = user_id UTF-8) read as an integer, \
ascending; ties by user_id (bytewise ascending)";

/// The optional sale window of an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleWindow {
    pub prequeue_opens_at: Option<DateTime<Utc>>,
    pub opens_at: Option<DateTime<Utc>>,
    pub closes_at: Option<DateTime<Utc>>,
}

impl SaleWindow {
    /// # Errors
    /// The times are out of order, or a pre-queue without `opens_at`.
    pub fn check(&self) -> Result<(), String> {
        if self.prequeue_opens_at.is_some() && self.opens_at.is_none() {
            return Err("sale.prequeue_opens_at needs sale.opens_at".into());
        }
        if let (Some(p), Some(o)) = (self.prequeue_opens_at, self.opens_at)
            && p >= o
        {
            return Err("sale.prequeue_opens_at must be before sale.opens_at".into());
        }
        if let (Some(o), Some(c)) = (self.opens_at, self.closes_at)
            && o >= c
        {
            return Err("sale.opens_at must be before sale.closes_at".into());
        }
        if let (Some(p), Some(c)) = (self.prequeue_opens_at, self.closes_at)
            && p >= c
        {
            return Err("sale.prequeue_opens_at must be before sale.closes_at".into());
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let f = |t: Option<DateTime<Utc>>| t.map(crate::time::rfc3339_ms);
        serde_json::json!({
            "prequeue_opens_at": f(self.prequeue_opens_at),
            "opens_at": f(self.opens_at),
            "closes_at": f(self.closes_at),
        })
    }
}

/// The secret that orders the pre-queue. Never logged, never shown before
/// the draw.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// 32 fresh random bytes (two v4 UUIDs from the OS-seeded generator:
    /// 244 random bits).
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self(b)
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Self)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = from_hex(s)?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// `sha256(seed)` in hex: published from the moment the pre-queue opens.
    pub fn commitment(&self) -> String {
        to_hex(&Sha256::digest(self.0))
    }
}

/// The fair-start settings of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairStart {
    pub sale: SaleWindow,
    /// Leading zero bits a join's proof of work needs; 0 = off.
    pub difficulty_bits: u8,
    pub seed: Seed,
}

impl FairStart {
    /// No window, no challenge, a fresh seed.
    pub fn new() -> Self {
        Self {
            sale: SaleWindow::default(),
            difficulty_bits: 0,
            seed: Seed::generate(),
        }
    }
}

impl Default for FairStart {
    fn default() -> Self {
        Self::new()
    }
}

/// The highest difficulty an operator may set (about a minute of a
/// browser's time on average; see docs/FAIRNESS.md).
pub const MAX_DIFFICULTY_BITS: i64 = 28;

/// A pre-queue entry's score: the first 52 bits of HMAC-SHA256(seed, user)
/// scaled into [0, 1). Exact as an IEEE double (k · 2⁻⁵²), so Redis stores
/// and compares it without rounding, and always below 1, the smallest
/// join sequence, so the whole pre-queue sorts ahead of later joiners.
pub fn draw_score(seed: &Seed, user: &UserId) -> f64 {
    let k = draw_key(seed, user);
    k as f64 / (1u64 << 52) as f64
}

/// The integer the rule orders by (the first 52 bits of the HMAC).
pub fn draw_key(seed: &Seed, user: &UserId) -> u64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(seed.as_bytes()).expect("any key length");
    mac.update(user.as_str().as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag[..8]);
    u64::from_be_bytes(first) >> 12
}

/// A score as Redis must receive it: enough digits to round-trip exactly.
pub fn score_arg(score: f64) -> String {
    format!("{score:.17e}")
}

pub fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Each event's seed, cached: a seed never changes, so after the first
/// join of an event an instance computes draw scores without a Redis
/// read.
#[derive(Debug, Default)]
pub struct Seeds(RwLock<HashMap<EventId, Seed>>);

impl Seeds {
    /// The event's seed from the cache or its Redis config; `None` for an
    /// unknown event.
    ///
    /// # Errors
    /// Redis unavailable.
    pub async fn get(&self, redis: &Redis, event: &EventId) -> Result<Option<Seed>, StoreError> {
        if let Some(s) = self.0.read().expect("lock").get(event) {
            return Ok(Some(s.clone()));
        }
        let raw = redis
            .hget(&redis.keys().event(event).config(), "seed")
            .await?;
        let Some(seed) = raw.as_deref().and_then(Seed::from_hex) else {
            return Ok(None);
        };
        self.0
            .write()
            .expect("lock")
            .insert(event.clone(), seed.clone());
        Ok(Some(seed))
    }

    /// Forgets every seed (after a restore from PostgreSQL).
    pub fn clear(&self) {
        self.0.write().expect("lock").clear();
    }
}

/// An event's fair-start state by Redis time.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Info {
    pub now_ms: i64,
    pub pre_ms: i64,
    pub open_ms: i64,
    pub close_ms: i64,
    pub pow_bits: u8,
    pub seed: String,
    /// Entries in the draw (final once `now_ms >= open_ms`).
    pub entries: u64,
}

impl Info {
    /// The draw has happened: `opens_at` has passed by Redis time.
    pub fn drawn(&self) -> bool {
        self.open_ms > 0 && self.now_ms >= self.open_ms
    }
}

/// # Errors
/// Redis unavailable; `Ok(None)` for an unknown event.
pub async fn info(redis: &Redis, event: &EventId) -> Result<Option<Info>, StoreError> {
    let k = redis.keys().event(event);
    let raw = redis
        .run(
            &store_redis::FAIR_INFO,
            vec![k.config(), k.queue_draw()],
            vec![],
        )
        .await?;
    #[derive(serde::Deserialize)]
    struct Status {
        status: String,
    }
    let bad = |e: serde_json::Error| {
        StoreError::internal(Dependency::Redis, anyhow::anyhow!("fair_info: {e}: {raw}"))
    };
    // Not loaded (missing from Redis, being restored): no fields but the status.
    if serde_json::from_str::<Status>(&raw).map_err(bad)?.status != "ok" {
        return Ok(None);
    }
    serde_json::from_str::<Info>(&raw).map(Some).map_err(bad)
}

/// One page of the draw's entries, in draw order: (total, users).
///
/// # Errors
/// Redis unavailable.
pub async fn entries(
    redis: &Redis,
    event: &EventId,
    offset: u64,
    limit: u32,
) -> Result<(u64, Vec<String>), StoreError> {
    #[derive(serde::Deserialize)]
    struct Page {
        total: u64,
        users: Vec<String>,
    }
    let k = redis.keys().event(event);
    let raw = redis
        .run(
            &store_redis::DRAW_ENTRIES,
            vec![k.queue_draw()],
            vec![offset.to_string(), limit.to_string()],
        )
        .await?;
    let p: Page = serde_json::from_str(&raw).map_err(|e| {
        StoreError::internal(
            Dependency::Redis,
            anyhow::anyhow!("draw_entries: {e}: {raw}"),
        )
    })?;
    Ok((p.total, p.users))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_exact_below_one_and_follow_the_rule() {
        let seed = Seed::from_hex(&"ab".repeat(32)).unwrap();
        let u = UserId::parse("alice").unwrap();
        let s = draw_score(&seed, &u);
        assert!((0.0..1.0).contains(&s));
        let back: f64 = score_arg(s).parse().unwrap();
        assert_eq!(back, s, "the score survives its text form");
        assert_eq!((s * (1u64 << 52) as f64) as u64, draw_key(&seed, &u));
        // The rule in words: the first 13 hex digits of the HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(seed.as_bytes()).unwrap();
        mac.update(b"alice");
        let hex = to_hex(&mac.finalize().into_bytes());
        assert_eq!(
            u64::from_str_radix(&hex[..13], 16).unwrap(),
            draw_key(&seed, &u)
        );
    }

    #[test]
    fn the_commitment_is_sha256_of_the_seed() {
        let seed = Seed::from_hex(&"00".repeat(32)).unwrap();
        assert_eq!(
            seed.commitment(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert_ne!(Seed::generate(), Seed::generate());
    }

    #[test]
    fn windows_must_be_in_order() {
        let t = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        let ok = SaleWindow {
            prequeue_opens_at: t("2026-01-01T10:00:00Z"),
            opens_at: t("2026-01-01T11:00:00Z"),
            closes_at: t("2026-01-01T12:00:00Z"),
        };
        assert!(ok.check().is_ok());
        assert!(
            SaleWindow {
                opens_at: None,
                ..ok
            }
            .check()
            .is_err()
        );
        assert!(
            SaleWindow {
                closes_at: t("2026-01-01T10:30:00Z"),
                ..ok
            }
            .check()
            .is_err()
        );
    }
}
