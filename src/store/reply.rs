//! Script replies, decoded in one place.
//!
//! Every script in `lua/` answers one JSON object (a [`Script`] whose reply
//! also carries raw bitmaps sends its JSON head first, see
//! [`Redis::run_bulk`]). Its typed wrapper names the reply type of the
//! script's family (e.g. `holds::reply::HoldReply`, `queue::reply`), with
//! one enum variant per status, and decodes it here: a reply that does not
//! decode, or a status the caller cannot get, is an internal error
//! reading `script <name>: bad reply: <what>`, whichever script it was.

use serde::de::DeserializeOwned;

use super::{
    Dependency, StoreError,
    redis::{Redis, Script},
};

/// A reply of `script` that makes no sense: `what` says why.
pub fn bad_reply(script: &Script, what: impl std::fmt::Display) -> StoreError {
    StoreError::internal(
        Dependency::Redis,
        anyhow::anyhow!("script {}: bad reply: {what}", script.name),
    )
}

/// Decodes `script`'s JSON reply into its typed form.
///
/// # Errors
/// Internal, naming the script, the decoding error and the reply.
pub fn decode_reply<T: DeserializeOwned>(script: &Script, raw: &[u8]) -> Result<T, StoreError> {
    decode_reply_with(script, raw, |raw| serde_json::from_slice(raw))
}

/// [`decode_reply`] with the reply type's own decoder (e.g. a hand-read
/// fast path, `holds::reply::Swept::<PlaceReply>::decode`), failing alike.
///
/// # Errors
/// Internal, naming the script, the decoding error and the reply.
pub fn decode_reply_with<'a, T>(
    script: &Script,
    raw: &'a [u8],
    decode: impl FnOnce(&'a [u8]) -> serde_json::Result<T>,
) -> Result<T, StoreError> {
    decode(raw).map_err(|e| {
        bad_reply(
            script,
            format_args!("{e} in {}", String::from_utf8_lossy(raw)),
        )
    })
}

impl Redis {
    /// Runs a script and decodes its JSON reply ([`decode_reply`]).
    ///
    /// # Errors
    /// As [`Redis::run`], and an internal error for a reply that does not
    /// decode.
    pub async fn eval_json<T: DeserializeOwned>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, StoreError> {
        let raw = self.run(script, keys, args).await?;
        decode_reply(script, raw.as_bytes())
    }
}
