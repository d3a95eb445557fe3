//! The HTTP side: routing, authentication, faults, discovery, watch.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::selectors::{Selector, parse_query};
use crate::store::{self, Event, ResourceType, StoreError, TYPES, resource};
use crate::{FakeCluster, FaultAction, Request};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A test CA and a serving certificate it signed for 127.0.0.1 and localhost (clients that
/// use webpki refuse a CA certificate as a server certificate).
pub(crate) struct TlsIdentity {
    /// The CA certificate clients trust.
    pub cert_pem: String,
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
}

impl TlsIdentity {
    pub fn generate() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test servers CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        TlsIdentity {
            cert_pem: ca.pem(),
            chain: vec![leaf.der().to_vec(), ca.der().to_vec()],
            key_der: key.serialize_der(),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(
                self.chain
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

pub(crate) async fn serve(
    cluster: Arc<FakeCluster>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let cluster = cluster.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(cluster.clone(), req));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

/// An error here makes hyper close the connection without a response: the "dropped
/// connection" fault.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

fn full(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("valid response")
}

fn status_body(
    code: u16,
    reason: &str,
    message: &str,
    kind: Option<&str>,
    name: Option<&str>,
) -> Value {
    let mut details = json!({});
    if let Some(n) = name {
        details["name"] = Value::from(n);
    }
    if let Some(k) = kind {
        details["kind"] = Value::from(k);
    }
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": details, "code": code,
    })
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn error(code: u16, message: &str) -> Response<Body> {
    full(
        code,
        &status_body(code, reason_for(code), message, None, None),
    )
}

async fn handle(
    cluster: Arc<FakeCluster>,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let is_write = !matches!(method, Method::GET | Method::HEAD);
    cluster.lock().arrivals += 1;
    let user = cluster.user_of(
        req.headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ")),
    );
    let record = |cluster: &FakeCluster, method: &Method, path: &str, query: &str, status| {
        record(cluster, method, path, query, status, &user)
    };
    let mut response = None;
    let fault = cluster.next_fault(is_write, (method.as_str(), &path, &query));
    match fault {
        Some(FaultAction::Drop) => {
            record(&cluster, &method, &path, &query, 0);
            return Err(Dropped);
        }
        Some(FaultAction::Status(code)) => response = Some(error(code, "injected fault")),
        Some(FaultAction::Garbage(ref body)) => {
            let garbage = Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())).boxed_unsync())
                .expect("valid response");
            response = Some(garbage);
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let response = match response {
        Some(r) => r,
        None => route(&cluster, req, &method, &path, &query).await,
    };
    let response = match fault {
        Some(FaultAction::DropAfterCommit) => {
            record(&cluster, &method, &path, &query, 0);
            return Err(Dropped);
        }
        Some(FaultAction::StatusAfterCommit(code)) => {
            error(code, "injected fault after the request was handled")
        }
        _ => response,
    };
    record(&cluster, &method, &path, &query, response.status().as_u16());
    Ok(response)
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn record(
    cluster: &FakeCluster,
    method: &Method,
    path: &str,
    query: &str,
    status: u16,
    user: &str,
) {
    cluster.lock().requests.push(Request {
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        status,
        user: user.to_string(),
        at: std::time::SystemTime::now(),
    });
}

/// Where a request points.
struct Target {
    rt: &'static ResourceType,
    ns: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Result<Target, Response<Body>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(error(
                404,
                &format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let not_found = || {
        error(
            404,
            &format!("the server could not find the requested resource ({path})"),
        )
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Err(not_found()),
    };
    // `/api/v1/namespaces/{name}` is the namespace object itself.
    let (ns, plural, name) = match (group, ns, plural, name) {
        ("", None, "namespaces", Some(n)) => (None, "namespaces", Some(n)),
        _ => (ns, plural, name),
    };
    let rt = resource(group, version, plural).ok_or_else(not_found)?;
    if !rt.namespaced && ns.is_some() {
        return Err(not_found());
    }
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(not_found());
    }
    Ok(Target {
        rt,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
    })
}

async fn route(
    cluster: &Arc<FakeCluster>,
    req: HttpRequest<Incoming>,
    method: &Method,
    path: &str,
    query: &str,
) -> Response<Body> {
    if let Some(r) = discovery(path) {
        return r;
    }
    if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return token_review(cluster, req).await;
    }
    if method == Method::POST && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        return self_subject_access_review(cluster, req).await;
    }
    let target = match parse_path(path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let q = parse_query(query);
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method, &target.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if is_watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return error(
                405,
                &format!(
                    "the server does not allow this method on the requested resource ({method} {path})"
                ),
            );
        }
    };
    let token = bearer(&req);
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Like Kubernetes, a list or watch narrowed to one object by `fieldSelector=metadata.name=X`
    // is authorized against rules naming X.
    let selected_name = match verb {
        "list" | "watch" => q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(','))
            .map(str::to_string),
        _ => None,
    };
    {
        let st = cluster.lock();
        if let Err((code, message)) = FakeCluster::authorize(
            &st,
            token.as_deref(),
            verb,
            target.rt.plural,
            target.ns.as_deref(),
            target.name.as_deref().or(selected_name.as_deref()),
        ) {
            let body = status_body(
                code,
                reason_for(code),
                &message,
                Some(target.rt.plural),
                target.name.as_deref(),
            );
            return full(code, &body);
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(400, "cannot read request body"),
    };
    let parsed = || -> Result<Value, Response<Body>> {
        serde_json::from_slice(&body).map_err(|e| error(400, &format!("invalid JSON body: {e}")))
    };
    let ns = target.ns.clone().unwrap_or_default();
    let rt = target.rt;
    let name = target.name.clone().unwrap_or_default();
    match verb {
        "get" => match cluster.lock().store.get(rt.plural, &ns, &name) {
            Some(o) => full(200, o),
            None => store_error(&StoreError::NotFound {
                plural: rt.plural.into(),
                name,
            }),
        },
        "list" => list(cluster, rt, target.ns.as_deref(), &q),
        "watch" => watch(cluster, rt, target.ns.as_deref(), &q),
        "create" | "update" | "patch" | "delete" => {
            let input = match verb {
                // DeleteOptions, for its preconditions.
                "delete" => parsed().unwrap_or(Value::Null),
                "patch" if content_type.starts_with("application/apply-patch+yaml") => {
                    // kube sends apply bodies as JSON, which is YAML.
                    let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                        return error(400, "PATCH with apply requires a fieldManager");
                    };
                    let patch = match parsed() {
                        Ok(v) => v,
                        Err(r) => return r,
                    };
                    let force = q.get("force").is_some_and(|f| f == "true");
                    // An apply that creates the object needs `create` as well as `patch`.
                    let st = cluster.lock();
                    if st.store.get(rt.plural, &ns, &name).is_none()
                        && let Err((code, message)) = FakeCluster::authorize(
                            &st,
                            token.as_deref(),
                            "create",
                            rt.plural,
                            target.ns.as_deref(),
                            None,
                        )
                    {
                        let body =
                            status_body(code, reason_for(code), &message, Some(rt.plural), None);
                        return full(code, &body);
                    }
                    drop(st);
                    return apply(cluster, rt, &ns, &name, patch, manager, force);
                }
                "patch" => {
                    if !(content_type.starts_with("application/merge-patch+json")
                        || content_type.starts_with("application/strategic-merge-patch+json"))
                    {
                        return error(
                            415,
                            &format!(
                                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
                            ),
                        );
                    }
                    match parsed() {
                        Ok(v) => v,
                        Err(r) => return r,
                    }
                }
                _ => match parsed() {
                    Ok(v) => v,
                    Err(r) => return r,
                },
            };
            // A dry run is asked for in the query, or, for a delete, in its DeleteOptions.
            let dry_run = q.get("dryRun").is_some_and(|d| d == "All")
                || (verb == "delete"
                    && input["dryRun"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|v| v == "All")));
            if dry_run {
                // Checked as the write would be (authorized above), and nothing stored.
                let st = cluster.lock();
                return match verb {
                    "update" => match st.store.try_replace(rt, &ns, &name, &input) {
                        Ok(()) => full(200, &input),
                        Err(e) => store_error(&e),
                    },
                    "delete" => match st.store.get(rt.plural, &ns, &name) {
                        Some(o) => full(200, o),
                        None => store_error(&StoreError::NotFound {
                            plural: rt.plural.into(),
                            name,
                        }),
                    },
                    _ => error(400, "the test apiserver dry-runs updates and deletes only"),
                };
            }
            let manager = q
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            write(cluster, verb, rt, &ns, &name, input, &manager)
        }
        _ => error(405, "unsupported"),
    }
}

