#![cfg(not(loom))]
//! An axum service with an ebb cache in its app state, in front of a slow store.
//!
//! - `GET /users/{id}` reads through the cache: a miss loads from the store with `get_with`,
//!   once for all concurrent requests for that id.
//! - `PUT /users/{id}` with a JSON body `{"name": "..."}` writes through: store, then cache.
//! - `DELETE /users/{id}` invalidates the cached entry (the store keeps the user).
//! - `GET /stats` returns the cache's statistics and the store's call counts as JSON.
//! - `GET /metrics` (with ebb's `metrics` feature, which `cargo run --example` turns on)
//!   publishes the cache's metrics and renders them in Prometheus's text format, through
//!   `metrics-exporter-prometheus`'s recorder: `ebb_cache_hits_total{cache="users"}` and the
//!   rest of `docs/metrics.md`.
//!
//! The cache is built once, into the state; handlers get clones of it through `State`. Its
//! expiry task logs `expiry task started`; on Ctrl-C the server stops gracefully, the state
//! is dropped, and the task logs `expiry task stopped` and ends: no task is left alive.
//!
//! Run with: `cargo run --example axum_service`, then for instance
//!
//! ```text
//! curl localhost:3000/users/7
//! curl -X PUT -H 'content-type: application/json' -d '{"name":"Ada"}' localhost:3000/users/7
//! curl -X DELETE localhost:3000/users/7
//! curl localhost:3000/stats
//! curl localhost:3000/metrics
//! ```
//!
//! Settings come from the environment: `PORT` (3000), `USERS_TTL_MS` (30000), `TICK_MS`
//! (100), `STATS_INTERVAL_SECS` (10) and `STORE_LATENCY_MS` (50).
//!
//! `tests/e2e.rs` includes this file as a module and drives [`app`] and [`serve`] over HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "metrics")]
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
#[cfg(feature = "metrics")]
use axum::http::header;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ebb_cache::Cache;
#[cfg(feature = "metrics")]
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The port to listen on (on 127.0.0.1).
    pub port: u16,
    /// How long a user stays cached after it is loaded or written.
    pub ttl: Duration,
    /// The cache's tick: an expired user leaves the cache at most this long after its TTL.
    pub tick: Duration,
    /// How often the cache logs its statistics line (if it had lookups).
    pub stats_interval: Duration,
    /// How long each call to the simulated store takes.
    pub store_latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 3000,
            ttl: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            stats_interval: Duration::from_secs(10),
            store_latency: Duration::from_millis(50),
        }
    }
}

impl Config {
    /// The defaults, overridden by whichever environment variables are set.
    pub fn from_env() -> Self {
        fn var(name: &str) -> Option<u64> {
            let value = std::env::var(name).ok()?;
            match value.parse() {
                Ok(n) => Some(n),
                Err(_) => panic!("{name}={value:?} is not a whole number"),
            }
        }
        let default = Config::default();
        Config {
            port: var("PORT").map_or(default.port, |p| {
                u16::try_from(p).expect("PORT is not a port number")
            }),
            ttl: var("USERS_TTL_MS").map_or(default.ttl, Duration::from_millis),
            tick: var("TICK_MS").map_or(default.tick, Duration::from_millis),
            stats_interval: var("STATS_INTERVAL_SECS")
                .map_or(default.stats_interval, Duration::from_secs),
            store_latency: var("STORE_LATENCY_MS")
                .map_or(default.store_latency, Duration::from_millis),
        }
    }
}

/// A user, as the store keeps it and the cache shares it.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub name: String,
}

impl User {
    fn to_json(&self) -> Value {
        json!({ "id": self.id, "name": self.name })
    }
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

    pub async fn load(&self, id: u64) -> Arc<User> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let name = self.names.lock().unwrap().get(&id).cloned();
        Arc::new(User {
            id,
            name: name.unwrap_or_else(|| format!("user {id}")),
        })
    }

    pub async fn save(&self, id: u64, name: String) -> Arc<User> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.names.lock().unwrap().insert(id, name.clone());
        Arc::new(User { id, name })
    }

    /// Every call so far: loads and saves.
    pub fn calls(&self) -> u64 {
        self.loads() + self.saves()
    }

    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }
}

/// What every handler gets, cheaply cloned per request: ebb handles are `Arc`s inside.
#[derive(Clone)]
pub struct AppState {
    pub users: Cache<u64, Arc<User>>,
    pub store: Arc<Store>,
}

