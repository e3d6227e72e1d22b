//! HTTP through the host with retries: [`send`] repeats a request that failed in a way worth
//! repeating, with exponential backoff, all within one time budget.
//!
//! What is retried: a timeout or a transport error, and the statuses that say "try again"
//! (429, 502, 503, 504), honouring `Retry-After` (seconds) when it fits the budget. Only for
//! idempotent methods (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`) unless the policy opts in with
//! [`Policy::retry_any_method`]: a `POST` whose answer was lost may have acted, and only the
//! provider knows whether repeating it is harmless (say, the backend deduplicates by a client
//! token). `denied` and `invalid-request` are never retried.
//!
//! The budget bounds the whole exchange: each attempt's `timeout-ms` is cut to what is left, and
//! no wait starts that would end past it. Keep it under the operator's `call_timeout_ms` (10 s by
//! default). Waiting is the guest sleeping, and the host counts a guest's sleep as its CPU time
//! (`cpu_deadline_ms`, 1 s by default; time inside `http.send` does not count), so waits are
//! capped separately by [`Policy::max_wait_ms`]; longer backoff is the host's job: fail the call
//! with `transient` and the host retries it later.

use std::time::{Duration, Instant};

use crate::http::{HttpError, Request, Response};

/// How [`send`] retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The first wait; each further one doubles, up to `max_backoff_ms`.
    pub first_backoff_ms: u32,
    pub max_backoff_ms: u32,
    /// The sum of all waits (the guest's sleep counts as its CPU time).
    pub max_wait_ms: u32,
    /// The whole exchange, attempts and waits together.
    pub budget_ms: u32,
    /// Retry non-idempotent methods (`POST`, `PATCH`) too.
    pub retry_any_method: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 3,
            first_backoff_ms: 50,
            max_backoff_ms: 400,
            max_wait_ms: 300,
            budget_ms: 8_000,
            retry_any_method: false,
        }
    }
}

impl Policy {
    /// This policy, retrying any method (the caller vouches that repeating is harmless).
    pub fn retry_any_method(mut self) -> Self {
        self.retry_any_method = true;
        self
    }
}

/// Whether repeating a request with this method is harmless (RFC 9110 §9.2.2).
pub fn idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// Sends `req` through the host's `http.send`, retrying per `policy`. Returns the last answer: a
/// response (whatever its status) or the last error.
pub fn send(req: &Request, policy: &Policy) -> Result<Response, HttpError> {
    send_with(req, policy, &mut SystemClock(Instant::now()), crate::http::send)
}

/// The clock [`send_with`] waits on.
pub trait Clock {
    /// Milliseconds since some fixed start.
    fn now_ms(&mut self) -> u64;
    fn sleep_ms(&mut self, ms: u64);
}

struct SystemClock(Instant);

