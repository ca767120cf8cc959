//! A count of what is in flight, and waiting until there is none.

use std::sync::Arc;

/// Counts what is in flight (tool calls; HTTP responses being written; receipts being committed);
/// [`InFlight::idle`] resolves when there is none.
#[derive(Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One thing in flight; counted until dropped.
pub struct Entered(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> Entered {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Entered(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Entered {
    /// Keeps the count held by whatever owns this (a closure that must capture it).
    pub fn hold(&self) {}
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}
