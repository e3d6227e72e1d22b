//! The virtual node: registration, lease, status heartbeats, operations.
