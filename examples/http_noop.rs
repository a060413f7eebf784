//! The ceiling of the HTTP benchmark: memstore's `PUT /store/{key}/{value}` route on the same
//! axum/hyper stack, answered at once with no raft behind it.
//!
//! wrk and the server share this machine's cores, so the HTTP figures of memstore (and etcd)
//! are bounded by what wrk plus an HTTP server that does nothing can reach. Run it beside the
//! memstore figures to see how much of that ceiling the replicated write path keeps:
//!
//!     cargo run --release --example http_noop -- 127.0.0.1:8100 2
//!     wrk -t2 -c256 -d10s --latency -s ../shared/bench/store-put.lua http://127.0.0.1:8100
//!
//! Arguments: listen address (default 127.0.0.1:8100), worker threads (default 2, as memstore's
//! `--http-threads`).

use axum::extract::Path;
use axum::routing::put;
use axum::serve::ListenerExt;
use axum::Router;

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
        // The same route shape and socket option as memstore: only the raft write is missing.
        let app = Router::new().route(
            "/store/{key}/{value}",
            put(|Path((_key, value)): Path<(String, String)>| async move { value }),
        );
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        println!("http_noop listening on http://{addr} ({threads} worker threads)");
        axum::serve(listener, app).await?;
        Ok(())
    })
}
