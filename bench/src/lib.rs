//! holysheep-bench: the tools behind `scripts/bench-proxy.sh`, the proxy benchmark.
//!
//! - `upstream` (binary `fake-upstream`): a fast fake OpenAI server, plain and streamed.
//! - `ttfb` (binary `ttfb-probe`): time to first byte of streamed responses.
//! - `pgo` (binary `pgo-train`): the training load of the sidecar's profile-guided build.
//! - `report` (binary `bench-report`): turns a run's raw files into the BENCHMARKS tables.
//!
//! The benchmark's load itself comes from a maintained generator (oha); the load this
//! crate makes (soak, training) is not what the benchmark's figures measure.

pub mod payloads;
pub mod pgo;
pub mod report;
pub mod soak;
pub mod stats;
pub mod tls;
pub mod ttfb;
pub mod upstream;