fn apply(
    cluster: &Arc<FakeCluster>,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    patch: Value,
    manager: &str,
    force: bool,
) -> Response<Body> {
    let mut st = cluster.lock();
    match st.store.apply(rt, ns, name, &patch, manager, force) {
        Ok((obj, event)) => {
            st.writes += 1;
            drop(st);
            let _ = cluster.events.send(event);
            full(200, &obj)
        }
        Err(e) => store_error(&e),
    }
}

fn store_error(e: &StoreError) -> Response<Body> {
    let (code, reason, message) = e.status();
    full(code, &status_body(code, reason, &message, None, None))
}

fn write(
    cluster: &Arc<FakeCluster>,
    verb: &str,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    input: Value,

    manager: &str,
) -> Response<Body> {
    if matches!(verb, "create" | "update")
        && rt.namespaced
        && input["metadata"]["namespace"]
            .as_str()
            .is_some_and(|body_ns| body_ns != ns)
    {
        return error(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let mut st = cluster.lock();
    if let Some(event) = FakeCluster::concurrent_update(&mut st) {
        let _ = cluster.events.send(event);
    }
    if FakeCluster::injected_conflict(&mut st) {
        let n = if name.is_empty() {
            crate::store::name_of(&input).unwrap_or("").to_string()
        } else {
            name.to_string()
        };
        return store_error(&StoreError::Conflict {
            plural: rt.plural.into(),
            name: n,
        });
    }
    let input_copy = input.clone();
    let result = match verb {
        "create" => st.store.create(rt, ns, input),
        "update" => st.store.replace(rt, ns, name, input),
        "patch" => st.store.patch(rt, ns, name, &input),
        _ => {
            let want = input["preconditions"]["resourceVersion"].as_str();
            let current = st.store.get(rt.plural, ns, name);
            match (want, current) {
                (Some(w), Some(cur)) if cur["metadata"]["resourceVersion"].as_str() != Some(w) => {
                    Err(StoreError::Conflict {
                        plural: rt.plural.into(),
                        name: name.into(),
                    })
                }
                _ => st.store.delete(rt, ns, name),
            }
        }
    };
    match result {
        Ok((obj, event)) => {
            st.writes += 1;
            if verb != "delete" {
                let name = crate::store::name_of(&obj).unwrap_or_default().to_string();
                let written = if verb == "patch" { &input_copy } else { &obj };
                st.store
                    .record_owner(rt.plural, ns, &name, written, manager);
            }
            let rollout = rt.is_workload() && verb != "delete";
            let delay = st.rollout_delay;
            drop(st);
            let _ = cluster.events.send(event);
            if rollout {
                schedule_rollout(cluster, rt.plural, ns, &obj, delay);
            }
            let code = if verb == "create" { 201 } else { 200 };
            full(code, &obj)
        }
        Err(e) => store_error(&e),
    }
}

/// The simulated Deployment/DaemonSet/StatefulSet controllers: after `delay`, the rollout of
/// the current generation completes (unless rollouts are stuck).
fn schedule_rollout(
    cluster: &Arc<FakeCluster>,
    plural: &'static str,
    ns: &str,
    obj: &Value,
    delay: std::time::Duration,
) {
    let Some(generation) = obj["metadata"]["generation"].as_i64() else {
        return;
    };
    if obj["status"]["observedGeneration"].as_i64() == Some(generation) {
        return;
    }
    let cluster = cluster.clone();
    let ns = ns.to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    cluster.runtime.clone().spawn(async move {
        tokio::time::sleep(delay).await;
        let mut st = cluster.lock();
        if st.rollouts_stuck {
            return;
        }
        let deadline_exceeded = st.rollouts_deadline_exceeded;
        let events = st
            .store
            .complete_rollout(plural, &ns, &name, generation, deadline_exceeded);
        drop(st);
        for event in events {
            let _ = cluster.events.send(event);
        }
    });
}

fn list(
    cluster: &FakeCluster,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &std::collections::HashMap<String, String>,
) -> Response<Body> {
    let selector = match Selector::from_query(q) {
        Ok(s) => s,
        Err(e) => return error(400, &e),
    };
    // Pages as the apiserver serves them (`limit`, then `continue` with the token the previous
    // page gave); here the token is the position of the next item.
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let from: usize = match q.get("continue").filter(|c| !c.is_empty()) {
        None => 0,
        Some(token) => match token.parse() {
            Ok(n) => n,
            Err(_) => return error(400, "invalid continue token"),
        },
    };
    let st = cluster.lock();
    let matching = st
        .store
        .list(rt.plural, ns)
        .into_iter()
        .filter(|o| selector.matches(o))
        .skip(from);
    let mut items: Vec<Value> = if limit == 0 {
        matching.cloned().collect()
    } else {
        matching.take(limit + 1).cloned().collect()
    };
    let mut metadata = json!({"resourceVersion": st.store.current_rv().to_string()});
    if limit != 0 && items.len() > limit {
        items.truncate(limit);
        metadata["continue"] = json!((from + limit).to_string());
    }
    full(
        200,
        &json!({
            "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch(
    cluster: &Arc<FakeCluster>,
    rt: &'static ResourceType,
    ns: Option<&str>,
    q: &std::collections::HashMap<String, String>,
) -> Response<Body> {
    let selector = match Selector::from_query(q) {
        Ok(s) => s,
        Err(e) => return error(400, &e),
    };
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(std::time::Duration::from_secs(300));
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let ns = ns.map(str::to_string);
    let relevant = move |e: &Event| {
        e.plural == rt.plural
            && ns.as_ref().is_none_or(|n| *n == e.ns)
            && selector.matches(&e.object)
    };
    // Subscribe and read history under one lock: events are sent after the lock is released,
    // so nothing falls between the two.
    let (backlog, mut rx, current_rv) = {
        let st = cluster.lock();
        let rx = cluster.events.subscribe();
        if since != 0 && since < st.store.compacted_rv {
            // Like etcd after compaction: the watch starts, then ends with 410 Expired.
            let gone = expired_event(since, st.store.compacted_rv);
            return watch_response(futures::stream::once(async move { gone }).boxed());
        }
        let backlog: Vec<Event> = if since == 0 {
            // "Start at most recent": synthetic ADDED events for what exists now.
            st.store
                .list(rt.plural, None)
                .into_iter()
                .map(|o| Event {
                    rv: 0,
                    kind: "ADDED",
                    plural: rt.plural,
                    ns: o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    object: o.clone(),
                })
                .collect()
        } else {
            st.store
                .history
                .iter()
                .filter(|e| e.rv > since)
                .cloned()
                .collect()
        };
        (
            backlog
                .into_iter()
                .filter(|e| relevant(e))
                .collect::<Vec<_>>(),
            rx,
            st.store.rv,
        )
    };
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(64);
    let last_rv = backlog.iter().map(|e| e.rv).max().unwrap_or(since);
    let (api_version, kind) = (rt.api_version(), rt.kind);
    cluster.runtime.spawn(async move {
        let line =
            |e: &Event| Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})));
        // A bookmark carries only the resourceVersion the watch has reached.
        let bookmark = |rv: u64| {
            Bytes::from(format!(
                "{}\n",
                json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                       "metadata": {"resourceVersion": rv.to_string()}}})
            ))
        };
        for e in &backlog {
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let mut reached = last_rv.max(current_rv);
        if bookmarks && tx.send(bookmark(reached)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = ticks.tick(), if bookmarks => {
                    if tx.send(bookmark(reached)).await.is_err() { return; }
                }
                ev = rx.recv() => match ev {
                    Ok(e) if e.kind == store::EXPIRED => {
                        let _ = tx.send(expired_event(reached, e.rv)).await;
                        return;
                    }
                    Ok(e) if e.rv > last_rv && relevant(&e) => {
                        reached = reached.max(e.rv);
                        if tx.send(line(&e)).await.is_err() { return; }
                    }
                    Ok(e) => reached = reached.max(e.rv),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(_) => return,
                }
            }
        }
    });
    let stream = futures::stream::unfold(
        out,
        |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
    );
    watch_response(stream.boxed())
}

