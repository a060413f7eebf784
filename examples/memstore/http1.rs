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
//!
//! Closing is lingering, as nginx's `lingering_close`: when the server ends a connection whose
//! client has not finished sending (hyper refused its head as too large, 431 or 414, or the
//! router refused its body, 413, without reading it), the answer is followed by a FIN and the
//! rest of the request is read and thrown away for a while before the socket is closed. Closing
//! a socket with unread input makes the kernel reset the connection instead: the client's
//! next write fails, and an HTTP client that gives up on a failed write (or a TCP stack that
//! drops received data on a reset) never sees the answer explaining why. See `LingeringIo`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pontoon::slog::{self, Logger};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// After `accept` fails (out of file descriptors, say), wait before trying again, doubling the
/// wait up to `ACCEPT_BACKOFF_CAP` while it keeps failing: an immediate retry would spin on the
/// same error. Only the first failure of a streak is logged.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// A client that has not finished sending its request headers after this long is disconnected,
/// so idle half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A lingering close reads and discards at most this much of what the client still sends: enough
/// for a client that sends a refused request of a few MiB in full before it reads the answer,
/// little enough that a client streaming without end costs only this much reading.
pub const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// ... and lingers at most this long, whichever comes first (nginx's `lingering_time` is 30 s).
/// Seconds rather than milliseconds so that a client descheduled on a loaded machine still
/// finishes sending; a lingering socket costs one descriptor and a small task meanwhile. The
/// socket is closed at once when the client closes its side, as one that has read the answer
/// does.
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(5);

/// A connection's socket as hyper reads and writes it, remembering whether the client closed
/// its side (a read found the end, or the connection failed). Dropped while the client has not,
/// it hands the socket to `linger` instead of closing it.
///
/// Why wrap the socket rather than answer the refusals in our own code: hyper answers 431 and
/// 414 itself, while parsing the head, and then ends the connection with an error that no
/// longer holds the socket; the only place that still has the socket at that moment is the IO
/// object hyper drops.
struct LingeringIo {
    /// Always `Some` until `drop` takes it.
    stream: Option<TcpStream>,
    client_done: bool,
}

impl LingeringIo {
    fn new(stream: TcpStream) -> Self {
        LingeringIo {
            stream: Some(stream),
            client_done: false,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Note a failed connection: nothing is gained by lingering on it.
    fn watch<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.client_done = true;
        }
        result
    }
}

impl AsyncRead for LingeringIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        if let Poll::Ready(Ok(())) = &result {
            // Room to read and nothing read: the client closed its side.
            if wanted && buf.filled().len() == before {
                self.client_done = true;
            }
        }
        self.watch(result)
    }
}

impl AsyncWrite for LingeringIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = match self.stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.watch(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.watch(result)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper writes an answer's head and body with one call when the socket takes slices.
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.watch(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.watch(result)
    }
}

impl Drop for LingeringIo {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.client_done {
            return;
        }
        // Outside a runtime (the server is going away with it) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Finish a connection the client has not closed: send what is written and a FIN, then read and
/// discard what the client still sends until it closes, up to `LINGER_MAX_BYTES` and
/// `LINGER_MAX_TIME`, and only then close the socket.
async fn linger(mut stream: TcpStream) {
    // hyper shuts the write side down when it ends a connection cleanly; after an error it
    // does not. A second shutdown is harmless, and a failed one changes nothing below.
    let _ = stream.shutdown().await;
    let deadline = tokio::time::sleep(LINGER_MAX_TIME);
    tokio::pin!(deadline);
    let mut discard = vec![0u8; 64 * 1024];
    let mut drained = 0;
    while drained < LINGER_MAX_BYTES {
        tokio::select! {
            read = stream.read(&mut discard) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            },
            () = &mut deadline => return,
        }
    }
}

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
        let conn = builder.serve_connection(TokioIo::new(LingeringIo::new(stream)), app.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that disconnects mid-request is its own business, not an error of ours.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
