//! The quickstart example (the README shows its code) really works: three nodes elect a leader,
//! take writes, answer a linearizable read and stop cleanly.

#[allow(dead_code)] // its `main`
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_to_the_end() {
    let data = tempfile::tempdir().expect("temp dir");
    let quiet = pontoon::slog::Logger::root(pontoon::slog::Discard, pontoon::slog::o!());
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        quickstart::three_nodes(data.path(), quiet),
    )
    .await
    .expect("the quickstart finishes within a minute");
    outcome.expect("the quickstart succeeds");
}
