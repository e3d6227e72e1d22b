//! The errors the simulated service answers with: each one maps to the RetCode and Message the
//! real gateway or product would put in the `{Action}Response` envelope.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum ApiError {
    #[error("Missing Action")]
    MissingAction,
    #[error("Action [{0}] not found")]
    UnknownAction(String),
    #[error("Missing signature")]
    MissingSignature,
    #[error("Signature verification failed")]
    BadSignature,
    #[error("User [{0}] not found")]
    NoSuchUser(String),
    #[error("Project [{0}] not found")]
    NoSuchProject(String),
    #[error("No permission for zone [{0}]")]
    ZoneDenied(String),
    #[error("Missing params [{0}]")]
    MissingParam(String),
    #[error("Params [{name}] not available: {reason}")]
    InvalidParam { name: String, reason: String },
    #[error("Service unavailable")]
    ServiceUnavailable,
    #[error("Request rate limit exceeded")]
    RateLimited,
    #[error("{message}")]
    Injected { ret_code: i64, message: String },
    /// The pod YAML breaks a Cube rule (size table, volumes, registries, names...).
    #[error("Pod is invalid: {0}")]
    PodRejected(String),
    #[error("Cube instance [{0}] not found")]
    CubeNotFound(String),
    #[error("Quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("EIP [{0}] not found")]
    EipNotFound(String),
    #[error("Resource [{0}] already has an EIP")]
    ResourceHasEip(String),
    #[error("EIP [{0}] is already bound to {1}")]
    EipInUse(String, String),
    #[error("EIP [{0}] is not bound to {1}")]
    EipNotBound(String, String),
    #[error("EIP quota exceeded: {0}")]
    EipQuotaExceeded(String),
    #[error("Firewall [{0}] not found")]
    FirewallNotFound(String),
    #[error("UDisk [{0}] not found")]
    DiskNotFound(String),
    #[error("UDisk [{0}] is in use by {1}")]
    DiskInUse(String, String),
    #[error("UDisk quota exceeded: {0}")]
    DiskQuotaExceeded(String),
}

impl ApiError {
    /// The RetCode of this error. Gateway codes are the documented ones; product codes for the
    /// Cube and UDisk cases are the simulator's own choices (documented in README.md).
    pub fn ret_code(&self) -> i64 {
        match self {
            ApiError::MissingAction => 160,
            ApiError::UnknownAction(_) => 161,
            ApiError::MissingSignature => 170,
            ApiError::BadSignature => 171,
            ApiError::NoSuchUser(_) => 172,
            ApiError::NoSuchProject(_) => 292,
            ApiError::ZoneDenied(_) => 293,
            ApiError::MissingParam(_) | ApiError::InvalidParam { .. } => 230,
            ApiError::ServiceUnavailable => 150,
            ApiError::RateLimited => 153,
            ApiError::Injected { ret_code, .. } => *ret_code,
            ApiError::PodRejected(_) => 8201,
            ApiError::CubeNotFound(_) => 8202,
            ApiError::QuotaExceeded(_) => 8203,
            ApiError::EipNotFound(_) => 4001,
            ApiError::ResourceHasEip(_) => 4154,
            ApiError::EipInUse(..) => 4155,
            ApiError::EipNotBound(..) => 4156,
            ApiError::EipQuotaExceeded(_) => 4207,
            ApiError::FirewallNotFound(_) => 4210,
            ApiError::DiskNotFound(_) => 17001,
            ApiError::DiskInUse(..) => 17002,
            ApiError::DiskQuotaExceeded(_) => 17003,
        }
    }

    pub fn invalid(name: &str, reason: impl Into<String>) -> Self {
        ApiError::InvalidParam { name: name.to_string(), reason: reason.into() }
    }

    pub fn pod(reason: impl Into<String>) -> Self {
        ApiError::PodRejected(reason.into())
    }
}
