//! Who is calling: the credentials boxoffice accepts, verified locally.
//!
//! - A **user assertion** is a JWT the platform's own login issued for one
//!   user (`sub`). boxoffice never issues identity itself in production; it
//!   only checks the platform's signature: HS256 with a shared secret, or
//!   RS256 / ES256 / EdDSA with the platform's public key. `exp` is
//!   required, `aud` / `iss` are checked when configured, and at most
//!   [`MAX_SKEW`] of clock difference is forgiven.
//! - A **queue token** ([`crate::token`]) is minted by a join and names one
//!   queue entry; it is the credential of that entry only.
//! - The **service key** is the platform's backend.
//!
//! The algorithm a token may use is decided by the key boxoffice holds,
//! never by the token: a token that names HS256 is checked only against the
//! HS256 secret, one that names RS256 only against an RSA public key, and
//! `alg: none` does not parse. So a token "signed" with the public key as
//! an HMAC secret, the classic confusion attack, is refused.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{config::UserJwtConfig, ids::UserId};

/// The most clock difference forgiven between the platform and us.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Why a user assertion was refused. The message is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("the user assertion is malformed")]
    Malformed,
    #[error("the user assertion uses an algorithm this service does not accept")]
    Algorithm,
    #[error("the user assertion's signature is not valid")]
    Signature,
    #[error("the user assertion has expired")]
    Expired,
    #[error("the user assertion is not for this service (aud or iss)")]
    Audience,
    #[error("the user assertion names no valid user (sub)")]
    Subject,
}

/// The configured public key and the one algorithm it is used with.
struct PublicKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// Verifies user assertions; built once at start.
pub struct UserVerifier {
    hs256: Option<(DecodingKey, EncodingKey)>,
    public: Option<PublicKey>,
    validation: Validation,
}

impl std::fmt::Debug for UserVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|p| p.alg))
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl UserVerifier {
    /// # Errors
    /// A public key that is not a PEM RSA, EC (P-256) or Ed25519 public key.
    pub fn new(config: &UserJwtConfig) -> anyhow::Result<Self> {
        let hs256 = match &config.secret {
            None => None,
            Some(s) => {
                let raw = s.expose().as_bytes();
                Some((
                    DecodingKey::from_secret(raw)?,
                    EncodingKey::from_secret(raw)?,
                ))
            }
        };
        let public = match &config.public_key_pem {
            None => None,
            Some(pem) => Some(public_key(pem)?),
        };
        // `algorithms` is set per token in `verify`; the rest is shared.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = MAX_SKEW.as_secs();
        // An assertion issued for later (`nbf`, optional) counts only from
        // then, with the same skew as `exp`; the library leaves it
        // unchecked unless asked.
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            hs256,
            public,
            validation,
        })
    }

    /// The user a valid assertion speaks for.
    ///
    /// # Errors
    /// Malformed, a refused algorithm, a bad signature, expired, the wrong
    /// audience or issuer, or a `sub` that is not a valid user id.
    pub fn verify(&self, token: &str) -> Result<UserId, AssertionError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AssertionError::Malformed)?;
        let key = match (header.alg, &self.hs256, &self.public) {
            (Algorithm::HS256, Some((key, _)), _) => key,
            (alg, _, Some(p)) if alg == p.alg => &p.key,
            _ => return Err(AssertionError::Algorithm),
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            K::InvalidSignature => AssertionError::Signature,
            K::ExpiredSignature => AssertionError::Expired,
            K::InvalidAudience | K::InvalidIssuer => AssertionError::Audience,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => AssertionError::Algorithm,
            K::MissingRequiredClaim(c) if c == "sub" => AssertionError::Subject,
            _ => AssertionError::Malformed,
        })?;
        UserId::parse(&data.claims.sub).map_err(|_| AssertionError::Subject)
    }

    /// Signs an HS256 assertion for `user` valid for `ttl`, as the
    /// platform's login would (development, demos and load tests).
    ///
    /// # Errors
    /// No HS256 secret is configured.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
        let (_, key) = self.hs256.as_ref().ok_or_else(|| {
            anyhow::anyhow!("user-token needs BOXOFFICE_USER_JWT_SECRET (HS256) to sign with")
        })?;
        mint_hs256(key, user, ttl)
    }
}

/// Signs an HS256 user assertion with `secret`: what the platform's login
/// does; the load tests use it too.
///
/// # Errors
/// An empty secret, or a system clock before 1970.
pub fn mint_with_secret(secret: &str, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
    mint_hs256(&EncodingKey::from_secret(secret.as_bytes())?, user, ttl)
}

fn mint_hs256(key: &EncodingKey, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let claims = Claims {
        sub: user.to_string(),
        exp: (now + ttl).as_secs(),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        key,
    )?)
}

fn public_key(pem: &[u8]) -> anyhow::Result<PublicKey> {
    // The key's own type decides its one algorithm.
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(PublicKey {
            key,
            alg: Algorithm::RS256,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(PublicKey {
            key,
            alg: Algorithm::EdDSA,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(PublicKey {
            key,
            alg: Algorithm::ES256,
        });
    }
    anyhow::bail!("BOXOFFICE_USER_JWT_PUBLIC_KEY is not a PEM RSA, EC P-256 or Ed25519 public key")
}

/// The credential of an `Authorization: Bearer <credential>` header value;
/// the scheme is case-insensitive (RFC 9110 §11.1).
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, rest) = header_value.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let credential = rest.trim();
    (!credential.is_empty()).then_some(credential)
}

/// Compares in time independent of where the strings differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `30s`, `15m`, `1h`, `2d` or plain seconds.
///
/// # Errors
/// Anything else, or zero.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn hs_config() -> UserJwtConfig {
        UserJwtConfig {
            secret: Some(Secret::new(SECRET)),
            public_key_pem: None,
            audience: None,
            issuer: None,
        }
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn minted_assertions_verify() {
        let v = UserVerifier::new(&hs_config()).unwrap();
        let t = v.mint(&alice(), Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&t).unwrap(), alice());
    }

    #[test]
    fn refuses_other_secrets_expiry_and_none() {
        let v = UserVerifier::new(&hs_config()).unwrap();
        let forged = mint_with_secret(
            "another-secret-another-secret-00",
            &alice(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(AssertionError::Signature));
        // exp 10 minutes ago: beyond the 30 s of skew.
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: jsonwebtoken::get_current_timestamp() - 600,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&old), Err(AssertionError::Expired));
        // alg none: header {"alg":"none"} and no signature.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(v.verify(none).is_err());
        assert!(v.verify("not.a.jwt").is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER   abc  "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
    }
}
