//! End to end: two instances of the axum example in its Redis mode
//! (`examples/axum_service.rs`, included below as a module, so this is the example's own code)
//! served on 127.0.0.1:0 inside the test's multi-thread runtime, sharing one `redis-server`
//! of the test's own (see `common`) and one simulated store (a database the instances share),
//! driven over HTTP/1 by hyper-util's client. Time is real, so every wait polls a condition
//! against a deadline.

mod common;

// `main` and a few helpers of the example are not used here.
#[allow(dead_code)]
#[path = "../examples/axum_service.rs"]
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_redis::TrackingState;
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

use service::{AppState, Config, Store, User};

/// How long any one request may take before the test fails (Redis up or down).
const LIMIT: Duration = Duration::from_secs(5);
/// What a bounded wait allows for a condition that needs a few round trips or a reconnection
/// (the tier's reconnection backs off up to 2 s).
const WAIT: Duration = Duration::from_secs(10);
/// Generous: the tests share two cores.
const SLACK: Duration = Duration::from_secs(2);

/// Small timeouts, so that the faults play out in a few seconds.
fn config(redis_url: String) -> Config {
    Config {
        port: 0,
        ttl: Duration::from_secs(60),
        store_latency: Duration::from_millis(10),
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        degraded_ttl: Duration::from_millis(500),
        tracking_ping_interval: Duration::from_millis(200),
        breaker_cooldown: Duration::from_millis(200),
        ..Config::new(redis_url)
    }
}

