//! Reading the query strings of `containerLogs`, `exec` and `attach` into backend options, with
//! the validation the kubelet applies (unknown parameters are ignored).

use super::backend::{ExecQuery, LogQuery};

/// A query parameter had a value the kubelet API does not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("query parameter {name}={value:?}: {why}")]
pub struct QueryError {
    pub name: String,
    pub value: String,
    pub why: &'static str,
}

/// Longest query string read: hyper's HTTP/1 limit on a whole request target (64 KiB), stated
/// here so that parsing stays bounded whatever the server in front of it allows.
pub const MAX_QUERY: usize = (u16::MAX - 1) as usize;
/// Most `command` arguments an exec may carry. Each becomes a string handed to the provider
/// plugin; a query of `command&command&...` would otherwise make thousands of them.
pub const MAX_COMMAND_ARGS: usize = 1024;

/// The query's pairs, refused whole if it is too long to be a kubelet request.
fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let raw = raw.unwrap_or("");
    if raw.len() > MAX_QUERY {
        let start: String = raw.chars().take(32).collect();
        return Err(QueryError {
            name: "(query)".into(),
            value: format!("{start}... ({} bytes)", raw.len()),
            why: "query strings are limited to 65534 bytes",
        });
    }
    Ok(serde_urlencoded::from_str::<Vec<(String, String)>>(raw).unwrap_or_default())
}

fn bad(name: &str, value: &str, why: &'static str) -> QueryError {
    QueryError { name: name.into(), value: value.into(), why }
}

// The apiserver sends `true`/`false` for logs and `1` for exec streams; accept both spellings, and
// a bare `?follow` as Go's strconv would not, but a browser user might.
fn flag(name: &str, value: &str) -> Result<bool, QueryError> {
    match value {
        "1" | "true" | "True" | "TRUE" | "" => Ok(true),
        "0" | "false" | "False" | "FALSE" => Ok(false),
        _ => Err(bad(name, value, "expected true or false")),
    }
}

fn number(name: &str, value: &str) -> Result<i64, QueryError> {
    value.parse::<i64>().map_err(|_| bad(name, value, "expected an integer"))
}

/// Parses `follow, tailLines, sinceSeconds, sinceTime, timestamps, limitBytes, previous`.
pub fn log_query(raw: Option<&str>) -> Result<LogQuery, QueryError> {
    let mut q = LogQuery::default();
    for (name, value) in pairs(raw)? {
        match name.as_str() {
            "follow" => q.follow = flag(&name, &value)?,
            "timestamps" => q.timestamps = flag(&name, &value)?,
            "previous" => q.previous = flag(&name, &value)?,
            "tailLines" => {
                // Negative means "all lines" to the kubelet.
                let n = number(&name, &value)?;
                q.tail_lines = u64::try_from(n).ok();
            }
            "sinceSeconds" => {
                let n = number(&name, &value)?;
                if n < 1 {
                    return Err(bad(&name, &value, "must be greater than 0"));
                }
                q.since_seconds = Some(n as u64);
            }
            "limitBytes" => {
                let n = number(&name, &value)?;
                if n < 1 {
                    return Err(bad(&name, &value, "must be greater than 0"));
                }
                q.limit_bytes = Some(n as u64);
            }
            "sinceTime" => {
                chrono::DateTime::parse_from_rfc3339(&value)
                    .map_err(|_| bad(&name, &value, "expected an RFC 3339 time"))?;
                q.since_time = Some(value);
            }
            _ => {}
        }
    }
    if q.since_seconds.is_some() && q.since_time.is_some() {
        return Err(bad(
            "sinceTime",
            q.since_time.as_deref().unwrap_or(""),
            "at most one of sinceTime or sinceSeconds may be set",
        ));
    }
    Ok(q)
}

