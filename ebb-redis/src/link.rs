//! [`Link`]: the tier's one multiplexed Redis connection, opened by the tier itself (never
//! one the user's own code shares), reopened in the background after it breaks.
//!
//! Invariants:
//! - At most one connection task runs at a time. It tries to connect (each attempt within
//!   the connect timeout) until it succeeds, sleeping between attempts with an exponential
//!   backoff ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], jittered); callers wait for an
//!   attempt in progress with their own operation's timeout, so a cancelled caller never
//!   cancels the attempt others wait for, and while the task sleeps between attempts,
//!   callers fail at once instead of waiting.
//! - The task holds no strong reference to the link: a tier dropped while it connects (or
//!   backs off) ends the task at its next step, and drops the new connection, if any, and
//!   with it the connection's driver task. A dropped link leaves no task and no connection.
//! - A connection is dropped when a command fails with an I/O error or a dropped connection,
//!   and when timeouts open the breaker (a connection can die without an error).
//! - Every change (connected, lost, an attempt failed) is a `tracing` event and a counter.
//! - The state lock is a plain mutex held for a few field moves: never across an `.await`,
//!   never around user code.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::watch;

use crate::stats::{Counters, Event};

/// The first pause between two failed connection attempts.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause between two failed connection attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One connection, shared by every operation of a tier (clones of a
/// `MultiplexedConnection` pipeline over one socket).
pub(crate) struct Link {
    client: Client,
    connect_timeout: Duration,
    state: Mutex<State>,
    counters: Arc<Counters>,
    namespace: String,
    /// The connect hook (coherence's, in `tracking.rs`: a push sender per connection, and
    /// `CLIENT TRACKING` turned on before the connection is handed out).
    tracking: Option<Arc<dyn ConnectHook>>,
}

enum State {
    /// No connection and no connection task: the next caller starts one (before the first
    /// call of a tier built outside a runtime).
    Idle,
    /// An attempt runs; its sender says `true` when it has ended.
    Connecting(watch::Receiver<bool>),
    /// The connection task sleeps before its next attempt; the last attempt's error.
    Backoff(Arc<str>),
    /// Connected. `id` tells this connection from a later one, so that a caller whose command
    /// failed on an old connection does not drop a new one.
    Up {
        id: u64,
        conn: MultiplexedConnection,
    },
}

/// What a layer above does to each new connection before the link hands it out (coherence,
/// in `tracking.rs`); the link knows nothing else of it.
pub(crate) trait ConnectHook: Send + Sync + 'static {
    /// The config to open the connection numbered `conn` with.
    fn configure(&self, config: AsyncConnectionConfig, conn: u64) -> AsyncConnectionConfig;
    /// The connection numbered `conn` is open: prepare it, within `limit`.
    fn connected<'a>(
        &'a self,
        conn: u64,
        connection: &'a mut MultiplexedConnection,
        limit: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// Why no connection could be had.
pub(crate) type ConnectError = Arc<str>;

