//! Test support: one real control plane per test binary, a namespace per test.
