//! The daemon's HTTP endpoints: /metrics, /healthz, /readyz and /status, and the server that
//! bounds what its clients can hold: connections at once, and the time headers may take.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Daemon;

/// Connections served at once: one more is closed as soon as it is accepted. Scrapers and
/// probes need a handful; this bounds what idle connections can hold.
const MAX_CONNECTIONS: usize = 64;
/// How long a request's headers may take to arrive (also between requests on a kept-alive
/// connection): a client that opens a connection and sends nothing is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stop` changes, [`MAX_CONNECTIONS`] at a time, each
/// request's headers within [`HEADER_TIMEOUT`]. On stop, connections finish the request
/// under way (for at most five seconds) and close.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the next accept may succeed.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Forget the connections that ended.
        while connections.try_join_next().is_some() {}
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

impl Daemon {
    /// The HTTP endpoints: /metrics, /healthz, /readyz, /status.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz_handler))
            .route("/status", get(status_handler))
            .with_state(self.clone())
    }
}

async fn metrics_handler(State(d): State<Arc<Daemon>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

async fn readyz_handler(State(d): State<Arc<Daemon>>) -> Response {
    if !d.is_leader() {
        // A standby is ready to take over: its role is known.
        return (StatusCode::OK, "standby\n").into_response();
    }
    if d.root_ok.load(Ordering::SeqCst) {
        (StatusCode::OK, "leader\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "root store not reachable yet\n",
        )
            .into_response()
    }
}

/// How long one `/status` answer is served to every request: reading the root store and every
/// cluster is far more work than a request should be able to cause.
pub(super) const STATUS_MAX_AGE: time::Duration = time::Duration::seconds(15);

/// A `/status` answer, and when (by the daemon's clock) it was read.
pub(super) struct CachedStatus {
    at: time::OffsetDateTime,
    code: StatusCode,
    body: String,
}

/// `/status`: the JSON of `cacertd status -o json`, read at most once per [`STATUS_MAX_AGE`]
/// however many requests come, one read at a time; `Age` says how old it is.
async fn status_handler(State(d): State<Arc<Daemon>>) -> Response {
    let mut cache = d.status_cache.lock().await;
    let now = d.clock.now();
    let fresh = cache
        .as_ref()
        .is_some_and(|c| now - c.at < STATUS_MAX_AGE && now >= c.at);
    if !fresh {
        let (code, body) = read_status(&d).await;
        *cache = Some(CachedStatus {
            at: now,
            code,
            body,
        });
    }
    let Some(c) = cache.as_ref() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let age = (now - c.at).whole_seconds().max(0).to_string();
    let content_type = match c.code {
        StatusCode::OK => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    (
        c.code,
        [(header::CONTENT_TYPE, content_type), (header::AGE, &age)],
        c.body.clone(),
    )
        .into_response()
}

/// Reads the status of the root and of every cluster the last pass did not leave unchanged
/// (those are served as that pass saw them).
async fn read_status(d: &Arc<Daemon>) -> (StatusCode, String) {
    // Reading every target is not a Send future (the clients' retry closures), so it runs on a
    // blocking thread of its own, driven by the same runtime.
    let handle = tokio::runtime::Handle::current();
    let daemon = d.clone();
    let report = tokio::task::spawn_blocking(move || {
        handle.block_on(async {
            let (store, certs) = daemon.root_for_status().await?;
            let now = daemon.clock.now();
            // What the last pass saw of the clusters it left unchanged; the others are read.
            let seen = daemon.last_seen.lock().await.clone();
            Ok::<_, crate::root_store::StoreError>(
                crate::status::status_report(
                    &daemon.config,
                    &store,
                    certs.as_ref(),
                    (&seen, None),
                    now,
                )
                .await,
            )
        })
    })
    .await;
    match report {
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Ok(Ok(report)) => match serde_json::to_string_pretty(&report) {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    }
}
