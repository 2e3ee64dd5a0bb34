//! What every engine test file starts from: the two backends, a fresh
//! migrated store of either, and the tests' fixed start time.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kira_store::postgres::PgStore;
use kira_store::sqlite::SqliteStore;
use kira_store::{Store, testdb};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The tests' start: 1 June 2026, 09:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 9, 0, 0)
        .single()
        .expect("time")
}

/// A fresh, migrated store; for SQLite, with the folder holding its file
/// (keep it alive as long as the store).
pub async fn fresh_store(backend: Backend) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let (store, dir, _) = fresh_store_url(backend).await;
    (store, dir)
}

/// [`fresh_store`], and its URL, for a test that reaches around the store
/// (tampering with what it wrote).
pub async fn fresh_store_url(
    backend: Backend,
) -> (Arc<dyn Store>, Option<tempfile::TempDir>, String) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("dir");
            let url = testdb::fresh_sqlite(dir.path()).await;
            (
                Arc::new(SqliteStore::open(&url).await.expect("sqlite")),
                Some(dir),
                url,
            )
        }
        Backend::Postgres => {
            let url = testdb::fresh_postgres().await;
            (
                Arc::new(PgStore::open(&url, None).await.expect("pg")),
                None,
                url,
            )
        }
    }
}

/// What a [`wire_server`] was sent: every byte of every request, in order.
#[derive(Clone, Default)]
pub struct Wire(Arc<std::sync::Mutex<Vec<u8>>>);

impl Wire {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("wire")).into_owned()
    }

    /// How many requests came (their request lines).
    pub fn requests(&self) -> usize {
        self.text().matches(" HTTP/1.1\r\n").count()
    }
}

/// A plain HTTP/1.1 server on `addr` (port 0: any) that keeps every byte
/// it is sent and answers every request with `answer` (a whole response),
/// then closes the connection: each request comes on a connection of its
/// own, so a client resolves its name again for the next one.
pub async fn wire_server(
    addr: std::net::SocketAddr,
    answer: String,
) -> (std::net::SocketAddr, Wire) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let wire = Wire::default();
    let kept = wire.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let kept = kept.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                    let body = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + body {
                        break;
                    }
                }
                kept.0.lock().expect("wire").extend_from_slice(&req);
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, wire)
}

/// An HTTP/1.1 answer with `status` (a code and its reason), `headers`
/// (whole lines) and `body`, closing the connection.
pub fn answer(status: &str, headers: &[String], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}

/// A listener on 127.0.0.1 at the port of `taken` (which holds it on
/// another loopback address), for a test to check nothing connected to
/// it; None when that port is busy on 127.0.0.1.
pub fn watch_same_port(taken: std::net::SocketAddr) -> Option<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(("127.0.0.1", taken.port())).ok()?;
    l.set_nonblocking(true).expect("nonblocking");
    Some(l)
}

/// Nothing connected to `l`.
pub fn untouched(l: &std::net::TcpListener) -> bool {
    matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A [`wire_server`] on 127.0.0.2 answering `answer`, and a listener on
/// 127.0.0.1 at the same port: a name that resolves to one or the other
/// reaches the first or (if kira let it) the second.
pub async fn rebinding_pair(answer: String) -> (std::net::SocketAddr, Wire, std::net::TcpListener) {
    for _ in 0..20 {
        let (addr, wire) = wire_server(([127, 0, 0, 2], 0).into(), answer.clone()).await;
        if let Some(l) = watch_same_port(addr) {
            return (addr, wire, l);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}
