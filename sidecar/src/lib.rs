//! holysheep-sidecar: a loopback OpenAI-compatible forwarding proxy that injects the
//! HolySheep key, remaps model aliases, retries and falls back, and counts tokens and cost.
//!
//! Reading order: `config`, `server`, `proxy` (orchestration), then the steps it calls:
//! `models`, `keys`, `ratelimit`, `retry`, `upstream`, `usage`, `metrics`, `otlp`, `error`.

pub mod budget;
pub mod config;
pub mod error;
mod joined;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod models_policy;
pub mod otlp;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod resilience;
pub mod retry;
pub mod server;
pub mod upstream;
pub mod usage;
