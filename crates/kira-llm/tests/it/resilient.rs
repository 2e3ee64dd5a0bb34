//! The resilient wrapper over the OpenAI provider and the fake server, with
//! a recording sleeper so backoff is checked, not slept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kira_llm::{ChatRequest, LlmError, Message, OpenAi, Provider, Resilient, RetryPolicy};
use serde_json::json;

use crate::fake::{Fake, RecordingSleeper, Reply};

fn ok(model: &str) -> Reply {
    Reply::json(json!({
        "model": model,
        "choices": [{"message": {"content": format!("from {model}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}
    }))
}

fn wrap(fake: &Fake, policy: RetryPolicy) -> (Resilient, Arc<RecordingSleeper>) {
    let inner = OpenAi::new("openai", &fake.base, None, Duration::from_secs(10)).expect("provider");
    let sleeper = Arc::new(RecordingSleeper::default());
    let r = Resilient::new(Arc::new(inner), policy).with_sleeper(sleeper.clone());
    (r, sleeper)
}

fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::user("hi")], 8)
}

fn models_seen(fake: &Fake) -> Vec<String> {
    fake.seen()
        .iter()
        .map(|s| s.body["model"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_429_waits_the_servers_retry_after_then_succeeds() {
    let fake = Fake::start(vec![
        Reply::status(429, "{}").header("retry-after", "7"),
        ok("a"),
    ])
    .await;
    let (p, sleeper) = wrap(&fake, RetryPolicy::default());
    let r = p.chat(&req("a")).await.expect("answer after the retry");
    assert_eq!(r.message.content, "from a");
    assert_eq!(sleeper.waits(), vec![Duration::from_secs(7)]);
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn a_huge_retry_after_is_capped() {
    let fake = Fake::start(vec![
        Reply::status(429, "{}").header("retry-after", "86400"),
        ok("a"),
    ])
    .await;
    let policy = RetryPolicy {
        max_retry_after: Duration::from_secs(20),
        ..RetryPolicy::default()
    };
    let (p, sleeper) = wrap(&fake, policy);
    p.chat(&req("a")).await.expect("answer");
    assert_eq!(sleeper.waits(), vec![Duration::from_secs(20)]);
}

#[tokio::test]
async fn repeated_500s_back_off_then_the_fallback_model_answers() {
    let fake = Fake::start(vec![
        Reply::status(500, "boom"),
        Reply::status(500, "boom"),
        Reply::status(500, "boom"),
        ok("b"),
    ])
    .await;
    let policy = RetryPolicy {
        max_retries: 2,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let (p, sleeper) = wrap(&fake, policy);
    let p = p.with_fallbacks(["a", "b", "c"]);
    let r = p.chat(&req("a")).await.expect("fallback answers");
    assert_eq!(r.model, "b");
    assert_eq!(r.message.content, "from b");
    // Three attempts of a (the first and two retries), then b; a is not
    // tried again although it is in the chain.
    assert_eq!(models_seen(&fake), ["a", "a", "a", "b"]);
    let waits = sleeper.waits();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(waits[0] <= Duration::from_millis(100), "{waits:?}");
    assert!(waits[1] <= Duration::from_millis(200), "{waits:?}");
}

#[tokio::test]
async fn every_model_failing_gives_the_last_error() {
    let fake = Fake::start(vec![Reply::status(503, "down")]).await;
    let policy = RetryPolicy {
        max_retries: 1,
        ..RetryPolicy::default()
    };
    let (p, sleeper) = wrap(&fake, policy);
    let e = p
        .with_fallbacks(["b"])
        .chat(&req("a"))
        .await
        .expect_err("all down");
    assert!(matches!(e, LlmError::Status { status: 503, .. }), "{e:?}");
    assert_eq!(models_seen(&fake), ["a", "a", "b", "b"]);
    assert_eq!(sleeper.waits().len(), 2);
}

#[tokio::test]
async fn a_client_error_is_not_retried_but_falls_back() {
    let fake = Fake::start(vec![
        Reply::status(404, r#"{"error": {"message": "model not found"}}"#),
        ok("b"),
    ])
    .await;
    let (p, sleeper) = wrap(&fake, RetryPolicy::default());
    let r = p
        .with_fallbacks(["b"])
        .chat(&req("a"))
        .await
        .expect("answer");
    assert_eq!(r.model, "b");
    assert_eq!(models_seen(&fake), ["a", "b"]);
    assert!(sleeper.waits().is_empty());
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_is_retried() {
    let fake = Fake::start(vec![ok("a").delayed(Duration::from_secs(3)), ok("a")]).await;
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(150),
        max_retries: 1,
        ..RetryPolicy::default()
    };
    let (p, sleeper) = wrap(&fake, policy.clone());
    let started = Instant::now();
    let r = p.chat(&req("a")).await.expect("second attempt answers");
    assert_eq!(r.message.content, "from a");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sleeper.waits().len(), 1);

    // Always slow: the error is a timeout naming the limit.
    let fake = Fake::start(vec![ok("a").delayed(Duration::from_secs(3))]).await;
    let (p, _) = wrap(&fake, policy);
    let e = p.chat(&req("a")).await.expect_err("times out");
    match e {
        LlmError::Timeout { after, .. } => assert_eq!(after, Duration::from_millis(150)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn at_most_max_concurrent_calls_reach_the_provider() {
    let fake = Fake::start(vec![ok("a").delayed(Duration::from_millis(80))]).await;
    let policy = RetryPolicy {
        max_concurrent: 2,
        ..RetryPolicy::default()
    };
    let (p, _) = wrap(&fake, policy);
    let p = Arc::new(p);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.chat(&req("a")).await })
        })
        .collect();
    for c in calls {
        c.await.expect("join").expect("answer");
    }
    assert_eq!(fake.seen().len(), 6);
    assert_eq!(fake.max_in_flight(), 2);
}
