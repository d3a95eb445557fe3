//! Servers for cacertd's tests: a Kubernetes API server (this module) and a HashiCorp Vault
//! ([`vault`]).
//!
//! A Kubernetes API server for tests: fast, many clusters at once, and faults on demand. It
//! speaks real HTTP/1.1 and keeps Kubernetes semantics strictly for the objects cacertd
//! touches: namespaces, secrets, configmaps, deployments, daemonsets, statefulsets, leases,
//! service accounts and RBAC objects — get, list (label and field selectors), watch (bookmarks,
//! 410 Expired after a compaction), create, update (resourceVersion preconditions, 409 `Status`
//! bodies), merge and strategic-merge patch, server-side apply, delete, 404, 401, and 403 from
//! Roles, ClusterRoles and their bindings evaluated as the RBAC authorizer does ([`rbac`]); the
//! apiserver's validation of names, label values and data keys; and controllers that complete
//! rollouts after a restart patch (or report `ProgressDeadlineExceeded`). One server hosts many
//! clusters, one port each. Every answered request is recorded with its user and time, and
//! every version of every object is kept, for tests to assert on.
//!
//! Simplifications (documented, and exercised by kubectl in cacertd's tests): strategic merge
//! patch is applied with JSON merge-patch semantics (exact for the map-only patches kubectl
//! `rollout restart` and `apply` send for these objects); no admission; no subresources.

// Handlers return ready-made error responses; their size does not matter in a test server.
#![allow(clippy::result_large_err)]

mod http;
mod rbac;
mod selectors;
mod store;
pub mod vault;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use serde_json::{Value, json};

use store::Store;

/// A verb/resource/namespace/name rule to grant a test user, turned into real RBAC objects
/// (a Role or ClusterRole and its binding) by [`FakeCluster::add_token`]. Tests of the shipped
/// RBAC load the manifests themselves instead ([`FakeCluster::apply_manifests`]).
#[derive(Clone, Debug)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
    /// `None`: each resource's own API group.
    pub api_groups: Option<Vec<String>>,
    /// `None`: every namespace (a ClusterRole binding).
    pub namespaces: Option<Vec<String>>,
    /// `None`: every name. Like RBAC, names never grant `create`, nor `list`/`watch` without a
    /// `metadata.name` field selector.
    pub names: Option<Vec<String>>,
}

impl Rule {
    pub fn new(verbs: &[&str], resources: &[&str]) -> Self {
        Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            api_groups: None,
            namespaces: None,
            names: None,
        }
    }

    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespaces = Some(vec![ns.to_string()]);
        self
    }

    pub fn named(mut self, names: &[&str]) -> Self {
        self.names = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Everything.
    pub fn admin() -> Self {
        Rule {
            api_groups: Some(vec!["*".to_string()]),
            ..Rule::new(&["*"], &["*"])
        }
    }

    /// The PolicyRule this stands for.
    fn policy_rule(&self) -> Value {
        let groups: Vec<String> = match &self.api_groups {
            Some(g) => g.clone(),
            None => {
                let mut g: Vec<String> = self
                    .resources
                    .iter()
                    .map(|r| store::group_of(r).to_string())
                    .collect();
                g.dedup();
                g
            }
        };
        let mut rule =
            json!({"apiGroups": groups, "resources": self.resources, "verbs": self.verbs});
        if let Some(names) = &self.names {
            rule["resourceNames"] = json!(names);
        }
        rule
    }
}

/// What to do to upcoming requests.
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer with this HTTP status and a `Status` body.
    Status(u16),
    /// Close the connection without answering.
    Drop,
    /// Wait this long before handling the request normally.
    Delay(Duration),
    /// Handle the request (a write is stored), then answer with this status instead of the
    /// result: the client cannot tell whether its write happened.
    StatusAfterCommit(u16),
    /// Handle the request, then close the connection without answering.
    DropAfterCommit,
    /// Answer 200 with this body, which is not what the client asked for (a proxy's page, a
    /// truncated object): clients that log bodies they cannot parse show it.
    Garbage(String),
}

