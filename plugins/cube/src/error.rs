//! The provider's errors, shaped like the contract's `provider-error` so the host's retry policy
//! follows from the case.

use thiserror::Error;

/// A user error precise enough to act on: the pod is failed with `reason` and an Event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    /// Short CamelCase reason, e.g. `InvalidAnnotation`.
    pub reason: String,
    /// The offending field path, e.g. `spec.volumes[0].hostPath`.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl InvalidInput {
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidInput { reason: reason.into(), field: field.into(), message: message.into() }
    }
}

/// Why translating a pod failed: the pod cannot work, or something it references is not there yet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TranslateError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A referenced object is missing or not ready (unbound PVC, unminted token): retry later.
    #[error("{0}")]
    NotReady(String),
}

/// The contract's `provider-error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProviderError {
    #[error("invalid: {0}")]
    Invalid(InvalidInput),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("transient: {0}")]
    Transient(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<InvalidInput> for ProviderError {
    fn from(e: InvalidInput) -> Self {
        ProviderError::Invalid(e)
    }
}

impl From<TranslateError> for ProviderError {
    fn from(e: TranslateError) -> Self {
        match e {
            TranslateError::Invalid(i) => ProviderError::Invalid(i),
            TranslateError::NotReady(m) => ProviderError::Transient(m),
        }
    }
}
