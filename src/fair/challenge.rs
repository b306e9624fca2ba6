//! Proof-of-work challenges: stateless, signed, accepted once.
//!
//! `GET /v1/events/{id}/challenge` hands out
//! `<base64url payload>.<base64url HMAC tag>`; the payload names the event,
//! the difficulty, the expiry (Redis ms) and 16 random bytes. A join
//! carries `{"challenge", "nonce"}` where `sha256(challenge ‖ nonce)` has
//! `difficulty_bits` leading zero bits. Checking the signature and the
//! hash here costs one HMAC and one SHA-256 and touches no store; that the
//! challenge is not expired (by Redis time) and not used before is decided
//! inside `join_queue.lua`, atomically with the join, so a challenge is
//! spent only by a join that happened.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::EventId;

/// How long a challenge may be solved and used.
pub const CHALLENGE_TTL_MS: i64 = 120_000;

#[derive(Serialize, Deserialize)]
struct Payload {
    e: String,
    b: u8,
    x: i64,
    r: String,
}

/// A challenge whose signature and proof checked out; what is left for
/// the join script to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// Difficulty the challenge was issued with (and the proof meets).
    pub bits: u8,
    /// Expiry, Redis ms.
    pub expires_ms: i64,
    /// The random part: names the challenge's used-once key.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the challenge is malformed or not signed by this service")]
    Forged,
    #[error("the challenge is for another event")]
    OtherEvent,
    #[error("sha256(challenge || nonce) lacks the required leading zero bits")]
    WrongSolution,
}

pub struct ChallengeSigner {
    key: Vec<u8>,
}

impl ChallengeSigner {
    /// Derives its own key from the token secret (never the same bytes
    /// that sign queue tokens).
    pub fn new(token_secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"boxoffice challenge v1\0");
        h.update(token_secret.as_bytes());
        Self {
            key: h.finalize().to_vec(),
        }
    }

    fn tag(&self, payload_b64: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload_b64.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, event: &EventId, bits: u8, now_ms: i64) -> (String, i64) {
        let expires_ms = now_ms + CHALLENGE_TTL_MS;
        let payload = serde_json::to_vec(&Payload {
            e: event.to_string(),
            b: bits,
            x: expires_ms,
            r: uuid::Uuid::new_v4().simple().to_string(),
        })
        .expect("payload serializes");
        let p = B64.encode(payload);
        let tag = B64.encode(self.tag(&p));
        (format!("{p}.{tag}"), expires_ms)
    }

    /// Checks signature, event and proof (one HMAC, one SHA-256).
    ///
    /// # Errors
    /// Forged or malformed, another event's, or a wrong solution.
    pub fn verify(
        &self,
        event: &EventId,
        challenge: &str,
        nonce: &str,
    ) -> Result<Proven, ChallengeError> {
        let (p, tag) = challenge.split_once('.').ok_or(ChallengeError::Forged)?;
        let tag = B64.decode(tag).map_err(|_| ChallengeError::Forged)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(p.as_bytes());
        mac.verify_slice(&tag).map_err(|_| ChallengeError::Forged)?;
        let raw = B64.decode(p).map_err(|_| ChallengeError::Forged)?;
        let payload: Payload = serde_json::from_slice(&raw).map_err(|_| ChallengeError::Forged)?;
        if payload.e != event.as_str() {
            return Err(ChallengeError::OtherEvent);
        }
        if nonce.len() > 64 || leading_zero_bits(challenge, nonce) < u32::from(payload.b) {
            return Err(ChallengeError::WrongSolution);
        }
        Ok(Proven {
            bits: payload.b,
            expires_ms: payload.x,
            id: payload.r,
        })
    }
}

/// Leading zero bits of sha256(challenge ‖ nonce).
pub fn leading_zero_bits(challenge: &str, nonce: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(nonce.as_bytes());
    zero_bits(&h.finalize())
}

/// Leading zero bits of a digest.
fn zero_bits(digest: &[u8]) -> u32 {
    let mut n = 0;
    for &byte in digest {
        if byte == 0 {
            n += 8;
        } else {
            n += byte.leading_zeros();
            break;
        }
    }
    n
}

/// Finds a nonce (decimal counter) for `bits`: what a client does. Used by
/// the tests and the load-test crate's solver.
pub fn solve(challenge: &str, bits: u8) -> String {
    // Hash the challenge once, then only the counter per attempt.
    let mut prefix = Sha256::new();
    prefix.update(challenge.as_bytes());
    let mut buf = itoa_buf();
    for i in 0u64.. {
        let s = fmt_u64(&mut buf, i);
        let mut h = prefix.clone();
        h.update(s.as_bytes());
        if zero_bits(&h.finalize()) >= u32::from(bits) {
            return s.to_owned();
        }
    }
    unreachable!("2^64 attempts")
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solved_challenge_verifies_and_tampering_does_not() {
        let s = ChallengeSigner::new("secret");
        let ev = EventId::parse("e1").unwrap();
        let (c, exp) = s.issue(&ev, 10, 1_000);
        assert_eq!(exp, 1_000 + CHALLENGE_TTL_MS);
        let nonce = solve(&c, 10);
        assert!(leading_zero_bits(&c, &nonce) >= 10);
        let p = s.verify(&ev, &c, &nonce).unwrap();
        assert_eq!((p.bits, p.expires_ms), (10, exp));
        assert_eq!(
            s.verify(&EventId::parse("e2").unwrap(), &c, &nonce),
            Err(ChallengeError::OtherEvent)
        );
        let wrong = (0..)
            .map(|i| i.to_string())
            .find(|n| leading_zero_bits(&c, n) < 10)
            .unwrap();
        assert_eq!(
            s.verify(&ev, &c, &wrong),
            Err(ChallengeError::WrongSolution)
        );
        let forged = format!("{}x", c);
        assert_eq!(s.verify(&ev, &forged, &nonce), Err(ChallengeError::Forged));
        assert_eq!(
            ChallengeSigner::new("other").verify(&ev, &c, &nonce),
            Err(ChallengeError::Forged)
        );
    }
}