/// The ERROR event that ends a watch whose resourceVersion is older than the history kept.
fn expired_event(asked: u64, oldest: u64) -> Bytes {
    let status = status_body(
        410,
        "Expired",
        &format!("too old resource version: {asked} ({oldest})"),
        None,
        None,
    );
    Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})))
}

fn watch_response(lines: futures::stream::BoxStream<'static, Bytes>) -> Response<Body> {
    let frames = lines.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .expect("valid response")
}

/// The bearer token a request carries.
fn bearer<B>(req: &HttpRequest<B>) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string)
}

/// `TokenReview` (what Vault's Kubernetes auth asks): who a bearer token stands for, asked by
/// any authenticated caller. The tokens known are the cluster's ([`FakeCluster::add_token`],
/// [`FakeCluster::add_service_account_token`]).
async fn token_review(cluster: &Arc<FakeCluster>, req: HttpRequest<Incoming>) -> Response<Body> {
    if cluster.user_of(bearer(&req).as_deref()).is_empty() {
        return error(401, "Unauthorized");
    }
    let review = match json_body(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let user = cluster.user_of(Some(token));
    let status = match user.as_str() {
        "" => json!({"authenticated": false, "error": "invalid bearer token"}),
        user => json!({
            "authenticated": true,
            "user": {
                "username": user,
                "uid": format!("uid-{user}"),
                "groups": crate::rbac::Identity::new(user).groups,
            },
        }),
    };
    full(
        201,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": review["spec"],
            "status": status,
        }),
    )
}

