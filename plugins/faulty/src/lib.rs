//! faulty provider (placeholder until its issue lands).
