//! Retries for Kubernetes API calls: with backoff on 5xx, 429, timeouts and connection errors;
//! never on other 4xx (a 409 is answered by re-reading and re-planning, not by repeating).

use std::future::Future;
use std::time::Duration;

use crate::config::KubeSettings;

pub(crate) fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// 200 ms doubling per attempt, at most 5 s, plus up to 50 % random jitter so that many
/// clusters failing together do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(5));
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 512.0)
}

pub(crate) async fn retrying<T, F, Fut>(
    settings: &KubeSettings,
    what: &str,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < settings.retries && retryable(&e) => {
                let delay = backoff(attempt);
                tracing::debug!(call = what, attempt, error = %e, ?delay, "retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
