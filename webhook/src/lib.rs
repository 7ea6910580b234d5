//! holysheep-webhook: the mutating admission server and the offline `inject` command.
//!
//! Reading order: `annotations` and `settings` (inputs), `sidecar` (what gets added),
//! `mutation` (the pure core), then the shells around it: `admission`, `server`, `tls`,
//! `bootstrap`, `inject_cli`, `certs_cli`, and the read-only fleet report `check`.

pub mod admission;
pub mod annotations;
pub mod bootstrap;
pub mod certs_cli;
pub mod check;
pub mod cli;
pub mod error;
pub mod events;
pub mod inject_cli;
pub mod metrics;
pub mod mutation;
pub mod server;
pub mod settings;
pub mod sidecar;
pub mod stamps;
pub mod tls;
pub mod warnings;
