//! The plugin runtime: loads provider components, calls them in fresh stores, hot-reloads them.
