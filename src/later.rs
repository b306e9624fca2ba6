//! Work retried in the background after a store did not answer: an
//! `Idempotency-Key` claim to give back (`idempotency`), the hold of a
//! payment attempt that lost an answer (`payments::pay`). One rule for
//! both: how many may wait at once, and how often and how long each tries.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// What one try found.
pub enum Step {
    /// Done, and how (the metric's label).
    Done(&'static str),
    /// Not yet; how it ended (the label) if the time is up.
    Again(&'static str),
}

/// One kind of background retry, with a bound on how many wait at once:
/// past it the caller gives up at once, as if the process had crashed.
pub struct Later {
    running: AtomicUsize,
    most: usize,
}

/// A place among the retries of a [`Later`], held for as long as the
/// retry runs.
pub struct Slot(&'static Later);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Later {
    pub const fn new(most: usize) -> Self {
        Self {
            running: AtomicUsize::new(0),
            most,
        }
    }

    /// The most that may wait at once.
    pub fn most(&self) -> usize {
        self.most
    }

    /// A place for one more retry, or none when the most already wait.
    pub fn slot(&'static self) -> Option<Slot> {
        if self.running.fetch_add(1, Ordering::Relaxed) >= self.most {
            self.running.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self))
    }
}

/// Tries after 250 ms, then at doubling intervals up to `longest`, until a
/// try is [`Step::Done`] or `window` has passed; returns the last try's
/// label. Each try goes through the store's breaker, so a store that is
/// down costs nothing and an overloaded one little.
pub async fn retry<F, Fut>(window: Duration, longest: Duration, mut try_once: F) -> &'static str
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step>,
{
    let until = Instant::now() + window;
    let mut pause = Duration::from_millis(250);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(longest);
        match try_once().await {
            Step::Done(found) => return found,
            Step::Again(found) if Instant::now() >= until => return found,
            Step::Again(_) => {}
        }
    }
}
