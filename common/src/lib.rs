//! Types shared by the holysheep webhook and sidecar, so both sides accept exactly the same
//! values: a value the webhook admits must start the sidecar, or an admitted pod
//! crash-loops.
//!
//! It holds pure value types and their parsers only: no I/O, no flags, no annotations.
//! Callers name the flag or annotation a value came from.

pub mod http_url;

pub use http_url::{DEFAULT_UPSTREAM, HttpUrl, Scheme, UrlError, UrlProblem, redact_userinfo};