/// A SelfSubjectAccessReview: whether the caller may do what `spec.resourceAttributes` says,
/// judged by the same RBAC rules every request is.
async fn self_subject_access_review(
    cluster: &Arc<FakeCluster>,
    req: HttpRequest<Incoming>,
) -> Response<Body> {
    let token = bearer(&req);
    if cluster.user_of(token.as_deref()).is_empty() {
        return error(401, "Unauthorized");
    }
    let review = match json_body(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let attrs = &review["spec"]["resourceAttributes"];
    let field = |f: &str| attrs[f].as_str().filter(|v| !v.is_empty());
    let (Some(verb), Some(resource)) = (field("verb"), field("resource")) else {
        return error(400, "spec.resourceAttributes needs verb and resource");
    };
    let allowed = {
        let st = cluster.lock();
        FakeCluster::authorize_in(
            &st,
            token.as_deref(),
            verb,
            (field("group").unwrap_or(""), resource),
            field("namespace"),
            field("name"),
        )
        .is_ok()
    };
    full(
        201,
        &json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": review["spec"],
            "status": {"allowed": allowed},
        }),
    )
}

/// A request's JSON body, or the 400 that says why there is none.
async fn json_body(req: HttpRequest<Incoming>) -> Result<Value, Response<Body>> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(error(400, "cannot read request body")),
    };
    serde_json::from_slice(&body).map_err(|e| error(400, &format!("invalid JSON body: {e}")))
}

/// Discovery documents, enough for kubectl to map kinds to resources.
fn discovery(path: &str) -> Option<Response<Body>> {
    let resources = |group: &str, version: &str| -> Value {
        let list: Vec<Value> = TYPES
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .map(|t| {
                json!({
                    "name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                    "kind": t.kind, "shortNames": t.short,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    let body = match path.trim_end_matches('/') {
        "/version" => {
            json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"})
        }
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        }
        "/apis" => {
            let groups: Vec<Value> = ["apps", "coordination.k8s.io", "rbac.authorization.k8s.io"]
                .iter()
                .map(|g| json!({"name": g, "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}], "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}}))
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        "/api/v1" => resources("", "v1"),
        "/apis/apps/v1" => resources("apps", "v1"),
        "/apis/coordination.k8s.io/v1" => resources("coordination.k8s.io", "v1"),
        "/apis/rbac.authorization.k8s.io/v1" => resources("rbac.authorization.k8s.io", "v1"),
        _ => return None,
    };
    Some(full(200, &body))
}
