//! Identifier newtypes. Each is built only through `parse`, which enforces
//! its alphabet and length, so a value that reaches a Redis key or a Lua
//! argument can never contain a separator or a hash-tag brace (a
//! [`PaymentId`] is also minted, once, when its payment is recorded).

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

/// Why an identifier was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1 to {max} characters of {alphabet}")]
pub struct IdError {
    what: &'static str,
    max: usize,
    alphabet: &'static str,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $alphabet:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// Empty, too long, or a character outside the alphabet.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let ok: fn(char) -> bool = $ok;
                if s.is_empty() || s.len() > $max || !s.chars().all(ok) {
                    return Err(IdError { what: $what, max: $max, alphabet: $alphabet });
                }
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn slug_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

string_id!(
    /// An event, chosen by the platform (`"concert-2026"`).
    EventId, "event_id", 64, "letters, digits, '-' and '_'", slug_char
);
string_id!(
    /// One date (performance) of an event.
    ScheduleId, "schedule_id", 64, "letters, digits, '-' and '_'", slug_char
);
string_id!(
    /// The platform's user id; opaque to boxoffice.
    UserId, "user_id", 128, "letters, digits and - _ . @ :",
    |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':')
);
string_id!(
    /// A client-chosen `Idempotency-Key` (printable ASCII, no spaces).
    IdempotencyKey, "Idempotency-Key", 255, "printable ASCII without spaces",
    |c| c.is_ascii_graphic()
);

/// A seat number, 1..=seats of its schedule (the upper bound is checked
/// against the catalog by the hold script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SeatNo(u32);

impl SeatNo {
    pub const MAX: u32 = 100_000;

    /// # Errors
    /// Zero or above [`SeatNo::MAX`].
    pub fn new(n: i64) -> Result<Self, IdError> {
        if (1..=i64::from(Self::MAX)).contains(&n) {
            Ok(Self(n as u32))
        } else {
            Err(IdError {
                what: "seat number",
                max: 6,
                alphabet: "digits, 1 to 100000",
            })
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A payment: a UUID, minted by [`PaymentId::mint`] when a payment is
/// recorded and otherwise only parsed (from a path) or read back from
/// PostgreSQL, where it is the `payments` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct PaymentId(Uuid);

impl PaymentId {
    /// A new payment's id (UUID v7: time-ordered, so the newest sort last).
    pub fn mint() -> Self {
        Self(Uuid::now_v7())
    }

    /// # Errors
    /// Not a UUID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        s.parse().map(Self).map_err(|_| IdError {
            what: "payment_id",
            max: 36,
            alphabet: "a UUID",
        })
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A hold: `<event_id>.<schedule_id>.<n>`, so the hold routes (which carry
/// no event in their path) find the event's keys without a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HoldId {
    pub event: EventId,
    pub schedule: ScheduleId,
    pub n: u64,
}

impl HoldId {
    /// # Errors
    /// Not of the form `event.schedule.n`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = || IdError {
            what: "hold_id",
            max: 150,
            alphabet: "the form <event>.<schedule>.<n>",
        };
        let mut parts = s.split('.');
        let (Some(e), Some(sc), Some(n), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        Ok(Self {
            event: EventId::parse(e).map_err(|_| err())?,
            schedule: ScheduleId::parse(sc).map_err(|_| err())?,
            n: n.parse().ok().filter(|&n| n > 0).ok_or_else(err)?,
        })
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.event, self.schedule, self.n)
    }
}

impl Serialize for HoldId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_separators_and_braces() {
        assert!(EventId::parse("concert-2026_a").is_ok());
        for bad in ["", "a b", "a{b", "a:b", "a.b", "é", &"x".repeat(65)] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("a|b").is_err());
    }

    #[test]
    fn hold_ids_round_trip() {
        let h = HoldId::parse("ev1.d1.42").unwrap();
        assert_eq!(h.to_string(), "ev1.d1.42");
        for bad in ["ev1.d1", "ev1.d1.0", "ev1.d1.x", "a.b.c.d", "e v.d.1"] {
            assert!(HoldId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payment_ids_are_uuids() {
        let id = PaymentId::mint();
        assert_eq!(PaymentId::parse(&id.to_string()), Ok(id));
        for bad in ["", "not-a-uuid", "42", "{}"] {
            assert!(PaymentId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seat_numbers_are_positive() {
        assert!(SeatNo::new(0).is_err());
        assert!(SeatNo::new(-3).is_err());
        assert_eq!(SeatNo::new(7).unwrap().get(), 7);
        assert!(SeatNo::new(100_001).is_err());
    }
}
