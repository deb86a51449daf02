//! The admin API's HTTP server: hyper's HTTP/1 connections under limits a port open to
//! monitoring needs, so that no client can hold it.
//!
//! - A request's headers must arrive within [`HEADER_TIMEOUT`] (hyper's header read timeout,
//!   which also closes a keep-alive connection that sends nothing): a client that opens a
//!   connection and never finishes its request is closed.
//! - At most [`MAX_CONNECTIONS`] connections at once. A new one beyond that evicts the oldest
//!   connection that has no request in progress (a slow or idle one), so `/readyz` from systemd
//!   or Prometheus still gets through a flood of slow connections at once, not after their
//!   timeout; when every connection is busy, the new one is refused (closed).
//! - A request is answered within [`REQUEST_TIMEOUT`] or gets `503`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Time a client has to send a request's headers (and an idle keep-alive connection to send
/// its next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a request has to be answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time open requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// One served connection, as the accept loop sees it.
struct Conn {
    opened: Instant,
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    /// Set by its task when it ended.
    ended: Arc<AtomicBool>,
    evict: CancellationToken,
}

/// Serves `router` on `listener` until `cancel`, under the limits in the module docs.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, cancel: CancellationToken) {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "admin API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        conns.retain(|c| !c.ended.load(Ordering::Acquire));
        if conns.len() >= MAX_CONNECTIONS {
            let idle = conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.opened)
                .map(|(i, _)| i);
            match idle {
                Some(i) => conns.swap_remove(i).evict.cancel(),
                None => {
                    tracing::debug!("admin API: every connection is busy; refusing a new one");
                    continue; // dropped: closed
                }
            }
        }
        let conn = Conn {
            opened: Instant::now(),
            busy: Arc::default(),
            ended: Arc::default(),
            evict: CancellationToken::new(),
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            conn.busy.clone(),
            conn.ended.clone(),
            conn.evict.clone(),
            cancel.clone(),
        ));
        conns.push(conn);
    }
}

/// Serves one connection until it ends, is evicted, or the server stops (then its open
/// requests get [`DRAIN`] to finish).
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    busy: Arc<AtomicUsize>,
    ended: Arc<AtomicBool>,
    evict: CancellationToken,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let guard = Busy::new(busy.clone());
        async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, router.oneshot(req.map(axum::body::Body::new))).await;
            drop(guard);
            Ok::<_, Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "request timed out\n",
                )),
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = evict.cancelled() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
        }
    }
    ended.store(true, Ordering::Release);
}

/// Counts a request in progress on its connection for as long as it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
