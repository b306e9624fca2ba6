//! Redis calls coalesced per key: the busiest calls of a sale (every
//! arriving buyer's join, every waiting buyer's status poll, every
//! admitted buyer's hold) cost one script call per batch instead of one
//! per request. [`Batch`] says what one kind of call answers; the queue
//! (`crate::queue::coalesce`) and the holds (`crate::holds::coalesce`)
//! implement it, each keyed by event.
//!
//! A request joins its key's pending list. While fewer than
//! [`CALLS_PER_KEY`] calls for that key are in flight, it also starts
//! one, which takes every pending request (up to [`MAX_BATCH`]) into one
//! script call and repeats until nothing is pending. So an idle instance
//! sends each request at once, alone (no timer, no added wait), and a busy
//! one sends the requests that arrived during the last round trip
//! together: what the script reads for every request (config, pacing
//! figures, expiry) is read once per call, and a call's own cost (the
//! network, the script's dispatch: about half of a lone status call's
//! Redis time) is paid once. Each request is still decided as if alone,
//! in arrival order, from its own verified token or assertion; a failed
//! call fails each of its requests with the same error.
//!
//! The calls run in tasks of their own, so a client that goes away takes
//! only its own answer with it, never the batch it is in.
//!
//! A request waits for its answer at most [`CALL_TIMEOUT`] from the moment
//! it joins the list, as a lone call would: with Redis hanging, the calls
//! ahead of it each wait out a timeout of their own before the breaker
//! opens, and a request behind them must not add theirs to its own (a
//! burst of polls during a stall took two timeouts before this bound). It
//! then answers 503; a request that has given up is never sent.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use super::{Dependency, StoreError, redis::CALL_TIMEOUT};

/// Calls in flight per key, kind and instance: two, so one is on the wire
/// while the other's answers are handed out.
const CALLS_PER_KEY: usize = 2;

/// Requests per call at most (a few O(log n) lookups each: 250 stay near
/// a millisecond of Redis with a million waiting).
const MAX_BATCH: usize = 250;

/// One kind of coalesced call: what a request carries and what it gets.
pub trait Batch: Send + Sync + 'static {
    /// What a call covers: every request in it shares the script's keys.
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    type Request: Send + 'static;
    type Answer: Send + 'static;
    /// The script, for the batch-size metric's label.
    const SCRIPT: &'static str;

    /// Answers `requests` (all of `key`) in one call: one answer per
    /// request, in order.
    fn answer(
        &self,
        key: &Self::Key,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;

    /// The answer of a request that got none from a call: `reason` says
    /// why (no answer in time, or the call ended without one).
    fn unavailable(reason: &'static str) -> Self::Answer;
}
struct Waiting<B: Batch> {
    request: B::Request,
    reply: oneshot::Sender<B::Answer>,
}

struct Pending<B: Batch> {
    waiting: Vec<Waiting<B>>,
    calls: usize,
}

/// The pending requests of one kind on this instance, per key.
pub struct Coalescer<B: Batch> {
    batch: B,
    pending: Mutex<HashMap<B::Key, Pending<B>>>,
}

impl<B: Batch> Coalescer<B> {
    pub fn new(batch: B) -> Self {
        Self {
            batch,
            pending: Mutex::default(),
        }
    }

    /// `request`'s answer, from the next call for `key`.
    pub async fn ask(self: &Arc<Self>, key: &B::Key, request: B::Request) -> B::Answer {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut all = self.pending.lock().expect("lock");
            let pending = all.entry(key.clone()).or_insert_with(|| Pending {
                waiting: Vec::new(),
                calls: 0,
            });
            pending.waiting.push(Waiting { request, reply });
            let start = pending.calls < CALLS_PER_KEY;
            if start {
                pending.calls += 1;
            }
            start
        };
        if start {
            let call = Call {
                coalescer: Arc::clone(self),
                key: key.clone(),
            };
            tokio::spawn(call.run());
        }
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => B::unavailable("the call ended without an answer"),
            Err(_) => B::unavailable("no answer within the call timeout"),
        }
    }

    /// The next batch of `key`'s pending requests; `None` (and one call
    /// fewer in flight) when none is left.
    fn next_batch(&self, key: &B::Key) -> Option<Vec<Waiting<B>>> {
        let mut all = self.pending.lock().expect("lock");
        let pending = all.get_mut(key)?;
        // Requests that have given up (their deadline passed, or the
        // client went away) are not sent: a join answered 503 must not
        // happen afterwards.
        pending.waiting.retain(|w| !w.reply.is_closed());
        if pending.waiting.is_empty() {
            pending.calls -= 1;
            if pending.calls == 0 {
                all.remove(key);
            }
            return None;
        }
        let n = pending.waiting.len().min(MAX_BATCH);
        Some(pending.waiting.drain(..n).collect())
    }
}

/// One call slot of one key: answers batches until none is pending.
struct Call<B: Batch> {
    coalescer: Arc<Coalescer<B>>,
    key: B::Key,
}

impl<B: Batch> Call<B> {
    async fn run(self) {
        while let Some(batch) = self.coalescer.next_batch(&self.key) {
            metrics::histogram!("boxoffice_script_batch", "script" => B::SCRIPT)
                .record(batch.len() as f64);
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.reply)).unzip();
            let answers = self.coalescer.batch.answer(&self.key, requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The client may have gone: its answer is dropped.
                let _ = reply.send(answer);
            }
        }
    }
}

impl<B: Batch> Drop for Call<B> {
    /// A call that ends early (a panic while answering) gives its slot
    /// back; when it was the key's last, the pending requests are
    /// dropped and answered [`Batch::unavailable`] rather than left
    /// waiting for a call that no longer comes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut all = self
            .coalescer
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = all.get_mut(&self.key) {
            pending.calls -= 1;
            if pending.calls == 0 {
                all.remove(&self.key);
            }
        }
    }
}

/// The error of a request that got no answer from its call.
pub fn unavailable(reason: &'static str) -> StoreError {
    StoreError::Unavailable {
        dep: Dependency::Redis,
        reason: reason.into(),
    }
}

/// A batched script answers each request it was given, in order; any
/// other count is a bug, answered as such for the whole call rather than
/// pairing answers with the wrong requests or dropping some.
///
/// # Errors
/// Internal, naming the script and both counts.
pub fn one_each(
    script: &super::redis::Script,
    answered: usize,
    asked: usize,
) -> Result<(), StoreError> {
    if answered == asked {
        return Ok(());
    }
    Err(StoreError::internal(
        Dependency::Redis,
        anyhow::anyhow!("{} answered {answered} of {asked} requests", script.name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis;

    #[test]
    fn a_batched_reply_answers_each_request_or_the_call_fails() {
        assert!(one_each(&redis::QUEUE_STATUS, 3, 3).is_ok());
        for (answered, asked) in [(2, 3), (4, 3), (0, 1)] {
            let e = one_each(&redis::JOIN_QUEUE, answered, asked).unwrap_err();
            assert!(matches!(e, StoreError::Internal { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("join_queue answered {answered} of {asked}")),
                "{e}"
            );
        }
    }
}
