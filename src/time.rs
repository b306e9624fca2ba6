//! The one format of a timestamp that leaves the service (API responses,
//! outbox and stream messages): RFC 3339, UTC, with milliseconds and a `Z`
//! suffix (`2026-12-24T11:00:00.000Z`). Fields the API defines as numbers
//! (`*_ms`, `server_time_ms`) stay numbers.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as RFC 3339 with milliseconds, UTC, `Z`.
pub fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch (a Redis `TIME`) as [`rfc3339_ms`];
/// None when out of chrono's range.
pub fn rfc3339_from_ms(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(rfc3339_ms)
}

/// For `#[serde(with = "crate::time::serde_rfc3339_ms")]` on a
/// `DateTime<Utc>` field.
pub mod serde_rfc3339_ms {
    use chrono::{DateTime, Utc};

    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_ms(*t))
    }

    /// The same for an `Option<DateTime<Utc>>` field.
    pub mod option {
        use chrono::{DateTime, Utc};

        /// # Errors
        /// Those of the serializer.
        pub fn serialize<S: serde::Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_utc_and_z_whatever_the_precision_kept() {
        let t: DateTime<Utc> = "2026-12-24T20:00:00.123456789+09:00".parse().unwrap();
        assert_eq!(rfc3339_ms(t), "2026-12-24T11:00:00.123Z");
        let whole: DateTime<Utc> = "2026-12-24T11:00:00Z".parse().unwrap();
        assert_eq!(rfc3339_ms(whole), "2026-12-24T11:00:00.000Z");
        assert_eq!(
            rfc3339_from_ms(whole.timestamp_millis() + 7).as_deref(),
            Some("2026-12-24T11:00:00.007Z")
        );
    }
}
