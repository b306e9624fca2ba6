//! Every Redis key name, built in one place.
//!
//! Layout: `<prefix>{ev:<event_id>}:<suffix>`. The braces are a Redis
//! Cluster *hash tag*: only the text inside them is hashed, so every key of
//! one event lives in one slot and each Lua script, which must name all its
//! keys in `KEYS` and may only touch one slot, can change an event's queue,
//! seats and holds atomically. The deployment prefix
//! (`BOXOFFICE_REDIS_PREFIX`) sits outside the tag so several deployments or
//! test runs can share one Redis without sharing slots' meaning.

use crate::ids::{EventId, IdempotencyKey, ScheduleId, UserId};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn event(&self, event: &EventId) -> EventKeys {
        EventKeys {
            base: format!("{}{{ev:{}}}", self.prefix, event),
        }
    }

    /// Set of known event ids (a plain key outside any event's slot; only
    /// read by single-key commands).
    pub fn events_index(&self) -> String {
        format!("{}{{bo}}:events", self.prefix)
    }

    /// Stream that the outbox relay publishes confirmed payments and charges to.
    pub fn outbox_stream(&self) -> String {
        format!("{}boxoffice:events", self.prefix)
    }

    /// The stream's ready mark: set once every outbox row PostgreSQL still
    /// keeps is in this Redis's stream or waiting to be relayed to it
    /// (`payments::relay::restore_stream`); the relay publishes only while
    /// it is there. `<prefix>{<prefix>boxoffice:events}:ready`: its hash
    /// tag is the stream's whole name (which has none), so it shares the
    /// stream's slot and one script sees both, and like every key it
    /// starts with the prefix.
    pub fn outbox_stream_ready(&self) -> String {
        format!("{p}{{{p}boxoffice:events}}:ready", p = self.prefix)
    }
}

/// Keys of one event; all share the event's hash tag.
#[derive(Debug, Clone)]
pub struct EventKeys {
    base: String,
}

