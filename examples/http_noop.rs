//! The ceiling of the HTTP benchmark: memstore's HTTP server (the same HTTP/1 loop, the same
//! shortcut for `PUT /store/{key}/{value}`) answering every write at once with no raft behind it.
//!
//! wrk and the server share this machine's cores, so the HTTP figures of memstore (and etcd)
//! are bounded by what wrk plus an HTTP server that does nothing can reach. Run it beside the
//! memstore figures to see how much of that ceiling the replicated write path keeps:
//!
//!     cargo run --release --example http_noop -- 127.0.0.1:8100 2
//!     wrk -t2 -c256 -d10s --latency -s ../shared/bench/store-put.lua http://127.0.0.1:8100
//!
//! Arguments: listen address (default 127.0.0.1:8100), worker threads (default 2, as memstore's
//! `--http-threads`). Paths other than the write route answer 404.

#[path = "memstore/http1.rs"]
mod http1;
#[path = "memstore/write_route.rs"]
mod write_route;

use std::convert::Infallible;
use std::future::{ready, Ready};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

/// Answers `PUT /store/{key}/{value}` with the value, as memstore does once the write applied.
#[derive(Clone)]
struct Noop;

impl hyper::service::Service<Request<Incoming>> for Noop {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The same parse as memstore's shortcut, then the value as the answer.
        let value = (req.method() == Method::PUT)
            .then(|| write_route::put_path(req.uri().path()))
            .flatten()
            .map(|(_key, value)| value);
        let mut response = Response::new(Body::from(value.clone().unwrap_or_default()));
        if value.is_none() {
            *response.status_mut() = StatusCode::NOT_FOUND;
        }
        ready(Ok(response))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8100".to_string());
    let threads: usize = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| format!("worker threads {n:?}: {e}"))?,
        None => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("http_noop listening on http://{addr} ({threads} worker threads)");
        let logger = pontoon::slog::Logger::root(pontoon::slog::Discard, pontoon::slog::o!());
        http1::serve(listener, Noop, std::future::pending(), logger).await;
        Ok(())
    })
}
