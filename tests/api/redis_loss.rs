//! Invariant 11 on a single Redis: restarted empty mid-sale.