impl EventKeys {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.base)
    }

    /// Hash: event name and admission settings.
    pub fn config(&self) -> String {
        self.key("cfg")
    }
    /// Counter: join order (the queue's only clock for fairness).
    pub fn queue_seq(&self) -> String {
        self.key("q:seq")
    }
    /// Sorted set: waiting user → entry id (the join sequence): the line's
    /// order, a user's place (`ZRANK`) and entry (`ZSCORE`) in one member.
    pub fn queue_waiting(&self) -> String {
        self.key("q:wait")
    }
    /// Hash: waiting user → last poll (Redis ms), for idle eviction.
    pub fn queue_polled(&self) -> String {
        self.key("q:poll")
    }
    /// Sorted set: admitted user → admission deadline (Redis ms).
    pub fn queue_admitted(&self) -> String {
        self.key("q:adm")
    }
    /// Hash: admitted user → entry id (at most `max_active` fields).
    pub fn queue_admitted_entries(&self) -> String {
        self.key("q:adm:entry")
    }
    /// The ten keys every queue script takes first, in the order
    /// `queue_keys()` in lua/lib/queue.lua expects: config, join sequence,
    /// waiting, last activity, admitted, admitted entries, rate window,
    /// stats, pre-queue entries, draw.
    pub fn queue_keys(&self) -> Vec<String> {
        vec![
            self.config(),
            self.queue_seq(),
            self.queue_waiting(),
            self.queue_polled(),
            self.queue_admitted(),
            self.queue_admitted_entries(),
            self.queue_rate_window(),
            self.queue_stats(),
            self.queue_pre_entries(),
            self.queue_draw(),
        ]
    }
    /// The queue keys a script reads to check that a buyer's entry is live
    /// and admitted (and to record the request as the admitted user's
    /// activity), in the order `buyer_keys()` in lua/lib/queue.lua
    /// expects: admitted, waiting, admitted entries, last activity.
    pub fn buyer_keys(&self) -> [String; 4] {
        [
            self.queue_admitted(),
            self.queue_waiting(),
            self.queue_admitted_entries(),
            self.queue_polled(),
        ]
    }
    /// Sorted set: entry id → admission time (Redis ms), last second only;
    /// the sliding window that caps the admission rate.
    pub fn queue_rate_window(&self) -> String {
        self.key("q:win")
    }
    /// Hash: tick bookkeeping (last tick, rate average, totals).
    pub fn queue_stats(&self) -> String {
        self.key("q:stats")
    }
    /// Hash: each instance's latency window for the admission autopilot
    /// and the time of its last control step (`lua/autopilot_publish.lua`).
    pub fn autopilot(&self) -> String {
        self.key("q:autopilot")
    }
    /// Hash: pre-queue user → entry id (their member in `q:wait` is
    /// scored by the draw, not by the entry).
    pub fn queue_pre_entries(&self) -> String {
        self.key("q:pre:entry")
    }
    /// Sorted set: user → draw score of every entry in the pre-queue at
    /// `opens_at` (frozen from then on): the draw's published entry list.
    pub fn queue_draw(&self) -> String {
        self.key("q:draw")
    }
    /// String: a used proof-of-work challenge (by its random id), kept
    /// until the challenge expires so it is accepted once.
    pub fn challenge_used(&self, id: &str) -> String {
        self.key(&format!("pow:{id}"))
    }

    /// Hash: one schedule's catalog copy and counters.
    pub fn schedule(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:cfg"))
    }
    /// Hash: seat number → `h:<hold n>` (held or paying) or `s:<payment id>` (sold).
    pub fn seats(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:seats"))
    }
    /// Bitmap: bit i set while seat i is held, being paid or sold (bit 0
    /// always set); lets best-available search skip taken seats with BITPOS.
    pub fn seat_map(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:map"))
    }
    /// Bitmap: bit i set once seat i is sold; with the taken bitmap it is
    /// the whole seat map in N/4 bytes.
    pub fn sold_map(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:sold"))
    }
    /// The seven keys every schedule script takes first, in order.
    pub fn schedule_keys(&self, s: &ScheduleId) -> Vec<String> {
        vec![
            self.schedule(s),
            self.seats(s),
            self.seat_map(s),
            self.holds(s),
            self.hold_deadlines(s),
            self.user_held(s),
            self.user_bought(s),
        ]
    }
    /// Hash: hold n → encoded hold record.
    pub fn holds(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:holds"))
    }
    /// Sorted set: hold n → deadline (Redis ms); drives lazy expiry.
    pub fn hold_deadlines(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:dl"))
    }
    /// Hash: user id → seats currently held (held or paying) in the schedule.
    pub fn user_held(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:uheld"))
    }
    /// Hash: user id → seats bought in the schedule.
    pub fn user_bought(&self, s: &ScheduleId) -> String {
        self.key(&format!("s:{s}:ubought"))
    }
    /// Counter: hold numbers. After a restore it restarts at
    /// `epoch * 1e9` (see `lua/finish_restore.lua`), never lower.
    pub fn hold_seq(&self) -> String {
        self.key("hold:seq")
    }
    /// String: the event's Redis epoch, written last when the event is
    /// created or restored, once its catalog *and* its sold seats are in
    /// Redis. It lives in the event's own slot, so a shard that loses the
    /// event loses the mark with it; the hold and payment scripts refuse to
    /// run without it (`restoring`, HTTP 503) and the reconciler restores
    /// every event whose mark is missing.
    pub fn ready(&self) -> String {
        self.key("ready")
    }
    /// String: what a hold request carrying `user`'s `Idempotency-Key`
    /// `key` did (its fingerprint and reply, `lua/place_hold.lua`), until
    /// that hold's deadline. Neither part has a space, so the name is
    /// one user's one key.
    pub fn hold_key(&self, user: &UserId, key: &IdempotencyKey) -> String {
        self.key(&format!("hk:{user} {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_key_carries_the_hash_tag_after_the_prefix() {
        let k = Keys::new("t1:").event(&EventId::parse("e1").unwrap());
        let s = ScheduleId::parse("d1").unwrap();
        for key in [
            k.config(),
            k.queue_waiting(),
            k.seats(&s),
            k.holds(&s),
            k.hold_seq(),
            k.ready(),
        ] {
            assert!(key.starts_with("t1:{ev:e1}:"), "{key}");
        }
    }

    #[test]
    fn a_hold_key_is_in_its_events_slot_and_names_one_user_and_key() {
        use crate::store::redis::Redis;
        let k = Keys::new("t1:").event(&EventId::parse("e1").unwrap());
        let user = |u| UserId::parse(u).unwrap();
        let key = |s| IdempotencyKey::parse(s).unwrap();
        // Braces in the client's key do not move it to another slot.
        let braced = k.hold_key(&user("a"), &key("{x}"));
        assert_eq!(Redis::slot_of(&braced), Redis::slot_of(&k.ready()));
        // A ':' may be in a user id, never a space in either part.
        assert_ne!(
            k.hold_key(&user("a:b"), &key("c")),
            k.hold_key(&user("a"), &key("b:c"))
        );
    }

    #[test]
    fn the_stream_and_its_ready_mark_share_a_slot() {
        use crate::store::redis::Redis;
        for prefix in ["", "t1:", "bench-7:"] {
            let k = Keys::new(prefix);
            assert_eq!(
                Redis::slot_of(&k.outbox_stream()),
                Redis::slot_of(&k.outbox_stream_ready()),
                "{prefix}"
            );
            assert_ne!(k.outbox_stream(), k.outbox_stream_ready());
            assert!(k.outbox_stream_ready().starts_with(prefix));
        }
    }
}
