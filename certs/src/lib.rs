//! CA and serving certificates for the admission webhook (filled by issue 6).