/// Build the state (its cache spawns its expiry task on the current runtime) and the
/// router over it. Returns the state as well, for callers that want to look at it; drop
/// your copy when you are done, or the cache lives on.
pub fn app(config: &Config) -> (Router, AppState) {
    let state = AppState {
        users: Cache::builder()
            .name("users")
            .time_to_live(config.ttl)
            .tick(config.tick)
            .record_stats() // the counters behind `GET /stats` and `GET /metrics`
            .stats_interval(config.stats_interval) // the periodic log line
            .build(),
        store: Arc::new(Store::new(config.store_latency)),
    };
    let router = Router::new()
        .route(
            "/users/{id}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/stats", get(stats));
    // The recorder goes in before the cache first publishes (at the first scrape).
    #[cfg(feature = "metrics")]
    let router = {
        prometheus();
        router.route("/metrics", get(metrics))
    };
    (router.with_state(state.clone()), state)
}

/// The process's Prometheus recorder, installed globally the first time it is asked for.
#[cfg(feature = "metrics")]
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Serve `router` on `listener` until `shutdown` completes, then finish the requests in
/// progress and return. The router, and the state it holds, is dropped on return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_user(State(state): State<AppState>, Path(id): Path<u64>) -> Json<Value> {
    let store = Arc::clone(&state.store);
    let user = state
        .users
        .get_with(id, async move { store.load(id).await })
        .await;
    Json(user.to_json())
}

async fn put_user(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        let error = json!({ "error": "expected a JSON body like {\"name\": \"Ada\"}" });
        return Err((StatusCode::UNPROCESSABLE_ENTITY, Json(error)));
    };
    // Store first, then cache: a load racing with this write cannot overwrite it, because
    // in ebb a write wins over a load in flight for the same key.
    let user = state.store.save(id, name.to_owned()).await;
    state.users.insert(id, Arc::clone(&user));
    Ok(Json(user.to_json()))
}

async fn delete_user(State(state): State<AppState>, Path(id): Path<u64>) -> StatusCode {
    state.users.remove(&id);
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    let stats = state.users.stats();
    // Every counter, as `CacheStats` serializes it (the crate's `serde` feature)...
    let mut body = serde_json::to_value(stats).expect("stats serialize");
    // ...with the cache's name, the hit ratio, and the simulated store's own counts.
    let extra = json!({
        "cache": state.users.name(),
        "hit_ratio": stats.hit_ratio(),
        "store_calls": state.store.calls(),
        "store_loads": state.store.loads(),
        "store_saves": state.store.saves(),
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Json(body)
}

/// `GET /metrics`: publish now, so that the scrape is exact, then render. The cache was built
/// with `record_stats()` and no `publish_metrics(interval)`: published at scrape time only,
/// it never wakes up to publish.
#[cfg(feature = "metrics")]
async fn metrics(
    State(state): State<AppState>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    state.users.publish_metrics();
    let body = prometheus().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    use std::io::IsTerminal;

    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    // ebb's debug events (its expiry task starting and stopping, in a span `ebb{cache=..}`)
    // and its stats line; info for everything else.
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .with(
            Targets::new()
                .with_target("ebb", Level::DEBUG)
                .with_default(Level::INFO),
        )
        .init();

    let config = Config::from_env();
    let (router, state) = app(&config);
    // Resolves once the cache's last handle is gone and its expiry task has exited.
    let cache_closed = state.users.closed();
    // The handlers hold their own clones; this one would keep the cache alive past shutdown.
    drop(state);

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], config.port))).await?;
    tracing::info!(addr = %listener.local_addr()?, ?config, "listening; Ctrl-C to stop");
    serve(listener, router, async {
        tokio::signal::ctrl_c()
            .await
            .expect("cannot listen for Ctrl-C");
        tracing::info!("Ctrl-C: finishing the requests in progress");
    })
    .await?;

    // The server, its router and so the state are gone: the cache's last handle was dropped,
    // and its expiry task ends on its own. Wait (briefly) to show that nothing is left.
    match tokio::time::timeout(Duration::from_secs(1), cache_closed).await {
        Ok(()) => tracing::info!("server stopped; the cache and its expiry task are gone"),
        Err(_) => tracing::warn!("server stopped; the cache is still alive after 1 s"),
    }
    Ok(())
}
