//! The plugin's admin HTTP routes: `GET /plugin` shows the stable version, `GET /plugin/versions`
//! every node's version and the rollout, `POST /plugin/reload` reloads the file now,
//! `POST /plugin/pin` and `/plugin/unpin` hold a node on a version or release it. Reading is open
//! (it shows versions and counters, no config); anything that triggers work needs the operator's
//! bearer token (`[admin] token_file`), and without a token file the mutating routes are off:
//! anyone who can reach the port must not be able to make the daemon swap code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::plugin::handle::Plugin;

/// Shortest token accepted: anything shorter is guessable over a network.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("admin.token_file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "admin.token_file {path}: the token is {len} bytes, but must be at least {MIN_TOKEN_LEN} (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort { path: PathBuf, len: usize },
}

/// The bearer token mutating admin routes require. Only its digest is kept, so comparing takes
/// the same time whatever the guess (no byte-by-byte timing oracle) and the token is not in memory.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token from its text; surrounding whitespace (a trailing newline) is ignored.
    pub fn new(token: &str) -> Self {
        AdminToken { digest: Sha256::digest(token.trim().as_bytes()).into() }
    }

    /// Reads the token from `path` (a mounted Secret, typically).
    pub fn from_file(path: &Path) -> Result<Self, AdminTokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AdminTokenError::Read { path: path.into(), source })?;
        let len = text.trim().len();
        if len < MIN_TOKEN_LEN {
            return Err(AdminTokenError::TooShort { path: path.into(), len });
        }
        Ok(Self::new(&text))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

struct AdminState {
    plugin: Arc<Plugin>,
    token: Option<AdminToken>,
}

/// The routes; `token` is what `POST /plugin/reload` requires (`None`: the route always answers 403).
pub fn admin_router(plugin: Arc<Plugin>, token: Option<AdminToken>) -> Router {
    Router::new()
        .route("/plugin", get(active))
        .route("/plugin/reload", post(reload))
        .route("/plugin/versions", get(versions))
        .route("/plugin/pin", post(pin))
        .route("/plugin/unpin", post(unpin))
        .with_state(Arc::new(AdminState { plugin, token }))
}

async fn active(State(state): State<Arc<AdminState>>) -> Json<Value> {
    Json(json!(state.plugin.summary()))
}

async fn versions(State(state): State<Arc<AdminState>>) -> Json<Value> {
    Json(json!(state.plugin.versions()))
}

/// The body of `POST /plugin/pin` (`version` unused by `/plugin/unpin`).
#[derive(serde::Deserialize)]
struct PinRequest {
    node: String,
    #[serde(default)]
    version: String,
}

async fn pin(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> (StatusCode, Json<Value>) {
    if let Err(refusal) = authorize(&state, &headers, "/plugin/pin") {
        return refusal;
    }
    pinned(&state, state.plugin.pin(&req.node, &req.version))
}

async fn unpin(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> (StatusCode, Json<Value>) {
    if let Err(refusal) = authorize(&state, &headers, "/plugin/unpin") {
        return refusal;
    }
    pinned(&state, state.plugin.unpin(&req.node))
}

/// The answer to a pin or unpin: the node's version now, or why nothing changed.
fn pinned(state: &AdminState, result: Result<String, crate::plugin::PinError>) -> (StatusCode, Json<Value>) {
    match result {
        Ok(node) => {
            let now = state.plugin.versions().nodes.into_iter().find(|n| n.node == node);
            (StatusCode::OK, Json(json!({ "node": now })))
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": e.to_string() }))),
    }
}

/// Refuses a mutating request that does not carry the token, saying what would be accepted.
fn authorize(state: &AdminState, headers: &HeaderMap, route: &str) -> Result<(), (StatusCode, Json<Value>)> {
    let refused = match &state.token {
        Some(token) if token.admits(headers) => return Ok(()),
        None => (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": format!("POST {route} is disabled: set [admin] token_file to enable it \
                                  (SIGHUP and the file watcher reload without it)")
            })),
        ),
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({ "error": "missing or wrong `Authorization: Bearer <token>` (the token in [admin] token_file)" }),
            ),
        ),
    };
    tracing::warn!(route, "admin: unauthenticated POST refused");
    Err(refused)
}

async fn reload(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if let Err(refusal) = authorize(&state, &headers, "/plugin/reload") {
        return refusal;
    }
    match state.plugin.reload().await {
        Ok(info) => (StatusCode::OK, Json(json!({ "reloaded": true, "active": info }))),
        // 422: the request was fine, the file was not; the previous version keeps serving.
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "reloaded": false, "error": e.to_string(), "active": state.plugin.info() })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn the_token_is_admitted_only_as_an_exact_bearer_credential() {
        let token = AdminToken::new("0123456789abcdef-secret\n");
        assert!(token.admits(&bearer("Bearer 0123456789abcdef-secret")));
        assert!(token.admits(&bearer("bearer 0123456789abcdef-secret")));
        assert!(!token.admits(&bearer("Bearer 0123456789abcdef-secreT")));
        assert!(!token.admits(&bearer("Bearer 0123456789abcdef-secret-and-more")));
        assert!(!token.admits(&bearer("Basic 0123456789abcdef-secret")));
        assert!(!token.admits(&bearer("Bearer ")));
        assert!(!token.admits(&HeaderMap::new()));
    }

    #[test]
    fn short_or_missing_token_files_are_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("vkhost-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let err = AdminToken::from_file(&short).unwrap_err().to_string();
        assert!(err.contains("short") && err.contains("at least 16"), "{err}");
        let err = AdminToken::from_file(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.contains("absent"), "{err}");
        std::fs::write(&short, "0123456789abcdef\n").unwrap();
        assert!(AdminToken::from_file(&short).unwrap().admits(&bearer("Bearer 0123456789abcdef")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
