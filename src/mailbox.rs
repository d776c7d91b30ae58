//! The one way into a worker's event loop from outside it.
//!
//! A worker's loop sleeps in `epoll_wait`, and mio allows it one
//! [`mio::Waker`]; the [`Mailbox`] owns that waker. Any thread (a thread
//! pool answering slow lookups, a Redis client, the signal handler through
//! [`Shutdown`](crate::Shutdown)) posts mail with a cloned handle; the loop
//! takes it between rounds and hands each event to the protocol
//! ([`Protocol::event`](crate::Protocol::event) for a connection,
//! [`Protocol::loop_event`](crate::Protocol::loop_event) for the loop), whose
//! replies take the same path as replies to lines: shared buffers, vectored
//! writes, `max_queue`.
//!
//! The mailbox is bounded: a full one hands the event back to the poster
//! ([`Refused::Full`]), who may retry later, drop it, or slow down; the loop
//! itself never blocks on it. Mail for a connection names it by [`ConnId`],
//! whose generation makes mail that arrives after the connection closed (and
//! its slot went to a new one) reach nobody.
//!
//! Shutdown is mail too, of its own kind: a flag that cannot be refused,
//! however full the queue is.

use crate::protocol::ConnId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};

/// Events a mailbox holds at most, per worker, unless configured otherwise.
pub const CAPACITY: usize = 4096;

/// Where an event goes.
pub(crate) enum Mail<E> {
    /// To the protocol, for this connection.
    To(ConnId, E),
    /// To the protocol, for the loop as a whole.
    Loop(E),
}

/// Why an event was not posted; it comes back to the poster.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<E> {
    /// The mailbox holds [`CAPACITY`] events already: try again later.
    Full(E),
    /// The event loop is gone (the server stopped).
    Closed(E),
}

impl<E> Refused<E> {
    /// The event that was not posted.
    pub fn into_inner(self) -> E {
        match self {
            Refused::Full(event) | Refused::Closed(event) => event,
        }
    }
}

impl<E> std::fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Full(_) => "mailbox full",
            Refused::Closed(_) => "event loop gone",
        })
    }
}

/// A handle that posts to one worker's event loop; `Send`, `Clone`, cheap.
pub struct Mailbox<E> {
    queue: SyncSender<Mail<E>>,
    bell: Arc<Bell>,
}

impl<E> Clone for Mailbox<E> {
    fn clone(&self) -> Self {
        Mailbox {
            queue: self.queue.clone(),
            bell: self.bell.clone(),
        }
    }
}

/// What wakes the loop: its one waker, rung once per batch of mail.
pub(crate) struct Bell {
    waker: mio::Waker,
    /// The loop was woken and has not taken its mail yet: no need to ring.
    rung: AtomicBool,
    /// Shutdown was posted.
    shutdown: AtomicBool,
}

impl Bell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            // A loop that has exited has nobody to wake.
            let _ = self.waker.wake();
        }
    }

    /// Posts shutdown: it cannot be refused.
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.rung.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

impl<E> Mailbox<E> {
    /// Posts `event` to the protocol for connection `to`; it is dropped
    /// unread if that connection has closed by then.
    pub fn post(&self, to: ConnId, event: E) -> Result<(), Refused<E>> {
        self.send(Mail::To(to, event))
    }

    /// Posts `event` to the protocol for the loop as a whole (for example
    /// a room's message to fan out to its members on this loop).
    pub fn post_loop(&self, event: E) -> Result<(), Refused<E>> {
        self.send(Mail::Loop(event))
    }

    fn send(&self, mail: Mail<E>) -> Result<(), Refused<E>> {
        let unwrap = |mail| match mail {
            Mail::To(_, event) | Mail::Loop(event) => event,
        };
        match self.queue.try_send(mail) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(mail)) => Err(Refused::Full(unwrap(mail))),
            Err(TrySendError::Disconnected(mail)) => Err(Refused::Closed(unwrap(mail))),
        }
    }
}

/// The loop's end of a mailbox.
pub(crate) struct Letterbox<E> {
    queue: Receiver<Mail<E>>,
    bell: Arc<Bell>,
}

/// A new mailbox of `capacity` events whose bell is `waker`.
pub(crate) fn mailbox<E>(waker: mio::Waker, capacity: usize) -> (Mailbox<E>, Letterbox<E>) {
    let (sender, receiver) = sync_channel(capacity);
    let bell = Arc::new(Bell {
        waker,
        rung: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
    });
    let mailbox = Mailbox {
        queue: sender,
        bell: bell.clone(),
    };
    let letterbox = Letterbox {
        queue: receiver,
        bell,
    };
    (mailbox, letterbox)
}

impl<E> Letterbox<E> {
    /// The bell, for [`Shutdown`](crate::Shutdown) to ring.
    pub(crate) fn bell(&self) -> Arc<Bell> {
        self.bell.clone()
    }

    /// True once shutdown was posted.
    pub(crate) fn shutdown(&self) -> bool {
        self.bell.shutdown.load(Ordering::SeqCst)
    }

    /// Takes up to `most` events, oldest first, into `into`; true when more
    /// may be waiting.
    pub(crate) fn take(&self, most: usize, into: &mut Vec<Mail<E>>) -> bool {
        // Cleared first: a post after this rings again.
        self.bell.rung.store(false, Ordering::SeqCst);
        while into.len() < most {
            match self.queue.try_recv() {
                Ok(mail) => into.push(mail),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_closed_mailboxes_hand_the_event_back() {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let (mailbox, letterbox) = mailbox::<u32>(waker, 2);
        let id = ConnId::new(1, 7);
        assert_eq!(mailbox.post(id, 1), Ok(()));
        assert_eq!(mailbox.post_loop(2), Ok(()));
        assert_eq!(mailbox.post(id, 3), Err(Refused::Full(3)));
        let mut got = Vec::new();
        assert!(!letterbox.take(10, &mut got));
        let got: Vec<_> = got
            .into_iter()
            .map(|mail| match mail {
                Mail::To(to, n) => (Some(to), n),
                Mail::Loop(n) => (None, n),
            })
            .collect();
        assert_eq!(got, [(Some(id), 1), (None, 2)]);
        let other = mailbox.clone();
        std::thread::spawn(move || other.post(id, 4).unwrap())
            .join()
            .unwrap();
        drop(letterbox);
        assert_eq!(mailbox.post(id, 5), Err(Refused::Closed(5)));
    }
}
