//! The API client over a scripted transport: signing, the envelope, retries and error mapping.

#![allow(clippy::type_complexity)] // tables of cases

mod support;

use cube_provider::api::signature::sign;
use cube_provider::api::{ATTEMPTS, Client, HttpError, Params};
use cube_provider::error::ProviderError;
use serde_json::json;
use support::*;

fn client(host: &FakeHost) -> Client<'_, FakeHost> {
    Client::new(host, "http://127.0.0.1:18080/", "pub-key", "priv-key")
}

#[test]
fn requests_are_signed_form_posts_with_the_action_in_the_query() {
    let host = FakeHost::new(|a, _| ok(a, json!({"Pod": ""})));
    let params = Params::new().set("Region", "cn-bj2").set("Uid", "u 1&2").list("CubeIds", ["a", "b"]);
    client(&host).call("GetCubePod", &params).unwrap();
    let raw = host.raw.borrow()[0].clone();
    assert_eq!(raw.method, "POST");
    assert_eq!(raw.url, "http://127.0.0.1:18080/?Action=GetCubePod");
    assert!(raw.headers.contains(&("Content-Type".into(), "application/x-www-form-urlencoded".into())));
    let sent = decode_form(&raw.body);
    let keys: Vec<&str> = sent.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["Action", "CubeIds.0", "CubeIds.1", "PublicKey", "Region", "Signature", "Uid"]);
    assert_eq!(sent["Uid"], "u 1&2");
    // The signature covers every other parameter, as the service recomputes it.
    let mut unsigned = Params::new();
    for (k, v) in sent.iter().filter(|(k, _)| *k != "Signature") {
        unsigned = unsigned.set(k, v);
    }
    assert_eq!(sent["Signature"], sign(&unsigned, "priv-key"));
}