/// One instance of the example, served on an ephemeral port of 127.0.0.1 in this runtime.
struct Instance {
    name: &'static str,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The state, to look at the tier's L1 and coherence.
    state: AppState,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Instance {
    async fn start(name: &'static str, config: &Config, store: Arc<Store>) -> Instance {
        let (router, state) = service::app(config, store);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(listener, router, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Instance {
            name,
            addr,
            client,
            state,
            stop,
            task,
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
            .unwrap_or_else(|_| panic!("{} {path}: no response within {LIMIT:?}", self.name))
    }

    /// `GET /users/{id}`: the user's name.
    async fn get_user(&self, id: u64) -> String {
        let (status, body) = self.call(Method::GET, &format!("/users/{id}"), None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} GET /users/{id}: {body}",
            self.name
        );
        assert_eq!(body["id"], id);
        body["name"].as_str().unwrap().to_owned()
    }

    /// `PUT /users/{id}` with `name`.
    async fn put_user(&self, id: u64, name: &str) {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/users/{id}"),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} PUT /users/{id}: {body}",
            self.name
        );
        assert_eq!(body["name"], name);
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.call(Method::GET, "/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Wait until the instance's tier says tracking is on (`GET /stats` says so too).
    async fn tracking_on(&self) {
        assert!(
            common::eventually(WAIT, async || self.state.users.coherence_stats().state
                == TrackingState::On)
            .await,
            "{}: tracking not on: {:?}",
            self.name,
            self.state.users.coherence_stats()
        );
        assert_eq!(self.stats().await["tracking"], "On");
    }

    /// Read `id` until this instance's L1 holds `name` (a loaded value may first be dropped
    /// by Redis 7.0's script self-invalidation, see docs/coherence.md; the next read, an L2
    /// hit, stays).
    async fn cached(&self, id: u64, name: &str) {
        let expected = User {
            id,
            name: name.into(),
        };
        assert!(
            common::eventually(WAIT, async || {
                assert_eq!(self.get_user(id).await, name);
                self.state.users.get_local(&id) == Some(expected.clone())
            })
            .await,
            "{}: user {id} does not stay in L1",
            self.name
        );
    }

    /// Poll `GET /users/{id}` until it returns `name`; how long that took.
    async fn returns(&self, id: u64, name: &str) -> Duration {
        let start = Instant::now();
        assert!(
            common::eventually(WAIT, async || self.get_user(id).await == name).await,
            "{}: GET /users/{id} does not return {name:?} within {WAIT:?}",
            self.name
        );
        start.elapsed()
    }

    /// Stop the server gracefully (bounded).
    async fn stop(self) {
        drop(self.client);
        self.stop.send(()).unwrap();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("graceful shutdown within the limit")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_one_redis_stay_coherent_through_a_redis_outage() {
    let Some(mut server) = common::server() else {
        return;
    };
    let config = config(server.url());
    let store = Arc::new(Store::new(config.store_latency));
    let a = Instance::start("A", &config, Arc::clone(&store)).await;
    let b = Instance::start("B", &config, Arc::clone(&store)).await;
    a.tracking_on().await;
    b.tracking_on().await;

    // Both instances hold user 7 in L1, for the 60 s of `ttl`: tracking is on, so the copies
    // are trusted.
    a.cached(7, "user 7").await;
    b.cached(7, "user 7").await;

    // A PUT on A: B's copy is dropped by Redis's invalidation, and B returns the new value
    // (from Redis: the store is not asked).
    let invalidations = b.state.users.coherence_stats().invalidations;
    let loads = store.loads();
    a.put_user(7, "Ada").await;
    b.returns(7, "Ada").await;
    assert!(b.state.users.coherence_stats().invalidations > invalidations);
    assert_eq!(store.loads(), loads, "B read A's write from Redis");
    assert_eq!(a.get_user(7).await, "Ada", "A's own write");

    // Redis killed: both instances keep serving, a cached user and a new one (from L1 or the
    // store), and no request waits for Redis longer than its timeouts.
    server.shut_down();
    let bound = config.read_timeout + config.write_timeout + config.store_latency + SLACK;
    for round in 0..10 {
        for instance in [&a, &b] {
            for id in [7, 8] {
                let start = Instant::now();
                let name = instance.get_user(id).await;
                let took = start.elapsed();
                assert!(
                    took < bound,
                    "{} GET /users/{id} with Redis down took {took:?} (round {round})",
                    instance.name
                );
                let expected = if id == 7 { "Ada" } else { "user 8" };
                assert_eq!(name, expected, "{} with Redis down", instance.name);
            }
        }
    }
    let stats = b.stats().await;
    assert_ne!(stats["tracking"], "On", "{stats}");
    assert!(stats["tracking_losses"].as_u64().unwrap() >= 1, "{stats}");

    // A PUT on A with Redis down: the store takes it, Redis cannot, so nothing tells B; B's
    // copy lives `degraded_ttl` at most, then B reads the store.
    let start = Instant::now();
    a.put_user(7, "Grace").await;
    assert!(
        start.elapsed() < bound,
        "PUT with Redis down: {:?}",
        start.elapsed()
    );
    let took = b.returns(7, "Grace").await;
    assert!(
        took < config.degraded_ttl + SLACK,
        "B served the old user for {took:?} with Redis down"
    );
    assert_eq!(a.get_user(7).await, "Grace");

    // Redis back on the same port (empty): tracking comes back on both, and a PUT on A
    // reaches B through Redis again, by invalidation (B's copy is trusted for 60 s).
    server.restart();
    a.tracking_on().await;
    b.tracking_on().await;
    b.cached(7, "Grace").await;
    let invalidations = b.state.users.coherence_stats().invalidations;
    a.put_user(7, "Hopper").await;
    let took = b.returns(7, "Hopper").await;
    assert!(took < SLACK, "B returned the new user after {took:?}");
    assert!(b.state.users.coherence_stats().invalidations > invalidations);
    assert_eq!(a.get_user(7).await, "Hopper");
    let stats = b.stats().await;
    assert_eq!(stats["tracking"], "On", "{stats}");
    assert!(
        stats["tracking_confirmations"].as_u64().unwrap() >= 2,
        "{stats}"
    );

    a.stop().await;
    b.stop().await;
}
