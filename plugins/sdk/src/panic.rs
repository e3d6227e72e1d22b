//! Panics: make them visible, and where the platform allows it, answers.
//!
//! Every export of a provider runs under [`guard`]. It installs a panic hook that records the
//! panic's message and location, and runs the provider's method:
//!
//! - **In the guest (`wasm32-wasip2`)** Rust panics abort: the target has no unwinding, so no
//!   `catch_unwind` can turn the panic into a return value. The hook runs before the abort, and
//!   forwards `panicked at <file>:<line>: <message>` to the host's log at error level (`log.emit`,
//!   tagged with the plugin's name and version); then the call traps, and the host reports the
//!   trap as a typed error naming the plugin, the version and the export, and treats it like
//!   `internal` (retried with backoff). The message is in the daemon's log, next to the trap.
//! - **Natively** (a provider's unit tests, any build with `panic = "unwind"`) the panic unwinds
//!   to [`guard`], which returns `provider-error.internal("panicked at …: <message>")`, exactly
//!   what the host would get if the guest could unwind.
//!
//! So a panic is never silent, and no panic leaves anything behind: the next call gets a fresh
//! instance either way.

use std::cell::RefCell;
use std::sync::Once;

use crate::ProviderError;

thread_local! {
    /// The last panic's `panicked at …` line, taken by `guard`.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The one line a panic is reported as.
fn describe(info: &std::panic::PanicHookInfo<'_>) -> String {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-string panic payload)".into());
    match info.location() {
        Some(l) => format!("panicked at {}:{}: {message}", l.file(), l.line()),
        None => format!("panicked: {message}"),
    }
}

/// Installs the hook (once per instance; every call has a fresh one).
pub fn install() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // Natively, keep the usual output too (the test harness shows it). In the guest, std's
        // default hook only writes to stderr, which the host discards; leaving it out (not even
        // taking it) keeps its formatting and backtrace code out of the component.
        #[cfg(not(target_arch = "wasm32"))]
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let line = describe(info);
            #[cfg(target_arch = "wasm32")]
            crate::log::emit(crate::log::Level::Error, &line, &[]);
            LAST.with(|last| *last.borrow_mut() = Some(line));
            #[cfg(not(target_arch = "wasm32"))]
            previous(info);
        }));
    });
}

/// Runs one export's body with the hook installed; a panic becomes `internal` where it can
/// unwind (see the module's documentation for the guest).
pub fn guard<T>(f: impl FnOnce() -> Result<T, ProviderError>) -> Result<T, ProviderError> {
    install();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(answer) => answer,
        Err(_) => {
            let line = LAST.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "panicked".into());
            Err(ProviderError::Internal(line))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_internal_with_its_message_and_location() {
        let err = guard::<()>(|| panic!("index {} out of range", 7)).unwrap_err();
        let ProviderError::Internal(m) = err else { panic!("{err:?}") };
        assert!(m.starts_with("panicked at "), "{m}");
        assert!(m.contains("panic.rs:") && m.ends_with(": index 7 out of range"), "{m}");
    }

    #[test]
    fn answers_pass_through() {
        assert_eq!(guard(|| Ok::<_, ProviderError>(3)), Ok(3));
        assert_eq!(
            guard::<()>(|| Err(ProviderError::Transient("busy".into()))),
            Err(ProviderError::Transient("busy".into()))
        );
    }
}
