//! The soak run behind `scripts/soak.sh`: the sidecar and the webhook as real processes,
//! driven for many minutes by mixed and hostile traffic while their RSS, CPU time and open
//! file descriptors are sampled, so that growth (a leak) or an unbounded peak shows.
//!
//! - `procs`: spawning the binaries under test, and reading `/proc` for one of them.
//! - `chaos`: a fake OpenAI upstream that misbehaves on a fixed schedule (5xx, 429, streams
//!   cut mid-event, streams that stall), so retries and stream faults run all the time.
//! - `layout`: key and config files in the kubelet's `..data` symlink layout, rotated and
//!   rewritten during the run exactly as a Secret/ConfigMap update does it.
//! - `sidecar_load`: the mixed client traffic and the burst of concurrent streams.
//! - `webhook_load`: ordinary reviews plus the hostile shapes (silent connections, slow
//!   bodies, oversized and port-colliding reviews).
//!
//! Not part of the test suite: it needs minutes and reports figures, not verdicts.

pub mod chaos;
pub mod layout;
pub mod procs;
pub mod sidecar_load;
pub mod webhook_load;
