//! The daemon's HTTP endpoints: /metrics, /healthz, /readyz and /status.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Daemon;

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

async fn status_handler(State(d): State<Arc<Daemon>>) -> Response {
    // Reading every target is not a Send future (the clients' retry closures), so it runs on a
    // blocking thread of its own, driven by the same runtime.
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        handle.block_on(crate::status::status_report(&d.config, d.clock.now()))
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match report {
        Ok((_, report)) => match serde_json::to_string_pretty(&report) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
