//! A minimal signed API client (form-encoded, like the SDKs), used by the UDisk provisioner,
//! the benchmark and tests.

use serde_json::Value;
use thiserror::Error;

use crate::config::KeyPair;
use crate::params::Params;
use crate::signature::sign;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("calling {action}: {source}")]
    Http { action: String, source: reqwest::Error },
    #[error("{action} answered RetCode {ret_code}: {message}")]
    Api { action: String, ret_code: i64, message: String },
    #[error("{action} answered something that is not an API envelope: {body}")]
    Malformed { action: String, body: String },
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    url: String,
    key: KeyPair,
    region: String,
    project: Option<String>,
}

impl ApiClient {
    pub fn new(url: &str, key: KeyPair, region: &str) -> Self {
        let http =
            reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("reqwest client with default TLS");
        ApiClient { http, url: url.trim_end_matches('/').to_string(), key, region: region.to_string(), project: None }
    }

    pub fn with_project(mut self, project: &str) -> Self {
        self.project = Some(project.to_string());
        self
    }

    /// The signed form body for `action` with `params` (Region, PublicKey, Signature added).
    pub fn signed_body(&self, action: &str, params: &[(&str, &str)]) -> String {
        let mut p = Params::from_pairs(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        p.0.insert("Action".into(), action.into());
        p.0.entry("Region".into()).or_insert_with(|| self.region.clone());
        if let Some(project) = &self.project {
            p.0.entry("ProjectId".into()).or_insert_with(|| project.clone());
        }
        p.0.insert("PublicKey".into(), self.key.public.clone());
        p.0.retain(|_, v| !v.is_empty());
        let sig = sign(&p, &self.key.private);
        p.0.insert("Signature".into(), sig);
        serde_urlencoded::to_string(&p.0).unwrap_or_default()
    }

    /// Calls and returns the envelope whatever its RetCode.
    pub async fn call_raw(&self, action: &str, params: &[(&str, &str)]) -> Result<Value, ClientError> {
        let body = self.signed_body(action, params);
        let resp = self
            .http
            .post(format!("{}/?Action={action}", self.url))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|source| ClientError::Http { action: action.into(), source })?;
        let text = resp.text().await.map_err(|source| ClientError::Http { action: action.into(), source })?;
        serde_json::from_str(&text).map_err(|_| ClientError::Malformed { action: action.into(), body: text })
    }

    /// Calls and fails unless RetCode is 0.
    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<Value, ClientError> {
        let v = self.call_raw(action, params).await?;
        let code = v["RetCode"].as_i64().unwrap_or(-1);
        if code != 0 {
            return Err(ClientError::Api {
                action: action.into(),
                ret_code: code,
                message: v["Message"].as_str().unwrap_or_default().into(),
            });
        }
        Ok(v)
    }
}
