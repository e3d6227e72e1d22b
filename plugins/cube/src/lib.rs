//! The Cube provider: pods on a virtual node become UCloud Cube instances. The modules read like
//! the user's guide: sizes, annotations, EIP, registries, volumes, service accounts, the cloud API
//! client. The pure core (`translate`) is callable natively, e.g. by `vkhost translate`.

pub mod annotations;
pub mod api;
pub mod config;
pub mod contract;
pub mod cube_pod;
pub mod eip;
pub mod error;
pub mod host;
pub mod instances;
pub mod k8s;
pub mod manifest;
pub mod node;
pub mod registries;
pub mod restrictions;
pub mod service_account;
pub mod sizes;
pub mod status;
pub mod streams;
pub mod translate;
pub mod volumes;

pub use contract::ResolvedPod;
pub use error::{InvalidInput, ProviderError, TranslateError};
pub use manifest::pod_from_manifest;
pub use translate::{CreateRequest, translate};

#[cfg(target_arch = "wasm32")]
mod guest;
