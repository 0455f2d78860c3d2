//! The axum example in its Redis mode: a `TieredCache` in the app state, in front of a slow
//! store, so that several instances of the service share one Redis and stay coherent.
//!
//! This is the core's `examples/axum_service.rs` (the no-Redis mode: one process, a plain
//! `ebb_cache::Cache`) with its cache replaced by an `ebb_redis::TieredCache`: each instance
//! keeps its own L1, all of them read and write the same Redis namespace (`users:v1`), and
//! Redis's invalidations (`CLIENT TRACKING`, see `docs/coherence.md`) drop an instance's L1
//! copy when another instance writes the user. It needs a Redis: `REDIS_URL` is required
//! (without it, the example says so and exits; run the core's example instead).
//!
//! - `GET /users/{id}` reads through: this instance's L1, then Redis, then the store (with
//!   `get_with`, once per instance for all concurrent requests for that id). When Redis is
//!   down or slow, reads skip it (after `read_timeout`, or at once while the breaker is open)
//!   and keep serving from L1 and the store.
//! - `PUT /users/{id}` with a JSON body `{"name": "..."}` writes through: the store, then the
//!   tier (`insert`: Redis, then this instance's L1). Every other instance drops its copy when
//!   Redis's invalidation reaches it.
//! - `DELETE /users/{id}` removes the cached user from Redis and L1 (the store keeps it).
//! - `GET /stats` returns the tier's statistics, its coherence (tracking's state, the
//!   invalidations received) and the store's call counts as JSON.
//!
//! Run a Redis, then two instances on two ports:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3000 cargo run -p ebb-redis --example axum_service
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run -p ebb-redis --example axum_service
//! curl localhost:3001/users/7
//! curl -X PUT -H 'content-type: application/json' -d '{"name":"Ada"}' localhost:3000/users/7
//! curl localhost:3001/users/7    # "Ada": the write through 3000 dropped 3001's copy
//! curl localhost:3001/stats
//! ```
//!
//! Each instance has its own simulated store (a stand-in for a database the instances would
//! share): what keeps them coherent is the Redis namespace they share. A user that neither
//! Redis nor L1 holds loads from the instance's own store, so a name written through one
//! instance and since gone from Redis (a restarted Redis) is not known to the other. The
//! end-to-end test (`tests/e2e.rs`, which includes this file as a module) gives both
//! instances one store, through [`app`], as instances of one service sharing a database.
//!
//! Settings come from the environment: `REDIS_URL` (required), `PORT` (3000), `USERS_TTL_MS`
//! (the L1 TTL, 30000), `STORE_LATENCY_MS` (50) and `DEGRADED_TTL_MS` (how long an L1 copy
//! lives at most while tracking is down, 2000); the tier's other settings are its defaults.
//! On Ctrl-C the server stops gracefully.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ebb_redis::TieredCache;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The Redis namespace every instance reads and writes: keys are `users:v1:{id}`.
pub const NAMESPACE: &str = "users:v1";

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The port to listen on (on 127.0.0.1).
    pub port: u16,
    /// The shared Redis, `redis://host:port`.
    pub redis_url: String,
    /// How long an instance keeps a user in its L1 at most.
    pub ttl: Duration,
    /// How long each call to the simulated store takes.
    pub store_latency: Duration,
    /// How long a read waits for Redis before it goes to the store.
    pub read_timeout: Duration,
    /// How long a write waits for Redis before it fails.
    pub write_timeout: Duration,
    /// While tracking is down, how long an L1 copy lives at most.
    pub degraded_ttl: Duration,
    /// How often the tier checks that tracking is still on.
    pub tracking_ping_interval: Duration,
    /// How long the open breaker skips Redis before one call probes it.
    pub breaker_cooldown: Duration,
}

impl Config {
    /// The defaults (the tier's own), for the Redis at `redis_url`.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Config {
            port: 3000,
            redis_url: redis_url.into(),
            ttl: Duration::from_secs(30),
            store_latency: Duration::from_millis(50),
            read_timeout: ebb_redis::DEFAULT_READ_TIMEOUT,
            write_timeout: ebb_redis::DEFAULT_WRITE_TIMEOUT,
            degraded_ttl: ebb_redis::DEFAULT_DEGRADED_TTL,
            tracking_ping_interval: Duration::from_secs(1),
            breaker_cooldown: ebb_redis::DEFAULT_BREAKER_COOLDOWN,
        }
    }

    /// The defaults, overridden by whichever environment variables are set; `None` without
    /// `REDIS_URL`.
    pub fn from_env() -> Option<Self> {
        fn var(name: &str) -> Option<u64> {
            let value = std::env::var(name).ok()?;
            match value.parse() {
                Ok(n) => Some(n),
                Err(_) => panic!("{name}={value:?} is not a whole number"),
            }
        }
        let default = Config::new(std::env::var("REDIS_URL").ok()?);
        Some(Config {
            port: var("PORT").map_or(default.port, |p| {
                u16::try_from(p).expect("PORT is not a port number")
            }),
            ttl: var("USERS_TTL_MS").map_or(default.ttl, Duration::from_millis),
            store_latency: var("STORE_LATENCY_MS")
                .map_or(default.store_latency, Duration::from_millis),
            degraded_ttl: var("DEGRADED_TTL_MS")
                .map_or(default.degraded_ttl, Duration::from_millis),
            ..default
        })
    }
}

