//! What the provider needs from the host, as one trait: HTTP (through `Transport`), the node's
//! durable `store`, the clock and logging. In the guest, [`WitHost`] implements it with the
//! contract's imports (through the SDK); tests implement it with a double.

use vk_provider_sdk::{kv, log, metrics, store};

use crate::api::{HttpError, HttpRequest, HttpResponse, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

pub trait Host: Transport {
    /// A durable record of the node (survives restarts and failovers of the daemon).
    fn store_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Err (why) when the record is not stored: over the host's caps, or not persisted in time.
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Whether the record was there; Err (why) when the removal is not stored.
    fn store_delete(&self, key: &str) -> Result<bool, String>;
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]);
}

/// The host of the guest: the contract's imports. Natively its methods must not be called (the
/// imports only exist in the component).
pub struct WitHost;

impl Transport for WitHost {
    fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        vk_provider_sdk::http::send(&request.into()).map(Into::into).map_err(Into::into)
    }

    fn count_api_error(&self, action: &str, code: &str) {
        metrics::counter_add("cloud_api_errors", &[kv("action", action), kv("ret_code", code)], 1);
    }
}

impl Host for WitHost {
    fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        store::get(key)
    }
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        store::set(key, value).map_err(store_error)
    }
    fn store_delete(&self, key: &str) -> Result<bool, String> {
        store::delete(key).map_err(store_error)
    }
    fn now_unix(&self) -> i64 {
        vk_provider_sdk::time::now_unix()
    }
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        let fields: Vec<_> = fields.iter().map(|(k, v)| kv(*k, *v)).collect();
        log::emit(level, message, &fields);
    }
}

fn store_error(e: store::StoreError) -> String {
    match e {
        store::StoreError::OverLimit(m) | store::StoreError::Unavailable(m) => m,
    }
}
