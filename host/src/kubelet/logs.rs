//! `GET /containerLogs/{ns}/{pod}/{container}`: asks the backend where the log stream is and
//! pipes that HTTP body through, cutting it at `limitBytes` whatever the backend does.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::backend::StreamProtocol;
use super::query;
use super::server::{ApiState, error_response};

pub async fn container_logs(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let opts = match query::log_query(raw.as_deref()) {
        Ok(opts) => opts,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = opts.limit_bytes;
    let target = match state.backend.logs(&namespace, &pod, &container, opts).await {
        Ok(target) => target,
        Err(e) => return error_response(e.status(), format!("pod {namespace}/{pod} container {container}: {e}")),
    };
    if target.protocol != StreamProtocol::HttpBody {
        return error_response(
            StatusCode::BAD_GATEWAY,
            format!(
                "the provider returned a {:?} log target at {}, but logs need an http-body target",
                target.protocol, target.url
            ),
        );
    }
    let mut req = state.http.get(&target.url);
    for (name, value) in &target.headers {
        req = req.header(name, value);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                format!("pod {namespace}/{pod} container {container}: log stream {}: {e}", target.url),
            );
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let code =
            if status == reqwest::StatusCode::NOT_FOUND { StatusCode::NOT_FOUND } else { StatusCode::BAD_GATEWAY };
        return error_response(
            code,
            format!("pod {namespace}/{pod} container {container}: log stream answered {status}: {}", text.trim()),
        );
    }
    let body = resp.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
    let body = match limit {
        Some(limit) => Body::from_stream(take_bytes(body, limit)),
        None => Body::from_stream(body),
    };
    ([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Passes at most `limit` bytes of a stream through, then ends it (dropping the source, which
/// closes the backend connection of a followed log).
pub fn take_bytes<S, E>(source: S, limit: u64) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
{
    futures::stream::unfold((Box::pin(source), limit), |(mut source, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        match source.next().await? {
            Ok(mut chunk) => {
                let len = chunk.len() as u64;
                if len > remaining {
                    chunk.truncate(remaining as usize);
                }
                let left = remaining - (chunk.len() as u64);
                Some((Ok(chunk), (source, left)))
            }
            Err(e) => Some((Err(e), (source, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(chunks: Vec<&'static [u8]>, limit: u64) -> Vec<u8> {
        let source = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))));
        let out: Vec<_> = take_bytes(source, limit).collect().await;
        out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect()
    }

    #[tokio::test]
    async fn limit_cuts_inside_a_chunk() {
        assert_eq!(collect(vec![b"hello ", b"world"], 8).await, b"hello wo");
    }

    #[tokio::test]
    async fn limit_larger_than_stream_passes_everything() {
        assert_eq!(collect(vec![b"ab", b"cd"], 100).await, b"abcd");
    }

    #[tokio::test]
    async fn stream_ends_once_limit_is_reached_even_if_source_never_ends() {
        let source = futures::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from_static(b"line\n")));
        let out: Vec<_> = take_bytes(source, 12).collect().await;
        let total: usize = out.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert_eq!(total, 12);
    }
}