/// A user, as the store keeps it and the tier shares it (JSON in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// A stand-in for a database: every call takes `latency` and is counted.
#[derive(Debug, Default)]
pub struct Store {
    latency: Duration,
    /// Names written with `save`; any other id loads as `user {id}`.
    names: Mutex<HashMap<u64, String>>,
    loads: AtomicU64,
    saves: AtomicU64,
}

impl Store {
    pub fn new(latency: Duration) -> Self {
        Store {
            latency,
            ..Store::default()
        }
    }

    pub async fn load(&self, id: u64) -> User {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let name = self.names.lock().unwrap().get(&id).cloned();
        User {
            id,
            name: name.unwrap_or_else(|| format!("user {id}")),
        }
    }

    pub async fn save(&self, id: u64, name: String) -> User {
        self.saves.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.names.lock().unwrap().insert(id, name.clone());
        User { id, name }
    }

    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }
}

/// What every handler gets, cheaply cloned per request: the tier is an `Arc` inside.
#[derive(Clone)]
pub struct AppState {
    pub users: TieredCache<u64, User>,
    pub store: Arc<Store>,
}

/// Build the state (the tier connects to Redis in the background, on the current runtime)
/// and the router over it, in front of `store`. Returns the state as well, for callers that
/// want to look at it.
pub fn app(config: &Config, store: Arc<Store>) -> (Router, AppState) {
    let users = TieredCache::builder(NAMESPACE)
        .redis(config.redis_url.clone())
        .local_ttl(config.ttl)
        .read_timeout(config.read_timeout)
        .write_timeout(config.write_timeout)
        .degraded_ttl(config.degraded_ttl)
        .tracking_ping_interval(config.tracking_ping_interval)
        .breaker_cooldown(config.breaker_cooldown)
        .build();
    let state = AppState { users, store };
    let router = Router::new()
        .route(
            "/users/{id}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/stats", get(stats));
    (router.with_state(state.clone()), state)
}

/// Serve `router` on `listener` until `shutdown` completes, then finish the requests in
/// progress and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_user(State(state): State<AppState>, Path(id): Path<u64>) -> Json<User> {
    let store = Arc::clone(&state.store);
    // L1, then Redis (skipped when it fails or is slow), then the store; the loaded user is
    // written to both tiers.
    let user = state
        .users
        .get_with(id, async move { store.load(id).await })
        .await;
    Json(user)
}

async fn put_user(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<Json<User>, (StatusCode, Json<Value>)> {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        let error = json!({ "error": "expected a JSON body like {\"name\": \"Ada\"}" });
        return Err((StatusCode::UNPROCESSABLE_ENTITY, Json(error)));
    };
    // Store first, then the tier: Redis, whose invalidation reaches the other instances,
    // then this instance's L1.
    let user = state.store.save(id, name.to_owned()).await;
    if let Err(error) = state.users.insert(id, user.clone()).await {
        // The store has the user, so the write succeeded; the tier dropped this instance's
        // copy, and the next read here goes to Redis or the store. (A real service would
        // also retry the Redis write: a Redis that timed out may still hold the old value
        // until its remote TTL.)
        tracing::warn!(%error, id, "the user is saved, but Redis did not take the write");
    }
    Ok(Json(user))
}

async fn delete_user(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<StatusCode, (StatusCode, Json<Value>)> {
    match state.users.remove(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // This instance's copy is gone whatever Redis answered; Redis's may not be.
        Err(error) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error.to_string() })),
        )),
    }
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    let tier = state.users.stats();
    let coherence = state.users.coherence_stats();
    Json(json!({
        "namespace": state.users.namespace(),
        "l1_hits": tier.l1_hits,
        "l2_hits": tier.l2_hits,
        "l2_misses": tier.l2_misses,
        "loads": tier.loads,
        "redis_timeouts": tier.redis_timeouts,
        "redis_connection_errors": tier.redis_connection_errors,
        "redis_skipped": tier.redis_skipped,
        "breaker_trips": tier.breaker_trips,
        "connections": tier.connections,
        "tracking": format!("{:?}", coherence.state),
        "invalidations": coherence.invalidations,
        "tracking_losses": coherence.losses,
        "tracking_confirmations": coherence.confirmations,
        "store_loads": state.store.loads(),
        "store_saves": state.store.saves(),
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    use std::io::IsTerminal;

    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    // The tier's state changes (connections, breaker, tracking) and everything else at info.
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .with(Targets::new().with_default(Level::INFO))
        .init();

    let Some(config) = Config::from_env() else {
        eprintln!(
            "REDIS_URL is not set: this example needs a Redis, for instance\n    \
             REDIS_URL=redis://127.0.0.1:6379 cargo run -p ebb-redis --example axum_service\n\
             (the core's `cargo run --example axum_service` is the same service without Redis)"
        );
        std::process::exit(2);
    };
    let store = Arc::new(Store::new(config.store_latency));
    let (router, state) = app(&config, store);
    drop(state);

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], config.port))).await?;
    // Not the whole config: REDIS_URL may hold a password.
    tracing::info!(addr = %listener.local_addr()?, namespace = NAMESPACE, "listening; Ctrl-C to stop");
    serve(listener, router, async {
        tokio::signal::ctrl_c()
            .await
            .expect("cannot listen for Ctrl-C");
        tracing::info!("Ctrl-C: finishing the requests in progress");
    })
    .await?;
    tracing::info!("server stopped");
    Ok(())
}
