#![cfg(not(loom))]
//! End to end: the axum example (`examples/axum_service.rs`, included below as a module, so
//! this is the example's own code) served on 127.0.0.1:0 inside the test's multi-thread
//! runtime, driven over HTTP/1 by hyper-util's client. Time is real (paused time does not
//! mix with sockets), so every wait polls a condition against a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_cache::WeakCache;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// `main` and a few helpers of the example are not used here.
#[allow(dead_code)]
#[path = "../examples/axum_service.rs"]
mod service;

use service::{Config, Store, User};

/// How long any one request, or any awaited condition, may take before the test fails.
const LIMIT: Duration = Duration::from_secs(5);

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Poll the async condition `cond` every 10 ms until it holds; fail after [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The example's app, served on an ephemeral port of 127.0.0.1 in this runtime.
struct Server {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The store, to count its calls (it does not keep the cache alive).
    store: Arc<Store>,
    /// The cache, without keeping it alive.
    users: WeakCache<u64, Arc<User>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    /// Alive tasks before the app was built.
    baseline: usize,
}

impl Server {
    async fn start(ttl: Duration, tick: Duration) -> Server {
        let baseline = alive_tasks();
        let config = Config {
            port: 0,
            ttl,
            tick,
            stats_interval: Duration::from_secs(1),
            store_latency: Duration::from_millis(50),
        };
        let (router, state) = service::app(&config);
        let store = Arc::clone(&state.store);
        let users = state.users.downgrade();
        drop(state);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(listener, router, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Server {
            addr,
            client,
            store,
            users,
            stop,
            task,
            baseline,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).unwrap();
        let exchange = async {
            let response = self.client.request(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let value = match bytes.is_empty() {
                true => Value::Null,
                false => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!(
                        "{path}: not JSON ({e}): {}",
                        String::from_utf8_lossy(&bytes)
                    )
                }),
            };
            (status, value)
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{path}: no response within {LIMIT:?}"))
    }

    /// `GET /users/{id}`: the user's name.
    async fn get_user(&self, id: u64) -> String {
        let (status, body) = self.call(Method::GET, &format!("/users/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "GET /users/{id}: {body}");
        assert_eq!(body["id"], id);
        body["name"].as_str().unwrap().to_owned()
    }

    /// `GET /metrics`: the content type and the Prometheus text.
    async fn metrics(&self) -> (String, String) {
        let request = Request::get(format!("http://{}/metrics", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let exchange = async {
            let response = self.client.request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (kind, String::from_utf8(bytes.to_vec()).unwrap())
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("/metrics: no response within the limit")
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.call(Method::GET, "/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Stop the server gracefully, then check that the cache is gone and every task the test
    /// caused (server, connections, the client's connections, the expiry task) has ended.
    async fn stop(self) {
        let Server {
            client,
            users,
            stop,
            task,
            baseline,
            ..
        } = self;
        assert!(
            alive_tasks() > baseline,
            "the server and the expiry task run"
        );
        drop(client);
        stop.send(()).unwrap();
        tokio::time::timeout(LIMIT, task)
            .await
            .expect("graceful shutdown within the limit")
            .unwrap()
            .unwrap();
        eventually("the last cache handle to be dropped", || {
            let gone = users.upgrade().is_none();
            async move { gone }
        })
        .await;
        eventually("alive tasks to return to the baseline", || {
            let back = alive_tasks() == baseline;
            async move { back }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_load_once_writes_go_through_and_stats_add_up() {
    let server = Server::start(Duration::from_secs(60), Duration::from_millis(50)).await;
    let store = Arc::clone(&server.store);

    // The first read loads from the store; later ones are hits.
    assert_eq!(server.get_user(7).await, "user 7");
    assert_eq!(store.calls(), 1);
    for _ in 0..3 {
        assert_eq!(server.get_user(7).await, "user 7");
    }
    assert_eq!(store.calls(), 1, "hits do not call the store");

    // 100 concurrent requests for a new id, on as many connections: one store call.
    let server = Arc::new(server);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let server = Arc::clone(&server);
            tokio::spawn(async move { server.get_user(8).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), "user 8");
    }
    assert_eq!(store.calls(), 2, "one load for 100 concurrent requests");
    let server = Arc::into_inner(server).expect("every request task has ended");

    // DELETE invalidates: the next read loads again.
    let (status, _) = server.call(Method::DELETE, "/users/7", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(server.get_user(7).await, "user 7");
    assert_eq!(store.calls(), 3, "a read after DELETE reloads");

    // PUT writes through: the store (one call, a save) and the cache, so the next read is a
    // hit with the new value, also for an id that was not cached.
    for id in [7, 11] {
        let (status, body) = server
            .call(
                Method::PUT,
                &format!("/users/{id}"),
                Some(json!({ "name": "Ada" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let calls = store.calls();
        assert_eq!(server.get_user(id).await, "Ada");
        assert_eq!(
            store.calls(),
            calls,
            "a read after PUT does not call the store"
        );
    }
    assert_eq!((store.loads(), store.saves()), (3, 2));

    // A body without a name is refused and changes nothing.
    let (status, _) = server
        .call(Method::PUT, "/users/7", Some(json!({ "nom": "Bob" })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.get_user(7).await, "Ada");

    // /stats adds it all up. Lookups: 4 for id 7, 100 for id 8, 1 after DELETE, 2 after the
    // PUTs, 1 after the refused PUT. A concurrent request for id 8 counts a miss if it found
    // the load in flight, a hit if it came after; every other lookup is known.
    let stats = server.stats().await;
    let (hits, misses) = (
        stats["hits"].as_u64().unwrap(),
        stats["misses"].as_u64().unwrap(),
    );
    assert_eq!(hits + misses, 108, "{stats}");
    assert!((3..=102).contains(&misses), "{stats}");
    assert_eq!(stats["load_successes"], 3, "{stats}");
    assert_eq!(stats["load_failures"], 0, "{stats}");
    assert_eq!(stats["store_calls"], 5, "{stats}");
    assert_eq!(stats["store_loads"], 3, "{stats}");
    assert_eq!(stats["store_saves"], 2, "{stats}");
    // Created: 7, 8, 7 again (after DELETE), 11; replaced: 7 by the PUT.
    assert_eq!(stats["inserts"], 4, "{stats}");
    assert_eq!(stats["updates"], 1, "{stats}");
    assert_eq!(stats["replaced"], 1, "{stats}");
    assert_eq!(stats["explicit"], 1, "{stats}");
    assert_eq!(stats["expired"], 0, "{stats}");
    assert_eq!(stats["entry_count"], 3, "{stats}");
    assert_eq!(stats["cache"], "users");

    // /metrics renders every metric of docs/metrics.md for the cache. (Exact values are
    // tests/metrics.rs's: the other test here has a cache named "users" too, and one
    // recorder serves the whole binary.)
    let (kind, text) = server.metrics().await;
    assert!(kind.starts_with("text/plain"), "{kind}");
    for series in [
        "ebb_cache_hits_total{cache=\"users\"}",
        "ebb_cache_misses_total{cache=\"users\"}",
        "ebb_cache_inserts_total{cache=\"users\"}",
        "ebb_cache_updates_total{cache=\"users\"}",
        "ebb_cache_removals_total{cache=\"users\",cause=\"expired\"}",
        "ebb_cache_removals_total{cache=\"users\",cause=\"explicit\"}",
        "ebb_cache_removals_total{cache=\"users\",cause=\"replaced\"}",
        "ebb_cache_removals_total{cache=\"users\",cause=\"size\"}",
        "ebb_cache_loads_total{cache=\"users\",result=\"success\"}",
        "ebb_cache_loads_total{cache=\"users\",result=\"failure\"}",
        "ebb_cache_load_nanoseconds_total{cache=\"users\"}",
        "ebb_cache_notifications_dropped_total{cache=\"users\"}",
        "ebb_cache_entries{cache=\"users\"}",
        "ebb_cache_weighted_size{cache=\"users\"}",
        "ebb_cache_expiry_lag_max_seconds{cache=\"users\"}",
        "ebb_cache_expiry_lag_mean_seconds{cache=\"users\"}",
    ] {
        assert!(text.contains(&format!("{series} ")), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE ebb_cache_hits_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE ebb_cache_entries gauge"), "{text}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_expires_on_time_and_is_reloaded() {
    let ttl = Duration::from_millis(300);
    let server = Server::start(ttl, Duration::from_millis(50)).await;
    let store = Arc::clone(&server.store);

    let requested = Instant::now();
    assert_eq!(server.get_user(9).await, "user 9");
    assert_eq!(store.loads(), 1);

    // With no reads at all, the expiry task removes the entry after its TTL.
    eventually("the entry to expire and leave the cache", || async {
        let stats = server.stats().await;
        stats["expired"] == 1 && stats["entry_count"] == 0
    })
    .await;
    assert!(
        requested.elapsed() >= ttl,
        "removed {:?} after the request, before its TTL of {ttl:?}",
        requested.elapsed()
    );

    // The next read loads it again.
    assert_eq!(server.get_user(9).await, "user 9");
    assert_eq!(store.loads(), 2, "a read after expiry reloads");

    let stats = server.stats().await;
    assert_eq!(stats["hits"], 0, "{stats}");
    assert_eq!(stats["misses"], 2, "{stats}");
    assert_eq!(stats["load_successes"], 2, "{stats}");
    assert_eq!(stats["inserts"], 2, "{stats}");
    assert_eq!(stats["expired"], 1, "{stats}");
    assert_eq!(stats["entry_count"], 1, "{stats}");
    assert_eq!(stats["store_calls"], 2, "{stats}");

    server.stop().await;
}