impl Clock for SystemClock {
    fn now_ms(&mut self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// [`send`] with the clock and the transport given: the logic, testable natively.
pub fn send_with(
    req: &Request,
    policy: &Policy,
    clock: &mut impl Clock,
    mut transport: impl FnMut(&Request) -> Result<Response, HttpError>,
) -> Result<Response, HttpError> {
    let start = clock.now_ms();
    let deadline = start + u64::from(policy.budget_ms);
    let may_retry = policy.retry_any_method || idempotent(&req.method);
    let mut backoff = u64::from(policy.first_backoff_ms);
    let mut waited = 0u64;
    let mut attempt = 1;
    loop {
        let left = deadline.saturating_sub(clock.now_ms());
        let mut this = req.clone();
        // 0 asks for the host's ceiling; the budget still bounds it.
        let wanted = if req.timeout_ms == 0 { u64::MAX } else { u64::from(req.timeout_ms) };
        this.timeout_ms = wanted.min(left).max(1) as u32;
        let answer = transport(&this);
        let retry_after = match &answer {
            Err(HttpError::Timeout | HttpError::Transport(_)) => Some(None),
            Ok(r) if matches!(r.status, 429 | 502 | 503 | 504) => Some(retry_after_ms(r)),
            _ => None,
        };
        let Some(hint) = retry_after else { return answer };
        if !may_retry || attempt >= policy.attempts.max(1) {
            return answer;
        }
        let wait = hint.unwrap_or(backoff.min(u64::from(policy.max_backoff_ms)));
        let now = clock.now_ms();
        // No wait past the budget or the sleep cap, and leave the next attempt some time.
        if waited + wait > u64::from(policy.max_wait_ms) || now + wait + 1 >= deadline {
            return answer;
        }
        clock.sleep_ms(wait);
        waited += wait;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

/// `Retry-After` in seconds, as milliseconds (the HTTP-date form is ignored).
fn retry_after_ms(r: &Response) -> Option<u64> {
    let value = r.headers.iter().find(|h| h.key.eq_ignore_ascii_case("retry-after"))?;
    value.value.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv;

    /// A clock that advances only when slept on, or by what each exchange "takes".
    struct FakeClock {
        now: u64,
        slept: Vec<u64>,
    }

    impl Clock for FakeClock {
        fn now_ms(&mut self) -> u64 {
            self.now
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.now += ms;
            self.slept.push(ms);
        }
    }

    fn req(method: &str, timeout_ms: u32) -> Request {
        Request { method: method.into(), url: "https://api.x/v1".into(), headers: vec![], body: vec![], timeout_ms }
    }

    fn status(s: u16) -> Result<Response, HttpError> {
        Ok(Response { status: s, headers: vec![], body: vec![] })
    }

    /// Runs `send_with` over scripted answers; returns the result, the waits and the timeouts sent.
    fn run(
        req: &Request,
        policy: &Policy,
        script: Vec<Result<Response, HttpError>>,
    ) -> (Result<Response, HttpError>, Vec<u64>, Vec<u32>) {
        let mut clock = FakeClock { now: 0, slept: vec![] };
        let mut script = script.into_iter();
        let mut timeouts = vec![];
        let out = send_with(req, policy, &mut clock, |r| {
            timeouts.push(r.timeout_ms);
            script.next().expect("no more answers scripted")
        });
        (out, clock.slept, timeouts)
    }

    #[test]
    fn idempotent_requests_are_retried_with_doubling_backoff_until_an_answer() {
        let p = Policy::default();
        let (out, slept, _) = run(&req("GET", 1000), &p, vec![Err(HttpError::Timeout), status(503), status(200)]);
        assert_eq!(out.unwrap().status, 200);
        assert_eq!(slept, [50, 100]);
    }

    #[test]
    fn stops_after_the_attempts_and_returns_the_last_answer() {
        let p = Policy::default();
        let (out, slept, _) =
            run(&req("DELETE", 1000), &p, vec![status(502), Err(HttpError::Transport("reset".into())), status(504)]);
        assert_eq!(out.unwrap().status, 504);
        assert_eq!(slept.len(), 2);
    }

    #[test]
    fn post_is_not_retried_unless_opted_in() {
        let (out, slept, _) = run(&req("POST", 1000), &Policy::default(), vec![Err(HttpError::Timeout)]);
        assert_eq!(out, Err(HttpError::Timeout));
        assert!(slept.is_empty());
        let (out, _, _) =
            run(&req("POST", 1000), &Policy::default().retry_any_method(), vec![Err(HttpError::Timeout), status(201)]);
        assert_eq!(out.unwrap().status, 201);
    }

    #[test]
    fn final_answers_and_refusals_are_not_retried() {
        for answer in [
            status(200),
            status(404),
            status(500),
            Err(HttpError::Denied("u".into())),
            Err(HttpError::InvalidRequest("m".into())),
        ] {
            let (out, slept, _) = run(&req("GET", 1000), &Policy::default(), vec![answer.clone()]);
            assert_eq!(out, answer);
            assert!(slept.is_empty());
        }
    }

    #[test]
    fn honours_retry_after_only_within_the_wait_cap() {
        let mut throttled = Response { status: 429, headers: vec![kv("Retry-After", "0")], body: vec![] };
        let (out, slept, _) = run(&req("GET", 1000), &Policy::default(), vec![Ok(throttled.clone()), status(200)]);
        assert_eq!((out.unwrap().status, slept), (200, vec![0]));
        throttled.headers = vec![kv("retry-after", "5")];
        let (out, slept, _) = run(&req("GET", 1000), &Policy::default(), vec![Ok(throttled.clone())]);
        assert_eq!(out.unwrap().status, 429, "a 5 s wait exceeds the cap: the host's backoff is for that");
        assert!(slept.is_empty());
    }

    #[test]
    fn attempts_share_the_budget() {
        let p = Policy { budget_ms: 500, max_wait_ms: 500, first_backoff_ms: 200, ..Policy::default() };
        // Timeouts are cut to what is left: 500, then 300 after a 200 ms wait; the next wait
        // (400) would end past the budget.
        let (out, slept, timeouts) = run(&req("GET", 0), &p, vec![Err(HttpError::Timeout), Err(HttpError::Timeout)]);
        assert_eq!(out, Err(HttpError::Timeout));
        assert_eq!(slept, [200]);
        assert_eq!(timeouts, [500, 300]);
    }
}