#[test]
fn the_envelope_accepts_string_retcodes_and_reports_failures() {
    let cases: Vec<(Answer, Result<(), &str>)> = vec![
        (Ok(resp(r#"{"RetCode": "0", "Action": "XResponse", "Pod": "p"}"#)), Ok(())),
        (Ok(resp(r#"{"RetCode": 0}"#)), Ok(())),
        (
            Ok(resp(r#"{"RetCode": "171", "Message": "Signature verification failed"}"#)),
            Err("internal: GetCubePod answered RetCode 171: Signature verification failed"),
        ),
        (Ok(resp(r#"{"Message": "?"}"#)), Err("internal: GetCubePod: unreadable answer: no RetCode in the answer")),
        (Ok(resp("<html>")), Err("internal: GetCubePod: unreadable answer")),
        (http(404), Err("internal: GetCubePod: HTTP 404")),
        (Err(HttpError::Denied("http://x".into())), Err("internal: GetCubePod: the host denied http://x")),
    ];
    for (answer, want) in cases {
        let mut once = Some(answer);
        let host = FakeHost::new(move |_, _| once.take().expect("called once"));
        let got =
            client(&host).call("GetCubePod", &Params::new()).map(|_| ()).map_err(|e| ProviderError::from(e).describe());
        match (got, want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(prefix)) => assert!(e.starts_with(prefix), "{e} does not start with {prefix}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
}

fn resp(body: &str) -> cube_provider::api::HttpResponse {
    cube_provider::api::HttpResponse { status: 200, headers: vec![], body: body.as_bytes().to_vec() }
}

#[test]
fn throttling_and_server_errors_are_retried_a_few_times_then_reported_as_transient() {
    let retried: Vec<(&str, fn(&str) -> Answer)> = vec![
        ("rate limited", |a| fail(a, 153, "Request rate limit exceeded")),
        ("unavailable", |a| fail(a, 150, "Service unavailable")),
        ("server error", |a| fail(a, 5000, "internal")),
        ("gateway timeout code", |a| fail(a, 110, "timeout")),
        ("http 429", |_| http(429)),
        ("http 502", |_| http(502)),
        ("http 503", |_| http(503)),
        ("http 504", |_| http(504)),
        ("timeout", |_| Err(HttpError::Timeout)),
        ("transport", |_| Err(HttpError::Transport("connection reset".into()))),
    ];
    for (name, failure) in retried {
        // Fails twice, then succeeds: the caller never sees the failures.
        let mut n = 0;
        let host = FakeHost::new(move |a, _| {
            n += 1;
            if n < ATTEMPTS { failure(a) } else { ok(a, json!({})) }
        });
        assert!(client(&host).call("ListCubePod", &Params::new()).is_ok(), "{name}");
        assert_eq!(host.count("ListCubePod"), ATTEMPTS, "{name}");
        // Always fails: bounded attempts, then transient for the host's backoff.
        let host = FakeHost::new(move |a, _| failure(a));
        let err = ProviderError::from(client(&host).call("ListCubePod", &Params::new()).unwrap_err());
        assert!(matches!(err, ProviderError::Transient(_)), "{name}: {err:?}");
        assert_eq!(host.count("ListCubePod"), ATTEMPTS, "{name}");
    }
}

#[test]
fn definitive_answers_are_not_retried_and_map_to_the_contract_errors() {
    let cases: Vec<(i64, &str, &str)> = vec![
        (4018, "Insufficient balance", "quota"),
        (4207, "EIP quota exceeded", "quota"),
        (8203, "Quota exceeded: at most 10", "quota"),
        (8202, "Cube instance [u1] not found", "not-found"),
        (4001, "EIP [eip-x] not found", "not-found"),
        (17001, "UDisk [bs-x] not found", "not-found"),
        (8201, "Pod is invalid: spec.hostNetwork is not supported", "invalid"),
        (230, "Params [VPCId] not available", "invalid"),
        (171, "Signature verification failed", "internal"),
        (161, "Action [X] not found", "internal"),
        (4154, "Resource [cube-1] already has an EIP", "internal"),
    ];
    for (code, message, kind) in cases {
        let host = FakeHost::new(move |a, _| fail(a, code, message));
        let err = ProviderError::from(client(&host).call("GetCubePod", &Params::new()).unwrap_err());
        let got = match &err {
            ProviderError::QuotaExceeded(_) => "quota",
            ProviderError::NotFound(_) => "not-found",
            ProviderError::Invalid(i) => {
                assert_eq!(i.reason, "CubeRejected");
                assert!(i.message.contains(message));
                "invalid"
            }
            ProviderError::Internal(_) => "internal",
            ProviderError::Transient(_) => "transient",
            ProviderError::Unsupported(_) => "unsupported",
        };
        assert_eq!(got, kind, "RetCode {code}: {err:?}");
        assert_eq!(host.count("GetCubePod"), 1, "RetCode {code} must not be retried");
    }
}

#[test]
fn creates_are_never_repeated_once_the_answer_may_have_been_lost() {
    let lost: Vec<(&str, fn(&str) -> Answer)> = vec![
        ("timeout", |_| Err(HttpError::Timeout)),
        ("transport", |_| Err(HttpError::Transport("reset".into()))),
        ("http 502", |_| http(502)),
        ("http 504", |_| http(504)),
        ("server error", |a| fail(a, 5000, "internal")),
    ];
    for (name, failure) in lost {
        let host = FakeHost::new(move |a, _| failure(a));
        let err = client(&host).create("CreateCubePod", &Params::new()).unwrap_err();
        assert!(err.answer_lost(), "{name}");
        assert_eq!(host.count("CreateCubePod"), 1, "{name}");
    }
    // Throttled or unavailable: the service did not act, so asking again is safe.
    let mut n = 0;
    let host = FakeHost::new(move |a, _| {
        n += 1;
        if n == 1 {
            fail(a, 153, "rate")
        } else if n == 2 {
            http(503)
        } else {
            ok(a, json!({"CubeId": "cube-1"}))
        }
    });
    assert!(client(&host).create("CreateCubePod", &Params::new()).is_ok());
    assert_eq!(host.count("CreateCubePod"), 3);
}

#[test]
fn every_failed_exchange_is_counted_by_action_and_code_even_when_a_retry_succeeds() {
    let cases: Vec<(fn(&str) -> Answer, &str)> = vec![
        (|a| fail(a, 153, "Request rate limit exceeded"), "153"),
        (|a| fail(a, 8041, "cube pod not found"), "8041"),
        (|_| http(503), "http_503"),
        (|_| Err(HttpError::Timeout), "unreachable"),
        (|_| Ok(resp("<html>")), "undecodable"),
    ];
    for (failure, code) in cases {
        let mut n = 0;
        let host = FakeHost::new(move |a, _| {
            n += 1;
            if n == 1 { failure(a) } else { ok(a, json!({})) }
        });
        let _ = client(&host).call("GetCubePod", &Params::new());
        assert_eq!(host.api_errors.borrow().as_slice(), [("GetCubePod".to_string(), code.to_string())], "{code}");
    }
    // A success is not an error.
    let host = FakeHost::new(|a, _| ok(a, json!({})));
    client(&host).call("GetCubePod", &Params::new()).unwrap();
    assert!(host.api_errors.borrow().is_empty());
}