/// Parses `command` (repeated), `input`, `output`, `error`, `tty` (and the PodExecOptions
/// spellings `stdin`, `stdout`, `stderr`). `attach` must not carry a command.
pub fn exec_query(raw: Option<&str>, attach: bool) -> Result<ExecQuery, QueryError> {
    let mut q = ExecQuery::default();
    for (name, value) in pairs(raw)? {
        match name.as_str() {
            "command" if q.command.len() == MAX_COMMAND_ARGS => {
                return Err(bad(&name, &value, "an exec takes at most 1024 command arguments"));
            }
            "command" => q.command.push(value),
            "input" | "stdin" => q.stdin = flag(&name, &value)?,
            "output" | "stdout" => q.stdout = flag(&name, &value)?,
            "error" | "stderr" => q.stderr = flag(&name, &value)?,
            "tty" => q.tty = flag(&name, &value)?,
            _ => {}
        }
    }
    if !attach && q.command.is_empty() {
        return Err(bad("command", "", "exec needs at least one command argument"));
    }
    if !q.stdin && !q.stdout && !q.stderr {
        return Err(bad("input", "", "at least one of stdin, stdout or stderr must be requested"));
    }
    // With a terminal, stderr is merged into stdout, as the kubelet does.
    if q.tty {
        q.stderr = false;
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_query_reads_every_kubectl_option_and_ignores_unknown_ones() {
        let q = log_query(Some(
            "follow=true&tailLines=10&timestamps=true&limitBytes=100&previous=false&sinceSeconds=60&stream=All&pretty=1",
        ))
        .unwrap();
        assert_eq!(
            q,
            LogQuery {
                follow: true,
                tail_lines: Some(10),
                since_seconds: Some(60),
                since_time: None,
                timestamps: true,
                limit_bytes: Some(100),
                previous: false,
            }
        );
    }

    #[test]
    fn log_query_without_parameters_is_all_defaults() {
        assert_eq!(log_query(None).unwrap(), LogQuery::default());
    }

    #[test]
    fn log_query_accepts_since_time_in_rfc3339() {
        let q = log_query(Some("sinceTime=2026-11-26T16%3A00%3A00Z")).unwrap();
        assert_eq!(q.since_time.as_deref(), Some("2026-11-26T16:00:00Z"));
    }

    #[test]
    fn log_query_rejects_bad_values_naming_the_parameter() {
        assert_eq!(log_query(Some("tailLines=ten")).unwrap_err().name, "tailLines");
        assert_eq!(log_query(Some("limitBytes=0")).unwrap_err().name, "limitBytes");
        assert_eq!(log_query(Some("sinceTime=yesterday")).unwrap_err().name, "sinceTime");
        assert_eq!(log_query(Some("follow=maybe")).unwrap_err().name, "follow");
        assert!(log_query(Some("sinceSeconds=5&sinceTime=2026-11-26T16:00:00Z")).is_err());
    }

    #[test]
    fn negative_tail_lines_means_all_lines() {
        assert_eq!(log_query(Some("tailLines=-1")).unwrap().tail_lines, None);
    }

    #[test]
    fn exec_query_collects_repeated_commands_in_order() {
        let q =
            exec_query(Some("command=sh&command=-c&command=echo+hi%3Bexit+3&input=1&output=1&error=1"), false).unwrap();
        assert_eq!(q.command, vec!["sh", "-c", "echo hi;exit 3"]);
        assert!(q.stdin && q.stdout && q.stderr && !q.tty);
    }

    #[test]
    fn exec_query_with_tty_drops_stderr() {
        let q = exec_query(Some("command=sh&stdin=true&stdout=true&stderr=true&tty=true"), false).unwrap();
        assert!(q.tty && q.stdin && q.stdout && !q.stderr);
    }

    #[test]
    fn exec_without_command_is_rejected_but_attach_is_not() {
        assert_eq!(exec_query(Some("output=1"), false).unwrap_err().name, "command");
        assert!(exec_query(Some("output=1"), true).unwrap().command.is_empty());
    }

    #[test]
    fn exec_without_any_stream_is_rejected() {
        assert!(exec_query(Some("command=ls"), false).is_err());
    }

    #[test]
    fn exec_query_refuses_more_command_arguments_than_the_cap() {
        let at_cap = vec!["command=x"; MAX_COMMAND_ARGS].join("&") + "&output=1";
        assert_eq!(exec_query(Some(&at_cap), false).unwrap().command.len(), MAX_COMMAND_ARGS);
        let past = format!("command=y&{at_cap}");
        let err = exec_query(Some(&past), false).unwrap_err();
        assert_eq!(err.name, "command");
        assert!(err.to_string().contains("at most 1024 command arguments"), "{err}");
    }

    #[test]
    fn query_strings_past_the_request_target_limit_are_refused() {
        let long = format!("output=1&command={}", "a".repeat(MAX_QUERY));
        let err = exec_query(Some(&long), false).unwrap_err();
        assert!(err.to_string().contains("limited to 65534 bytes"), "{err}");
        assert!(err.value.len() < 64, "the error repeats the whole query: {} bytes", err.value.len());
        assert!(log_query(Some(&long)).is_err());
    }

    /// Queries made of the parameters the parsers act on, repeated and mixed with noise.
    fn any_query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("command"),
            Just("input"),
            Just("stdout"),
            Just("tty"),
            Just("follow"),
            Just("tailLines"),
            Just("sinceSeconds"),
            Just("sinceTime"),
            Just("limitBytes"),
            Just("x%00"),
        ];
        let value = "[a-z0-9%+=&]{0,12}";
        prop::collection::vec((name, value, any::<bool>()), 0..200).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, v, bare)| if bare { n.to_string() } else { format!("{n}={v}") })
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        #[test]
        fn any_query_parses_without_panic_into_bounded_options(raw in any_query(), attach in proptest::prelude::any::<bool>()) {
            if let Ok(q) = exec_query(Some(&raw), attach) {
                proptest::prop_assert!(q.command.len() <= MAX_COMMAND_ARGS);
                proptest::prop_assert!(q.command.iter().map(String::len).sum::<usize>() <= raw.len());
            }
            let _ = log_query(Some(&raw));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_query_parsers(raw in "\\PC{0,256}") {
            let _ = exec_query(Some(&raw), false);
            let _ = log_query(Some(&raw));
        }
    }
}
