//! Room for a new client when every connection slot is taken: the connections that hold a
//! slot without doing any work give it up, so that silent clients cannot lock real ones
//! (kube-apiserver, kubelet probes) out of the server until their deadlines pass.
//!
//! Every connection holds a [`Seat`] for its life. A seat with no request in flight can
//! be shed; the accept loop sheds one only when a new client arrives and no slot is free.
//! Which one: a connection that has never had a request (still in the TLS handshake, or
//! silent after it) before one that has served requests and is idle; among each kind the
//! one that has been quiet the longest. Such a connection has cost the server nothing
//! worth keeping, and its client, if real, reconnects (kube-apiserver retries a review on
//! a reset connection). A connection with a request in flight is never shed: when every
//! slot has one, new clients wait in the listen backlog as before.
//!
//! What it does not do: count or bound the connections (the slots in `conn` do), or close
//! a connection itself: the shed one's task sees the signal and returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, oneshot};

/// The seats of the open connections.
#[derive(Debug, Default)]
pub(super) struct Seats {
    state: Mutex<State>,
    /// Woken when a seat becomes sheddable.
    sheddable: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Ticks on every registration and every return to idle: the order of quiet.
    clock: u64,
    next_id: u64,
    seats: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    in_flight: usize,
    served: bool,
    quiet_since: u64,
    /// Taken when the connection is shed.
    shed: Option<oneshot::Sender<()>>,
}

impl Entry {
    /// Shed order: smaller first (never served, then longest quiet).
    fn rank(&self) -> Option<(bool, u64)> {
        (self.in_flight == 0 && self.shed.is_some()).then_some((self.served, self.quiet_since))
    }
}

impl Seats {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A seat for a new connection, sheddable until its first request, and the signal
    /// that it was shed.
    pub(super) fn take(self: &Arc<Self>) -> (Seat, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.lock();
            state.clock += 1;
            let id = state.next_id;
            state.next_id += 1;
            let entry = Entry {
                in_flight: 0,
                served: false,
                quiet_since: state.clock,
                shed: Some(tx),
            };
            state.seats.insert(id, entry);
            id
        };
        self.sheddable.notify_waiters();
        let seat = Seat(SeatHandle {
            seats: self.clone(),
            id,
        });
        (seat, rx)
    }

    /// Signals the connection first in shed order to close. False when none can be shed.
    pub(super) fn shed_one(&self) -> bool {
        let mut state = self.lock();
        let victim = state
            .seats
            .iter()
            .filter_map(|(id, entry)| entry.rank().map(|rank| (rank, *id)))
            .min()
            .map(|(_, id)| id);
        let Some(entry) = victim.and_then(|id| state.seats.get_mut(&id)) else {
            return false;
        };
        if let Some(shed) = entry.shed.take() {
            // A failed send means the connection task has ended on its own: its slot is
            // back (or coming back) all the same.
            let _ = shed.send(());
        }
        true
    }

    /// Whether some connection can be shed.
    fn any_sheddable(&self) -> bool {
        self.lock()
            .seats
            .values()
            .any(|entry| entry.rank().is_some())
    }

    /// Returns once some connection can be shed.
    pub(super) async fn until_sheddable(&self) {
        loop {
            let notified = self.sheddable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.any_sheddable() {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's place in [`Seats`], owned by its task; it leaves when dropped, even if
/// requests of the connection still finish elsewhere (HTTP/2 streams run on their own
/// tasks).
#[derive(Debug)]
pub(super) struct Seat(SeatHandle);

impl Seat {
    /// A handle for the connection's requests to report on.
    pub(super) fn handle(&self) -> SeatHandle {
        self.0.clone()
    }
}

/// Reports a connection's requests to its seat; does nothing once the seat is gone.
#[derive(Clone, Debug)]
pub(super) struct SeatHandle {
    seats: Arc<Seats>,
    id: u64,
}

impl SeatHandle {
    /// A request started on the connection: not sheddable until it ends.
    pub(super) fn enter(&self) {
        if let Some(entry) = self.seats.lock().seats.get_mut(&self.id) {
            entry.in_flight += 1;
        }
    }

    /// A request ended (answered or abandoned).
    pub(super) fn leave(&self) {
        let now_sheddable = {
            let mut state = self.seats.lock();
            state.clock += 1;
            let clock = state.clock;
            match state.seats.get_mut(&self.id) {
                Some(entry) => {
                    entry.in_flight = entry.in_flight.saturating_sub(1);
                    entry.served = true;
                    entry.quiet_since = clock;
                    entry.rank().is_some()
                }
                None => false,
            }
        };
        if now_sheddable {
            self.seats.sheddable.notify_waiters();
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.seats.lock().seats.remove(&self.0.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_never_served_before_idle_and_oldest_first_never_busy() {
        let seats = Arc::new(Seats::default());
        let (served, mut served_rx) = seats.take();
        served.handle().enter();
        served.handle().leave();
        let (_old, mut old_rx) = seats.take();
        let (busy, mut busy_rx) = seats.take();
        let busy = busy.handle();
        busy.enter();
        let (_new, mut new_rx) = seats.take();

        assert!(seats.shed_one());
        assert!(
            old_rx.try_recv().is_ok(),
            "the oldest silent one goes first"
        );
        assert!(seats.shed_one());
        assert!(new_rx.try_recv().is_ok());
        assert!(seats.shed_one());
        assert!(served_rx.try_recv().is_ok(), "then the idle one");
        assert!(!seats.shed_one(), "a busy connection is never shed");
        assert!(busy_rx.try_recv().is_err());
        busy.leave();
        assert!(seats.shed_one());
        assert!(busy_rx.try_recv().is_ok());
    }

    #[tokio::test]
    async fn until_sheddable_wakes_when_a_request_ends() {
        let seats = Arc::new(Seats::default());
        let (seat, _rx) = seats.take();
        let busy = seat.handle();
        busy.enter();
        let waiter = {
            let seats = seats.clone();
            tokio::spawn(async move { seats.until_sheddable().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        busy.leave();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("not woken")
            .expect("waiter panicked");
    }
}