impl Link {
    pub(crate) fn new(
        client: Client,
        connect_timeout: Duration,
        counters: Arc<Counters>,
        namespace: String,
        tracking: Option<Arc<dyn ConnectHook>>,
    ) -> Arc<Link> {
        Arc::new(Link {
            client,
            connect_timeout,
            state: Mutex::new(State::Idle),
            counters,
            namespace,
            tracking,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under this lock, but a poisoned one is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start connecting now, if no connection or connection task exists and a runtime is at
    /// hand.
    pub(crate) fn warm_up(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let mut state = self.state();
            if let State::Idle = *state {
                *state = State::Connecting(self.spawn_connector());
            }
        }
    }

    /// The connection if it is up now, without waiting (the usual case); `None` otherwise,
    /// when [`conn`](Self::conn) says what to do.
    pub(crate) fn up(&self) -> Option<(u64, MultiplexedConnection)> {
        match &*self.state() {
            State::Up { id, conn } => Some((*id, conn.clone())),
            _ => None,
        }
    }

    /// The connection, waiting for an attempt in progress; an error at once while the
    /// connection task backs off. The caller bounds the wait.
    pub(crate) async fn conn(
        self: &Arc<Self>,
    ) -> Result<(u64, MultiplexedConnection), ConnectError> {
        loop {
            let mut ended = {
                let mut state = self.state();
                match &*state {
                    State::Up { id, conn } => return Ok((*id, conn.clone())),
                    State::Backoff(error) => return Err(Arc::clone(error)),
                    State::Connecting(ended) => ended.clone(),
                    State::Idle => {
                        let ended = self.spawn_connector();
                        *state = State::Connecting(ended.clone());
                        ended
                    }
                }
            };
            // The task sets the state before it says the attempt has ended.
            let finished = ended.wait_for(|ended| *ended).await.is_ok();
            let mut state = self.state();
            if !finished {
                // The task ended without finishing (its runtime shut down).
                if matches!(&*state, State::Connecting(rx) if rx.same_channel(&ended)) {
                    *state = State::Idle;
                }
                return Err("the connection attempt was cancelled".into());
            }
            match &*state {
                State::Up { id, conn } => return Ok((*id, conn.clone())),
                State::Backoff(error) => return Err(Arc::clone(error)),
                State::Idle => return Err("the connection attempt did not finish".into()),
                // A newer attempt started meanwhile: wait for it.
                State::Connecting(_) => continue,
            }
        }
    }

    /// After a command failed on connection `id`: if the failure means the connection is
    /// gone, forget it and reconnect in the background.
    pub(crate) fn failed(self: &Arc<Self>, id: u64, error: &RedisError) {
        if !connection_lost(error) {
            return;
        }
        let mut state = self.state();
        if matches!(&*state, State::Up { id: current, .. } if *current == id) {
            *state = State::Connecting(self.spawn_connector());
            drop(state);
            tracing::warn!(
                target: "ebb_redis",
                namespace = %self.namespace,
                %error,
                "the Redis connection is lost: reconnecting in the background"
            );
        }
    }

    /// Drop the connection, if there is one, and reconnect in the background (after
    /// timeouts opened the breaker).
    pub(crate) fn reconnect(self: &Arc<Self>) {
        let mut state = self.state();
        if matches!(&*state, State::Up { .. }) {
            *state = State::Connecting(self.spawn_connector());
            drop(state);
            tracing::warn!(
                target: "ebb_redis",
                namespace = %self.namespace,
                "Redis stopped answering: reconnecting in the background"
            );
        }
    }

    /// Spawn the connection task; the caller sets the state to `Connecting` with the
    /// receiver returned.
    fn spawn_connector(self: &Arc<Self>) -> watch::Receiver<bool> {
        let (done, ended) = watch::channel(false);
        let link: Weak<Link> = Arc::downgrade(self);
        let client = self.client.clone();
        let timeout = self.connect_timeout;
        // Weak: a tier dropped while this task backs off ends its coherence monitor at once.
        let tracking = self.tracking.as_ref().map(Arc::downgrade);
        tokio::spawn(connect(link, client, timeout, done, tracking));
        ended
    }
}

/// Whether a command's error means the connection is gone.
pub(crate) fn connection_lost(error: &RedisError) -> bool {
    error.is_unrecoverable_error() || error.is_connection_dropped() || error.is_io_error()
}

/// The connection task: attempt, back off, attempt again, until connected or the link is
/// gone.
async fn connect(
    link: Weak<Link>,
    client: Client,
    timeout: Duration,
    mut done: watch::Sender<bool>,
    tracking: Option<Weak<dyn ConnectHook>>,
) {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0_u32;
    loop {
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // redis-rs bounds the TCP connect and handshake; the outer timeout bounds the rest.
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let hook = tracking.as_ref().and_then(Weak::upgrade);
        if let Some(hook) = &hook {
            config = hook.configure(config, id);
        }
        let mut outcome = tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        if let (Some(hook), Ok(Ok(conn))) = (&hook, &mut outcome) {
            hook.connected(id, conn, timeout).await;
        }
        drop(hook);
        let Some(strong) = link.upgrade() else {
            return; // the tier is gone: the new connection, if any, is dropped here
        };
        let error: Arc<str> = match outcome {
            Ok(Ok(conn)) => {
                *strong.state() = State::Up { id, conn };
                strong.counters.count(Event::Connected);
                tracing::info!(
                    target: "ebb_redis",
                    namespace = %strong.namespace,
                    failed_attempts = failures,
                    "connected to Redis"
                );
                let _ = done.send(true);
                return;
            }
            Ok(Err(error)) => format!("cannot connect: {error}").into(),
            Err(_) => format!("cannot connect within the connect timeout ({timeout:?})").into(),
        };
        failures += 1;
        *strong.state() = State::Backoff(Arc::clone(&error));
        strong.counters.count(Event::ConnectFailed);
        let pause = jittered(backoff);
        tracing::warn!(
            target: "ebb_redis",
            namespace = %strong.namespace,
            %error,
            attempt = failures,
            next_attempt_in = ?pause,
            "connecting to Redis failed"
        );
        drop(strong);
        let _ = done.send(true);
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let Some(strong) = link.upgrade() else {
            return;
        };
        let (next_done, ended) = watch::channel(false);
        *strong.state() = State::Connecting(ended);
        done = next_done;
    }
}

/// `pause` spread by ±20 %, so that replicas that lost Redis together do not reconnect in
/// lockstep.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.8 + 0.4 * crate::config::unit_random())
}
