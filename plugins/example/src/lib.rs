//! example provider (placeholder until its issue lands).
