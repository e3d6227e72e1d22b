//! `GET /containerLogs/{ns}/{pod}/{container}`: asks the backend where the log stream is and
//! pipes that HTTP body through, cutting it at `limitBytes` whatever the backend does.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::backend::{StreamProtocol, StreamTarget};
use super::query;
use super::{ApiState, error_response};
use crate::error_chain;

/// How much of a failed log stream's body is quoted back to the client: enough for an error
/// message, not enough for a backend to make the host buffer a flood.
pub const MAX_ERROR_BODY: usize = 4 << 10;

/// The client that fetches plugin-provided stream URLs. It never follows a redirect: the plugin's
/// URL was vetted against its allowlist, the `Location` was not. It ignores ambient proxy
/// settings for the same reason.
///
/// One per process, shared by every node's kubelet API: each built client held its own copy of
/// the system's roots and its own pool (about 0.1 MiB a node; issue 18).
pub fn stream_client() -> reqwest::Result<reqwest::Client> {
    static SHARED: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = SHARED.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    Ok(SHARED.get_or_init(|| client).clone())
}

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
                target.protocol,
                target.shown_url()
            ),
        );
    }
    let resp = match open_stream(&state.http, &target).await {
        Ok(resp) => resp,
        Err((code, why)) => return error_response(code, format!("pod {namespace}/{pod} container {container}: {why}")),
    };
    let body = resp.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
    let body = match limit {
        Some(limit) => Body::from_stream(take_bytes(body, limit)),
        None => Body::from_stream(body),
    };
    ([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// GETs the log stream at `target`; a redirect or an error status is an error naming the target
/// (with at most [`MAX_ERROR_BODY`] bytes of the backend's answer).
async fn open_stream(http: &reqwest::Client, target: &StreamTarget) -> Result<reqwest::Response, (StatusCode, String)> {
    let mut req = http.get(&target.url);
    for (name, value) in &target.headers {
        req = req.header(name, value);
    }
    let resp = req.send().await.map_err(|e| {
        (StatusCode::BAD_GATEWAY, format!("log stream {}: {}", target.shown_url(), error_chain(&e.without_url())))
    })?;
    let status = resp.status();
    if status.is_redirection() {
        // Shown without its query (it may carry a token) and cut short (it is the backend's text).
        let location = resp.headers().get(http::header::LOCATION).map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            text.split('?').next().unwrap_or_default().chars().take(256).collect::<String>()
        });
        return Err((
            StatusCode::BAD_GATEWAY,
            format!(
                "log stream {} answered {status} to {}; redirects are not followed (the provider must return the final URL, inside its allowed_urls)",
                target.shown_url(),
                location.as_deref().unwrap_or("no location")
            ),
        ));
    }
    if !status.is_success() {
        let text = error_body(resp).await;
        let code =
            if status == reqwest::StatusCode::NOT_FOUND { StatusCode::NOT_FOUND } else { StatusCode::BAD_GATEWAY };
        return Err((code, format!("log stream {} answered {status}: {}", target.shown_url(), text.trim())));
    }
    Ok(resp)
}

/// The first [`MAX_ERROR_BODY`] bytes of an error response, marked when cut; the rest is never read.
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut cut = false;
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ERROR_BODY - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if cut {
        text.push_str(" [cut]");
    }
    text
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

    mod stream {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::Router;
        use axum::response::IntoResponse;
        use axum::routing::get;

        use super::super::*;

        /// `/logs/redirect` sends the client to `/elsewhere` (counting visits there), `/logs/flood`
        /// answers 500 with a 16 MiB body.
        async fn backend() -> (String, Arc<AtomicUsize>) {
            let visits = Arc::new(AtomicUsize::new(0));
            let seen = visits.clone();
            let app = Router::new()
                .route(
                    "/logs/redirect",
                    get(|| async {
                        (StatusCode::TEMPORARY_REDIRECT, [(http::header::LOCATION, "/elsewhere?token=OTHER-SECRET")])
                    }),
                )
                .route(
                    "/elsewhere",
                    get(move || {
                        seen.fetch_add(1, Ordering::SeqCst);
                        async { "secret logs of another tenant" }
                    }),
                )
                .route(
                    "/logs/flood",
                    get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, vec![b'e'; 16 << 20]).into_response() }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (base, visits)
        }

        fn target(url: String) -> StreamTarget {
            StreamTarget { url, headers: vec![], protocol: StreamProtocol::HttpBody }
        }

        #[tokio::test]
        async fn a_redirecting_log_stream_is_refused_not_followed() {
            let (base, visits) = backend().await;
            let Err((code, why)) =
                open_stream(&stream_client().unwrap(), &target(format!("{base}/logs/redirect"))).await
            else {
                panic!("the redirect was followed")
            };
            assert_eq!(code, StatusCode::BAD_GATEWAY);
            assert!(why.contains("redirects are not followed") && why.contains("/elsewhere"), "{why}");
            assert!(!why.contains("OTHER-SECRET"), "{why}");
            assert_eq!(visits.load(Ordering::SeqCst), 0);
        }

        #[tokio::test]
        async fn errors_never_show_the_stream_token_in_the_url() {
            let (base, _) = backend().await;
            let http = stream_client().unwrap();
            let closed = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            for url in [
                format!("{base}/logs/flood?token=SECRET-TOKEN&follow=true"),
                format!("{base}/logs/redirect?token=SECRET-TOKEN"),
                format!("http://{closed}/logs?token=SECRET-TOKEN"),
            ] {
                let Err((_, why)) = open_stream(&http, &target(url.clone())).await else { panic!("{url} opened") };
                assert!(!why.contains("SECRET-TOKEN"), "{why}");
                assert!(why.contains("/logs") && why.contains("<query hidden>"), "{why}");
            }
        }

        #[tokio::test]
        async fn a_huge_error_body_is_quoted_only_up_to_the_limit() {
            let (base, _) = backend().await;
            let Err((code, why)) = open_stream(&stream_client().unwrap(), &target(format!("{base}/logs/flood"))).await
            else {
                panic!("a 500 was taken for a stream")
            };
            assert_eq!(code, StatusCode::BAD_GATEWAY);
            assert!(why.len() < MAX_ERROR_BODY + 200, "error message is {} bytes", why.len());
            assert!(why.contains("500") && why.ends_with("[cut]"), "{}", &why[..100]);
        }
    }
}
