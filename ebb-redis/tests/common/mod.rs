//! A `redis-server` of the test's own: Debian's package, on a free port of 127.0.0.1, with
//! persistence off and a temporary directory, stopped when the guard drops, and stopped by its
//! watchdog shell if the test process dies first (the shell reads the test's end of a pipe and
//! kills the server when it closes). No test touches a Redis it did not start.
//!
//! Without `redis-server` on the machine, [`server`] says so loudly on stderr (with the one
//! command that installs it) and returns `None`, and the test passes without running; with
//! `EBB_REDIS_TESTS=required` it panics instead. `EBB_REDIS_SERVER` names another binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use ebb_redis::redis;

/// The watchdog: starts the server, prints its pid, and when stdin closes (the guard's drop,
/// or the test process's death) kills it and removes its directory.
const WATCHDOG: &str = r#"server="$1"; dir="$2"; shift 2
"$server" "$@" &
pid=$!
echo "$pid"
read -r _ignored
kill -CONT "$pid" 2>/dev/null
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
exit 0"#;

pub struct Server {
    pub port: u16,
    pid: u32,
    watchdog: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

fn binary() -> String {
    std::env::var("EBB_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn required() -> bool {
    std::env::var("EBB_REDIS_TESTS").is_ok_and(|v| v == "required")
}

/// A fresh server for this test, or `None` (after a loud notice) when `redis-server` is not
/// installed and the Redis tests are not required.
#[track_caller]
pub fn server() -> Option<Server> {
    let bin = binary();
    let installed = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            !required(),
            "EBB_REDIS_TESTS=required, but `{bin}` cannot be run: install it with \
             `sudo apt-get install -y redis-server`"
        );
        static NOTICE: Once = Once::new();
        NOTICE.call_once(|| {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n\
                 ********************************************************************\n\
                 *  ebb-redis: THE REDIS TESTS DID NOT RUN: `{bin}` is not installed.\n\
                 *  They pass without running. Install it and run them with:\n\
                 *      sudo apt-get install -y redis-server\n\
                 *  (EBB_REDIS_TESTS=required makes them fail instead, as CI does.)\n\
                 ********************************************************************\n"
            );
        });
        let _ = writeln!(
            std::io::stderr(),
            "ebb-redis: skipped (no redis-server): {}",
            std::thread::current().name().unwrap_or("a test")
        );
        return None;
    }
    let mut last = String::new();
    for _ in 0..5 {
        match Server::start(&bin, None) {
            Ok(server) => return Some(server),
            Err(error) => last = error,
        }
    }
    panic!("could not start {bin}: {last}");
}

/// A fresh server on `port` (a port from [`free_port`], for a tier built before its Redis
/// starts), or `None` as [`server`] returns it.
#[track_caller]
pub fn server_on(port: u16) -> Option<Server> {
    let mut server = server()?;
    if server.port != port {
        server.port = port;
        server.restart();
    }
    Some(server)
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A loopback port free now (for a server the test starts later).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
    listener.local_addr().unwrap().port()
}

impl Server {
    fn start(bin: &str, port: Option<u16>) -> Result<Server, String> {
        let port = port.unwrap_or_else(free_port);
        let dir = std::env::temp_dir().join(format!(
            "ebb-redis-test-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(bin)
            .arg(&dir)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = watchdog.stdin.take();
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("no pid: {line:?}"))?;
        let server = Server {
            port,
            pid,
            watchdog,
            stdin,
            dir,
        };
        // Ready when it answers PING; bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(server.dir.join("redis.log")).unwrap_or_default();
                return Err(format!("not ready on port {port} within 10 s; log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own, to look at and change what the server holds.
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the test's own connection")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kill the server and start a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.shut_down();
        let bin = binary();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Server::start(&bin, Some(self.port)) {
                Ok(new) => {
                    let old = std::mem::replace(self, new);
                    drop(old);
                    return;
                }
                Err(error) if Instant::now() > deadline => panic!("restart: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Kill the server and wait for its watchdog; idempotent.
    pub fn shut_down(&mut self) {
        if self.stdin.take().is_some() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.watchdog.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
        let _ = self.watchdog.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `condition` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value the tests cache: a small record, JSON in Redis.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// A [`User`].
pub fn user(id: u64, name: &str) -> User {
    User {
        id,
        name: name.into(),
    }
}
