//! [`Link`]: the tier's one multiplexed Redis connection, opened by the tier itself (never
//! one the user's own code shares), reopened after it breaks.
//!
//! Invariants:
//! - At most one connection attempt runs at a time, in a task of its own that ends within
//!   the connect timeout; callers wait for it with their own operation's timeout, so a
//!   cancelled caller never cancels the attempt others wait for.
//! - The attempt holds no strong reference to the link: a tier dropped while it connects
//!   drops the new connection as soon as the attempt ends, and with it the connection's
//!   driver task. A dropped link leaves no task and no connection behind.
//! - The state lock is a plain mutex held for a few field moves: never across an `.await`,
//!   never around user code.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::watch;

/// One connection, shared by every operation of a tier (clones of a
/// `MultiplexedConnection` pipeline over one socket).
pub(crate) struct Link {
    client: Client,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// Coherence's connect hook (`tracking.rs`): a push sender per connection, and
    /// `CLIENT TRACKING` turned on before the connection is handed out.
    tracking: Option<Arc<crate::tracking::Coherence>>,
}

enum State {
    /// No connection and no attempt: the next caller starts one. Holds the last attempt's
    /// error, if it failed.
    Down(Option<Arc<str>>),
    /// An attempt runs; its sender says `true` when it has ended.
    Connecting(watch::Receiver<bool>),
    /// Connected. `id` tells this connection from a later one, so that a caller whose command
    /// failed on an old connection does not drop a new one.
    Up {
        id: u64,
        conn: MultiplexedConnection,
    },
}

/// Why no connection could be had.
pub(crate) type ConnectError = Arc<str>;

impl Link {
    pub(crate) fn new(
        client: Client,
        connect_timeout: Duration,
        tracking: Option<Arc<crate::tracking::Coherence>>,
    ) -> Arc<Link> {
        Arc::new(Link {
            client,
            connect_timeout,
            state: Mutex::new(State::Down(None)),
            tracking,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under this lock, but a poisoned one is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start connecting now, if no connection or attempt exists and a runtime is at hand.
    pub(crate) fn warm_up(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let mut state = self.state();
            if let State::Down(_) = *state {
                *state = State::Connecting(self.spawn_attempt());
            }
        }
    }

    /// The connection, connecting first if there is none. The caller bounds the wait.
    pub(crate) async fn conn(
        self: &Arc<Self>,
    ) -> Result<(u64, MultiplexedConnection), ConnectError> {
        loop {
            let mut ended = {
                let mut state = self.state();
                match &*state {
                    State::Up { id, conn } => return Ok((*id, conn.clone())),
                    State::Connecting(ended) => ended.clone(),
                    State::Down(_) => {
                        let ended = self.spawn_attempt();
                        *state = State::Connecting(ended.clone());
                        ended
                    }
                }
            };
            // The attempt sets the state before it says it has ended.
            let finished = ended.wait_for(|ended| *ended).await.is_ok();
            let mut state = self.state();
            if !finished {
                // The attempt's task ended without finishing (its runtime shut down).
                if matches!(&*state, State::Connecting(rx) if rx.same_channel(&ended)) {
                    *state = State::Down(Some("the connection attempt was cancelled".into()));
                }
            }
            match &*state {
                State::Up { id, conn } => return Ok((*id, conn.clone())),
                State::Down(Some(error)) => return Err(Arc::clone(error)),
                State::Down(None) => return Err("the connection attempt did not finish".into()),
                // A newer attempt started meanwhile: wait for it.
                State::Connecting(_) => continue,
            }
        }
    }

    /// After a command failed on connection `id`: if the failure means the connection is
    /// gone, forget it, so that the next caller reconnects.
    pub(crate) fn failed(&self, id: u64, error: &RedisError) {
        if !(error.is_unrecoverable_error() || error.is_connection_dropped() || error.is_io_error())
        {
            return;
        }
        let mut state = self.state();
        if matches!(&*state, State::Up { id: current, .. } if *current == id) {
            *state = State::Down(Some(error.to_string().into()));
        }
    }

    /// Spawn one connection attempt; the caller sets the state to `Connecting` with the
    /// receiver returned.
    fn spawn_attempt(self: &Arc<Self>) -> watch::Receiver<bool> {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (done, ended) = watch::channel(false);
        let link: Weak<Link> = Arc::downgrade(self);
        let client = self.client.clone();
        let timeout = self.connect_timeout;
        let tracking = self.tracking.clone();
        tokio::spawn(async move {
            let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // redis-rs bounds the TCP connect and handshake; the outer timeout bounds the rest.
            let mut config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(None);
            if let Some(tracking) = &tracking {
                config = tracking.configure(config, id);
            }
            let mut outcome = tokio::time::timeout(
                timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await;
            if let (Some(tracking), Ok(Ok(conn))) = (&tracking, &mut outcome) {
                tracking.connected(id, conn, timeout).await;
            }
            drop(tracking);
            let Some(link) = link.upgrade() else {
                return; // the tier is gone: the new connection, if any, is dropped here
            };
            let next = match outcome {
                Ok(Ok(conn)) => State::Up { id, conn },
                Ok(Err(error)) => State::Down(Some(format!("cannot connect: {error}").into())),
                Err(_) => State::Down(Some(
                    format!("cannot connect within the connect timeout ({timeout:?})").into(),
                )),
            };
            if let State::Down(Some(error)) = &next {
                tracing::debug!(target: "ebb_redis", %error, "connecting to Redis failed");
            }
            *link.state() = next;
            drop(link);
            let _ = done.send(true);
        });
        ended
    }
}
