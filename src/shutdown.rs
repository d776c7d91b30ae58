//! The one shutdown signal: triggered once (by SIGINT/SIGTERM or a test),
//! seen by every worker, which then stops accepting and drains.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A cloneable handle; all clones share one signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown of everything watching this signal.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        for waker in self.wakers().iter() {
            // A worker that already exited has nothing left to wake.
            let _ = waker.wake();
        }
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Triggers this signal on SIGINT or SIGTERM (from a background thread).
    pub fn trigger_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    this.trigger();
                }
            })?;
        Ok(())
    }

    /// Wakes `waker` on trigger (at once if already triggered).
    pub(crate) fn watch(&self, waker: Arc<mio::Waker>) {
        self.wakers().push(waker.clone());
        if self.is_triggered() {
            let _ = waker.wake();
        }
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<mio::Waker>>> {
        // A poisoned list is still a valid list of wakers.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
