//! holysheep-bench: the tools behind `scripts/bench-proxy.sh`, the proxy benchmark.
//!
//! - `upstream` (binary `fake-upstream`): a fast fake OpenAI server, plain and streamed.
//! - `ttfb` (binary `ttfb-probe`): time to first byte of streamed responses.
//! - `pgo` (binary `pgo-train`): the training load of the sidecar's profile-guided build.
//! - `report` (binary `bench-report`): turns a run's raw files into the BENCHMARKS tables.
//!
//! The load itself comes from a maintained generator (oha); this crate does not generate
//! load and is not part of the test suite's figures.

pub mod payloads;
pub mod pgo;
pub mod report;
pub mod soak;
pub mod stats;
pub mod tls;
pub mod ttfb;
pub mod upstream;
