//! The one shutdown signal: triggered once (by SIGINT/SIGTERM or a test),
//! posted to every worker's mailbox (as mail that cannot be refused), which
//! then stops accepting and drains.

use crate::mailbox::Bell;
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
    bells: Mutex<Vec<Arc<Bell>>>,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown of everything watching this signal.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        for bell in self.bells().iter() {
            bell.shutdown();
        }
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Triggers this signal on SIGINT or SIGTERM (from a background thread);
    /// a second one ends the process at once (exit 130 for SIGINT, 143 for
    /// SIGTERM), as a second Ctrl-C does for most tools.
    pub fn trigger_on_signals(&self) -> io::Result<()> {
        self.trigger_on_signals_then(|| {})
    }

    /// [`trigger_on_signals`](Self::trigger_on_signals), calling `draining`
    /// at the first signal (to say what the process now does).
    pub fn trigger_on_signals_then(&self, draining: impl Fn() + Send + 'static) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut signals = signals.forever();
                if signals.next().is_none() {
                    return;
                }
                this.trigger();
                draining();
                if let Some(again) = signals.next() {
                    std::process::exit(128 + again);
                }
            })?;
        Ok(())
    }

    /// Posts shutdown to the mailbox whose bell this is, on trigger (at
    /// once if already triggered).
    pub(crate) fn watch(&self, bell: Arc<Bell>) {
        self.bells().push(bell.clone());
        if self.is_triggered() {
            bell.shutdown();
        }
    }

    fn bells(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Bell>>> {
        // A poisoned list is still a valid list of bells.
        self.inner
            .bells
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
