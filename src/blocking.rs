//! Where blocking work runs: on tokio's blocking pool, or, inside a deterministic simulation,
//! inline on the thread that drives the simulated cluster.
//!
//! Storage calls (fsyncs, file reads) must never stall the async runtime, so production code
//! hands them to `spawn_blocking`. A simulation runs every node of a cluster on one
//! current-thread runtime with a paused clock; a thread pool there would finish work at
//! moments the seed does not decide. `run_blocking` is the one place that chooses: the
//! simulation marks its thread (`simulation::runtime`), and everything that would block runs
//! inline there, in the order the tasks reach it.

use crate::error::{Error, Result};

#[cfg(feature = "simulation")]
thread_local! {
    static SIMULATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static RNG: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// True on a thread that drives a deterministic simulation (never without the `simulation`
/// feature).
pub(crate) fn is_simulated() -> bool {
    #[cfg(feature = "simulation")]
    {
        SIMULATED.with(|s| s.get())
    }
    #[cfg(not(feature = "simulation"))]
    {
        false
    }
}

/// Mark the current thread as driving a simulation (or not any more), seeding the random
/// numbers the framework itself draws (see `random_u64`).
#[cfg(feature = "simulation")]
pub(crate) fn set_simulated(seed: Option<u64>) {
    use rand::SeedableRng;
    SIMULATED.with(|s| s.set(seed.is_some()));
    RNG.with(|r| *r.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

/// A random number: from the simulation's seed on a simulated thread, else from the OS-seeded
/// thread generator.
pub(crate) fn random_u64() -> u64 {
    #[cfg(feature = "simulation")]
    {
        use rand::Rng;
        if let Some(n) = RNG.with(|r| r.borrow_mut().as_mut().map(|rng| rng.random())) {
            return n;
        }
    }
    rand::random()
}

/// Run `f`, which blocks (disk I/O), without stalling the runtime: on the blocking pool, or
/// inline on a simulated thread. A panic in `f` becomes an error, as `spawn_blocking`'s
/// `JoinError` did.
pub(crate) async fn run_blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if is_simulated() {
        // A panic propagates: the simulation records it as the run's failure.
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other(format!("storage thread failed: {e}")))
}
