//! The pod controller: resolves pods, drives the provider, writes status.
