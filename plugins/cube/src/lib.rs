//! cube provider (placeholder until its issue lands).