#[derive(Clone, Debug)]
struct Fault {
    action: FaultAction,
    /// Matching requests to let through before the fault starts.
    skip: usize,
    remaining: usize,
    writes_only: bool,
    /// Only requests with this method to this path whose query holds this text, and not dry
    /// runs.
    only: Option<(&'static str, String, &'static str)>,
}

/// One recorded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Order of arrival across every cluster of every server in this process.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// The user the bearer token stands for ("" when there was none or it is unknown).
    pub user: String,
    /// When the answer was sent.
    pub at: std::time::SystemTime,
}

pub(crate) struct ClusterState {
    pub(crate) store: Store,
    tokens: HashMap<String, rbac::Identity>,
    /// Roles made by `add_token` so far (for their names).
    grants: u64,
    faults: Vec<Fault>,
    conflict_on_write: Option<u64>,
    concurrent_update: Option<(u64, Value)>,
    pub(crate) writes: u64,
    /// Requests received, answered or not.
    pub(crate) arrivals: u64,
    pub(crate) requests: Vec<Request>,
    pub(crate) rollout_delay: Duration,
    pub(crate) rollouts_stuck: bool,
    pub(crate) rollouts_deadline_exceeded: bool,
}

/// One simulated cluster, reachable at `http://{addr}` or, for a TLS server, `https://{addr}`.
pub struct FakeCluster {
    pub name: String,
    pub addr: SocketAddr,
    /// The serving certificate (PEM) when the cluster speaks TLS.
    pub ca_pem: Option<String>,
    state: Mutex<ClusterState>,
    pub(crate) events: tokio::sync::broadcast::Sender<store::Event>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl FakeCluster {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The token with every permission.
    pub fn admin_token(&self) -> String {
        format!("admin-{}", self.name)
    }

    /// Makes `token` authenticate as `user` and grants it `rules` through RBAC objects: a
    /// ClusterRole and ClusterRoleBinding for the rules without namespaces, a Role and
    /// RoleBinding in each namespace named.
    pub fn add_token(&self, token: &str, user: &str, rules: Vec<Rule>) {
        let mut st = self.lock();
        st.tokens
            .insert(token.to_string(), rbac::Identity::new(user));
        st.grants += 1;
        let name = format!("test-grant-{}", st.grants);
        let mut scopes: Vec<Option<String>> = Vec::new();
        for r in &rules {
            match &r.namespaces {
                None => scopes.push(None),
                Some(nss) => scopes.extend(nss.iter().cloned().map(Some)),
            }
        }
        scopes.sort();
        scopes.dedup();
        let mut events = Vec::new();
        for scope in scopes {
            let in_scope: Vec<Value> = rules
                .iter()
                .filter(|r| match (&r.namespaces, &scope) {
                    (None, None) => true,
                    (Some(nss), Some(ns)) => nss.contains(ns),
                    _ => false,
                })
                .map(Rule::policy_rule)
                .collect();
            let (role_kind, binding_kind) = match scope {
                None => ("ClusterRole", "ClusterRoleBinding"),
                Some(_) => ("Role", "RoleBinding"),
            };
            let meta = match &scope {
                None => json!({"name": name}),
                Some(ns) => json!({"name": name, "namespace": ns}),
            };
            events.push(
                st.store
                    .put_fixture(json!({
                        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
                        "metadata": meta, "rules": in_scope,
                    }))
                    .1,
            );
            events.push(st.store.put_fixture(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
            })).1);
        }
        drop(st);
        for e in events {
            let _ = self.events.send(e);
        }
    }

    /// Makes `token` authenticate as the service account `namespace`/`name` (user
    /// `system:serviceaccount:NAMESPACE:NAME`), with no permission of its own: what it may do
    /// is what the RBAC objects in the cluster bind to it.
    pub fn add_service_account_token(&self, token: &str, namespace: &str, name: &str) {
        self.lock().tokens.insert(
            token.to_string(),
            rbac::Identity::new(&format!("system:serviceaccount:{namespace}:{name}")),
        );
    }

    /// Creates or replaces every object of a manifest as `kubectl apply -f` would be given it:
    /// YAML or JSON, one or more documents, `List`s flattened; namespaced objects without a
    /// namespace go to `namespace` (as `kubectl -n` or kustomize's `namespace:` would put them).
    pub fn apply_manifests(&self, text: &str, namespace: &str) {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("manifest: {e}"));
        let mut objects = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            match doc["kind"].as_str() {
                Some("List") => {
                    objects.extend(doc["items"].as_array().cloned().unwrap_or_default())
                }
                _ => objects.push(doc),
            }
        }
        for mut o in objects {
            let kind = o["kind"].as_str().unwrap_or_default().to_string();
            let rt = store::TYPES
                .iter()
                .find(|t| t.kind == kind)
                .unwrap_or_else(|| panic!("the test apiserver does not know kind {kind:?}"));
            if rt.namespaced && o["metadata"]["namespace"].is_null() {
                o["metadata"]["namespace"] = Value::from(namespace);
            }
            self.put(o);
        }
    }

    /// A kubeconfig for this cluster, authenticating with `token`; the context is the cluster's name.
    pub fn kubeconfig(&self, token: &str) -> String {
        use base64::Engine;
        let ca = match &self.ca_pem {
            Some(pem) => format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            ),
            None => String::new(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {url}\n{ca}\
             users:\n- name: {n}-user\n  user:\n    token: {token}\n\
             contexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}-user\n\
             current-context: {n}\n",
            n = self.name,
            url = self.url(),
        )
    }

    /// Creates or replaces an object directly (no auth, no faults), as a test fixture.
    pub fn put(&self, object: Value) -> Value {
        let mut st = self.lock();
        let (obj, event) = st.store.put_fixture(object);
        drop(st);
        let _ = self.events.send(event);
        obj
    }

    /// Creates a namespace with labels.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.put(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }));
    }

    /// Deletes an object directly (a fixture), if it exists.
    pub fn delete(&self, plural: &str, ns: &str, name: &str) {
        let mut st = self.lock();
        let Some(rt) = store::TYPES.iter().find(|t| t.plural == plural) else {
            return;
        };
        if let Ok((_, event)) = st.store.delete(rt, ns, name) {
            drop(st);
            let _ = self.events.send(event);
        }
    }

    /// Reads an object (`plural` e.g. "secrets"; `ns` "" for cluster-scoped ones).
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().store.get(plural, ns, name).cloned()
    }

    /// Every object of a kind, in one namespace or (`None`) all.
    pub fn list(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.lock()
            .store
            .list(plural, ns)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Every version an object has had (as written, oldest first), deletions included as the
    /// last version before them.
    pub fn history(&self, plural: &str, ns: &str, name: &str) -> Vec<Value> {
        self.lock()
            .store
            .history
            .iter()
            .filter(|e| e.plural == plural && e.ns == ns && e.object["metadata"]["name"] == name)
            .map(|e| e.object.clone())
            .collect()
    }

    /// Like an etcd compaction: every open watch ends with an ERROR event (410 Expired), and
    /// a watch resuming from any resourceVersion seen so far gets the same.
    pub fn expire_watches(&self) {
        let mut st = self.lock();
        st.store.compacted_rv = st.store.rv + 1;
        let event = store::Event {
            rv: st.store.rv,
            kind: store::EXPIRED,
            plural: "",
            ns: String::new(),
            object: Value::Null,
        };
        drop(st);
        let _ = self.events.send(event);
    }

    /// The user a bearer token stands for.
    pub(crate) fn user_of(&self, token: Option<&str>) -> String {
        token
            .and_then(|t| self.lock().tokens.get(t).map(|id| id.user.clone()))
            .unwrap_or_default()
    }

    /// Applies `action` to the next `count` requests (or writes only).
    pub fn inject(&self, action: FaultAction, count: usize, writes_only: bool) {
        self.inject_after(0, action, count, writes_only);
    }

    /// Like [`FakeCluster::inject`], after letting `skip` matching requests through.
    pub fn inject_after(&self, skip: usize, action: FaultAction, count: usize, writes_only: bool) {
        self.lock().faults.push(Fault {
            action,
            skip,
            remaining: count,
            writes_only,
            only: None,
        });
    }

    /// Applies `action` to the next `count` requests with `method` to `path` (the request's
    /// path, without its query) that are not dry runs (`dryRun=All` in the query: a create,
    /// update or patch).
    pub fn inject_on(&self, method: &'static str, path: &str, action: FaultAction, count: usize) {
        self.inject_on_query(method, path, "", action, count);
    }

    /// Like [`FakeCluster::inject_on`], for requests whose query holds `query` (say
    /// `continue=`: the pages of a list after its first).
    pub fn inject_on_query(
        &self,
        method: &'static str,
        path: &str,
        query: &'static str,
        action: FaultAction,
        count: usize,
    ) {
        self.lock().faults.push(Fault {
            action,
            skip: 0,
            remaining: count,
            writes_only: false,
            only: Some((method, path.to_string(), query)),
        });
    }

    /// Makes the `n`th write from now (1 = the next) fail with 409 Conflict.
    pub fn conflict_on_write(&self, n: u64) {
        let mut st = self.lock();
        st.conflict_on_write = Some(st.writes + n);
    }

    /// Just before the `n`th write from now (1 = the next) is handled, another client replaces
    /// `object` (a fixture write): the write then meets a real resourceVersion conflict.
    pub fn concurrent_update_before_write(&self, n: u64, object: Value) {
        let mut st = self.lock();
        st.concurrent_update = Some((st.writes + n, object));
    }

    /// Injected faults not yet used up.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.iter().map(|f| f.remaining).sum()
    }

    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.conflict_on_write = None;
    }

    /// How long the simulated controllers take to finish a rollout.
    pub fn set_rollout_delay(&self, d: Duration) {
        self.lock().rollout_delay = d;
    }

    /// Rollouts never complete while set (for timeout tests).
    pub fn set_rollouts_stuck(&self, stuck: bool) {
        self.lock().rollouts_stuck = stuck;
    }

    /// While set, the simulated Deployment controller observes each new generation and then
    /// reports `ProgressDeadlineExceeded` instead of finishing the rollout.
    pub fn set_rollouts_deadline_exceeded(&self, exceeded: bool) {
        self.lock().rollouts_deadline_exceeded = exceeded;
    }

    /// Successful writes (create, update, patch, delete) so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Requests received so far, including those still being handled (a delayed one is
    /// counted as soon as it arrives; [`FakeCluster::requests`] lists only answered ones).
    pub fn arrivals(&self) -> u64 {
        self.lock().arrivals
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Takes the next fault that applies to a request, if any.
    pub(crate) fn next_fault(
        &self,
        is_write: bool,
        (method, path, query): (&str, &str, &str),
    ) -> Option<FaultAction> {
        let mut st = self.lock();
        let dry_run = query.split('&').any(|p| p == "dryRun=All");
        let applies = |f: &Fault| match &f.only {
            Some((m, p, q)) => *m == method && p == path && query.contains(q) && !dry_run,
            None => !f.writes_only || is_write,
        };
        let i = st
            .faults
            .iter()
            .position(|f| f.remaining > 0 && applies(f))?;
        if st.faults[i].skip > 0 {
            st.faults[i].skip -= 1;
            return None;
        }
        st.faults[i].remaining -= 1;
        let action = st.faults[i].action.clone();
        st.faults.retain(|f| f.remaining > 0);
        Some(action)
    }

    /// Applies a pending concurrent update if this write is the one it waits for.
    pub(crate) fn concurrent_update(st: &mut ClusterState) -> Option<store::Event> {
        match &st.concurrent_update {
            Some((n, _)) if st.writes + 1 >= *n => {
                let (_, object) = st.concurrent_update.take()?;
                Some(st.store.put_fixture(object).1)
            }
            _ => None,
        }
    }

    /// Whether this write must fail with a conflict (the Nth-write fault).
    pub(crate) fn injected_conflict(st: &mut ClusterState) -> bool {
        match st.conflict_on_write {
            Some(n) if st.writes + 1 >= n => {
                st.conflict_on_write = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn authorize(
        st: &ClusterState,
        token: Option<&str>,
        verb: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), (u16, String)> {
        Self::authorize_in(
            st,
            token,
            verb,
            (store::group_of(resource), resource),
            ns,
            name,
        )
    }

    /// [`FakeCluster::authorize`] of a resource in a named API group, one the server may not
    /// serve (a SelfSubjectAccessReview may ask about any).
    pub(crate) fn authorize_in(
        st: &ClusterState,
        token: Option<&str>,
        verb: &str,
        (group, resource): (&str, &str),
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), (u16, String)> {
        let Some(who) = token.and_then(|t| st.tokens.get(t)) else {
            return Err((401, "Unauthorized".to_string()));
        };
        let request = rbac::Attributes {
            verb,
            group,
            resource,
            namespace: ns,
            name,
        };
        if rbac::allows(&st.store, who, &request) {
            return Ok(());
        }
        let user = &who.user;
        let what = match name {
            Some(n) => format!("{resource} \"{n}\" is forbidden"),
            None => format!("{resource} is forbidden"),
        };
        let scope = match ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Err((
            403,
            format!(
                "{what}: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
            ),
        ))
    }
}

/// A running server with its clusters. Dropping it stops everything.
pub struct TestApiServer {
    clusters: Vec<Arc<FakeCluster>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApiServer {
    /// Starts one cluster per name, each on its own loopback port (plain HTTP), each with an
    /// `admin-<name>` token and the namespaces `default`, `kube-system` and `istio-system`.
    pub fn start(names: &[&str]) -> Self {
        Self::start_with(names, false)
    }

    /// Like [`TestApiServer::start`], serving HTTPS with a self-signed certificate for
    /// 127.0.0.1 (kubectl sends bearer tokens only over TLS).
    pub fn start_tls(names: &[&str]) -> Self {
        Self::start_with(names, true)
    }

    fn start_with(names: &[&str], tls: bool) -> Self {
        let listeners: Vec<std::net::TcpListener> = names
            .iter()
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let clusters: Vec<Arc<FakeCluster>> = names
            .iter()
            .zip(&listeners)
            .map(|(name, l)| {
                let (events, _) = tokio::sync::broadcast::channel(4096);
                let cluster = Arc::new(FakeCluster {
                    name: name.to_string(),
                    addr: l.local_addr().expect("local addr"),
                    ca_pem: None,
                    state: Mutex::new(ClusterState {
                        store: Store::default(),
                        tokens: HashMap::new(),
                        grants: 0,
                        faults: Vec::new(),
                        conflict_on_write: None,
                        concurrent_update: None,
                        writes: 0,
                        arrivals: 0,
                        requests: Vec::new(),
                        rollout_delay: Duration::from_millis(50),
                        rollouts_stuck: false,
                        rollouts_deadline_exceeded: false,
                    }),
                    events,
                    runtime: runtime.handle().clone(),
                });
                // Like a cluster-admin kubeconfig: a member of system:masters.
                let mut admin = rbac::Identity::new("admin");
                admin.groups.push("system:masters".to_string());
                cluster.lock().tokens.insert(cluster.admin_token(), admin);
                for ns in ["default", "kube-system", "istio-system"] {
                    cluster.namespace(ns, &[]);
                }
                cluster
            })
            .collect();
        let tls = tls.then(http::TlsIdentity::generate);
        let clusters: Vec<Arc<FakeCluster>> = clusters
            .into_iter()
            .map(|c| match (&tls, Arc::try_unwrap(c)) {
                (Some(id), Ok(mut c)) => {
                    c.ca_pem = Some(id.cert_pem.clone());
                    Arc::new(c)
                }
                (_, Ok(c)) => Arc::new(c),
                (_, Err(c)) => c,
            })
            .collect();
        let acceptor = tls.map(|id| id.acceptor());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = clusters.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                for (cluster, listener) in serving.into_iter().zip(listeners) {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::spawn(http::serve(cluster, listener, acceptor.clone()));
                }
                let _ = rx.await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        TestApiServer {
            clusters,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn cluster(&self, name: &str) -> &Arc<FakeCluster> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    pub fn clusters(&self) -> &[Arc<FakeCluster>] {
        &self.clusters
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
