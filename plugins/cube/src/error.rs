//! The provider's errors: the contract's `provider-error` (from the SDK), so the host's retry
//! policy follows from the case, and the translation's own error.

use thiserror::Error;

pub use vk_provider_sdk::{InvalidInput, ProviderError};

/// Why translating a pod failed: the pod cannot work, or something it references is not there yet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TranslateError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A referenced object is missing or not ready (unbound PVC, unminted token): retry later.
    #[error("{0}")]
    NotReady(String),
}

impl From<TranslateError> for ProviderError {
    fn from(e: TranslateError) -> Self {
        match e {
            TranslateError::Invalid(i) => ProviderError::Invalid(i),
            TranslateError::NotReady(m) => ProviderError::Transient(m),
        }
    }
}
