//! memstore's HTTP/1.1 server: the axum router served by hyper's HTTP/1 connection directly.
//!
//! Why not `axum::serve`: it serves every connection through hyper-util's `auto` builder, which
//! first sniffs whether the client speaks HTTP/1 or HTTP/2 and then drives the connection through
//! a version-generic layer. memstore's clients (curl, wrk, `reqwest`, raftify's CLI) speak
//! HTTP/1.1, and on a two-core machine under wrk the plain HTTP/1 connection answered a route that
//! does nothing about a fifth more requests per second than the `auto` one (the `http_noop`
//! example shows the ceiling). HTTP/2 is therefore not offered.
//!
//! Shutdown is graceful, as with `axum::serve`: once `shutdown` resolves no connection is
//! accepted, every open one finishes the request it is serving and then closes, and `serve`
//! returns when the last one has.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pontoon::slog::{self, Logger};
use tokio::net::TcpListener;

/// After `accept` fails (out of file descriptors, say), wait before trying again, doubling the
/// wait up to `ACCEPT_BACKOFF_CAP` while it keeps failing: an immediate retry would spin on the
/// same error. Only the first failure of a streak is logged.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// A client that has not finished sending its request headers after this long is disconnected,
/// so idle half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `app` on `listener` until `shutdown` resolves, then drain the open connections. Each
/// connection gets its own clone of `app`.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    logger: Logger,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_START;
                    stream
                }
                Err(e) => {
                    if backoff == ACCEPT_BACKOFF_START {
                        slog::warn!(logger, "HTTP accept failed; retrying with backoff"; "error" => %e);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_CAP);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and written whole: never hold one back waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), app.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that disconnects mid-request is its own business, not an error of ours.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
