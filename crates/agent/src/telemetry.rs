//! The few distributions no subsystem keeps by itself (probe round-trip times, KV request
//! durations, suspicions), fed as things happen and exposed by `GET /metrics`
//! ([`crate::api::prometheus`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

type Labels = Vec<(&'static str, String)>;

fn kv_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Shared so the request path and the gossip driver can feed it.
pub type SharedTelemetry = Arc<Telemetry>;

/// Distributions and counts that no subsystem keeps by itself.
pub struct Telemetry {
    /// Round-trip time of direct probe acks.
    pub probe_rtt: Histogram,
    /// Members this node started suspecting.
    pub suspicions: AtomicU64,
    /// Local API KV requests by operation.
    pub kv_duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            // 0.1 ms .. ~3.3 s
            probe_rtt: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            suspicions: AtomicU64::new(0),
            kv_duration: Family::new_with_constructor(kv_histogram),
        }
    }
}
