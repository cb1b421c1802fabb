//! Keeps the agent's resident memory to its working set (see `opsbro_memory`): start-up
//! (configuration, packs, the first detection) faults in code an idle agent never runs again,
//! and so do a reload or a burst of API calls later.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long after start-up the agent first drops what start-up alone used.
const FIRST: Duration = Duration::from_secs(30);
/// How often after that.
const EVERY: Duration = Duration::from_secs(300);

/// Releases unused memory after start-up, then every [`EVERY`], until shutdown.
pub(crate) async fn keep_lean(shutdown: CancellationToken) {
    let mut wait = FIRST;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match opsbro_memory::release() {
            Ok(r) => tracing::debug!(
                code_bytes = r.code_bytes,
                heap_trimmed = r.heap_trimmed,
                "released unused memory"
            ),
            Err(e) => tracing::debug!(error = %e, "could not release unused memory"),
        }
        wait = EVERY;
    }
}
