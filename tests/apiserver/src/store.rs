//! Objects, resource versions and the rules Kubernetes applies to writes.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value, json};

/// A kind of object the server knows.
pub(crate) struct ResourceType {
    pub plural: &'static str,
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Deployments, DaemonSets, StatefulSets: have a generation and a rollout.
    /// A workload its simulated controller rolls out: the apps/v1 kinds, and Argo Rollouts.
    pub fn is_workload(&self) -> bool {
        self.group == "apps" || self.plural == "rollouts"
    }
}

pub(crate) const TYPES: [ResourceType; 15] = [
    ResourceType {
        plural: "namespaces",
        kind: "Namespace",
        group: "",
        version: "v1",
        namespaced: false,
        short: &["ns"],
    },
    ResourceType {
        plural: "secrets",
        kind: "Secret",
        group: "",
        version: "v1",
        namespaced: true,
        short: &[],
    },
    ResourceType {
        plural: "configmaps",
        kind: "ConfigMap",
        group: "",
        version: "v1",
        namespaced: true,
        short: &["cm"],
    },
    ResourceType {
        plural: "pods",
        kind: "Pod",
        group: "",
        version: "v1",
        namespaced: true,
        short: &["po"],
    },
    ResourceType {
        plural: "deployments",
        kind: "Deployment",
        group: "apps",
        version: "v1",
        namespaced: true,
        short: &["deploy"],
    },
    ResourceType {
        plural: "daemonsets",
        kind: "DaemonSet",
        group: "apps",
        version: "v1",
        namespaced: true,
        short: &["ds"],
    },
    ResourceType {
        plural: "statefulsets",
        kind: "StatefulSet",
        group: "apps",
        version: "v1",
        namespaced: true,
        short: &["sts"],
    },
    ResourceType {
        plural: "rollouts",
        kind: "Rollout",
        group: "argoproj.io",
        version: "v1alpha1",
        namespaced: true,
        short: &["ro"],
    },
    ResourceType {
        plural: "leases",
        kind: "Lease",
        group: "coordination.k8s.io",
        version: "v1",
        namespaced: true,
        short: &[],
    },
    ResourceType {
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        group: "",
        version: "v1",
        namespaced: true,
        short: &["sa"],
    },
    ResourceType {
        plural: "roles",
        kind: "Role",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short: &[],
    },
    ResourceType {
        plural: "rolebindings",
        kind: "RoleBinding",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short: &[],
    },
    ResourceType {
        plural: "clusterroles",
        kind: "ClusterRole",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short: &[],
    },
    ResourceType {
        plural: "clustertrustbundles",
        kind: "ClusterTrustBundle",
        group: "certificates.k8s.io",
        version: "v1beta1",
        namespaced: false,
        short: &["ctb"],
    },
    ResourceType {
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short: &[],
    },
];

impl ResourceType {
    /// RBAC objects' names are path segments (`system:auth-delegator`), not DNS subdomains.
    fn path_segment_named(&self) -> bool {
        self.group == "rbac.authorization.k8s.io" || self.plural == "clustertrustbundles"
    }
}

pub(crate) fn resource(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    TYPES
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
}

pub(crate) fn group_of(plural: &str) -> &'static str {
    TYPES
        .iter()
        .find(|t| t.plural == plural)
        .map_or("", |t| t.group)
}

/// The kind of the pseudo-event that ends every open watch with 410 Expired.
pub(crate) const EXPIRED: &str = "EXPIRED";

#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: &'static str,
    pub plural: &'static str,
    pub ns: String,
    pub object: Value,
}

#[derive(Debug)]
pub(crate) enum StoreError {
    NotFound {
        plural: String,
        name: String,
    },
    AlreadyExists {
        plural: String,
        name: String,
    },
    Conflict {
        plural: String,
        name: String,
    },
    NamespaceNotFound(String),
    BadRequest(String),
    Invalid {
        plural: String,
        name: String,
        message: String,
    },
    /// Server-side apply touching fields another manager owns.
    ApplyConflict {
        message: String,
    },
}

impl StoreError {
    /// (HTTP code, reason, message) as the real apiserver words them.
    pub fn status(&self) -> (u16, &'static str, String) {
        match self {
            StoreError::NotFound { plural, name } => {
                (404, "NotFound", format!("{plural} \"{name}\" not found"))
            }
            StoreError::AlreadyExists { plural, name } => (
                409,
                "AlreadyExists",
                format!("{plural} \"{name}\" already exists"),
            ),
            StoreError::Conflict { plural, name } => (
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            ),
            StoreError::NamespaceNotFound(ns) => {
                (404, "NotFound", format!("namespaces \"{ns}\" not found"))
            }
            StoreError::BadRequest(m) => (400, "BadRequest", m.clone()),
            StoreError::ApplyConflict { message } => (409, "Conflict", message.clone()),
            StoreError::Invalid {
                plural,
                name,
                message,
            } => (
                422,
                "Invalid",
                format!("{plural} \"{name}\" is invalid: {message}"),
            ),
        }
    }
}

type Key = (&'static str, String, String);

#[derive(Default)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    /// Server-side apply field ownership of `spec`: leaf path → field manager.
    managed: BTreeMap<Key, BTreeMap<String, String>>,
    pub rv: u64,
    uid: u64,
    pub history: Vec<Event>,
    /// Watches from a resourceVersion older than this get 410 Expired (history was dropped).
    pub compacted_rv: u64,
}

/// The checks the real apiserver makes of names, labels and data keys (its messages, shortened
/// to their first sentence).
fn validate(rt: &ResourceType, obj: &Map<String, Value>) -> Result<(), String> {
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m["name"].as_str()).unwrap_or_default();
    // Namespaces are DNS-1123 labels; everything else here a DNS-1123 subdomain.
    let name_ok = if rt.plural == "namespaces" {
        dns1123_label(name)
    } else if rt.path_segment_named() {
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
    } else {
        name.len() <= 253 && name.split('.').all(dns1123_label)
    };
    if !name_ok {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character"
        ));
    }
    let labels = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    for (key, value) in labels.into_iter().flatten() {
        let value = value.as_str().unwrap_or("\u{0}");
        let (prefix, key_name) = key.rsplit_once('/').unwrap_or(("", key));
        let prefix_ok =
            prefix.is_empty() || (prefix.len() <= 253 && prefix.split('.').all(dns1123_label));
        if !prefix_ok || !label_value(key_name) || key_name.is_empty() {
            return Err(format!(
                "metadata.labels: Invalid value: {key:?}: name part must consist of alphanumeric \
                 characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
        if !label_value(value) {
            return Err(format!(
                "metadata.labels: Invalid value: {value:?}: a valid label must be an empty string or \
                 consist of alphanumeric characters, '-', '_' or '.', and must start and end with \
                 an alphanumeric character"
            ));
        }
    }
    if matches!(rt.plural, "secrets" | "configmaps") {
        for field in ["data", "stringData", "binaryData"] {
            for key in obj
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                let ok = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                    && key != "."
                    && key != "..";
                if !ok {
                    return Err(format!(
                        "{field}[{key}]: Invalid value: {key:?}: a valid config key must consist of \
                         alphanumeric characters, '-', '_' or '.'"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn name_of(obj: &Value) -> Option<&str> {
    meta(obj)
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta(obj)
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<&Value> {
        let rt = TYPES.iter().find(|t| t.plural == plural)?;
        self.objects
            .get(&(rt.plural, ns.to_string(), name.to_string()))
    }

    pub fn list(&self, plural: &str, ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((p, n, _), _)| *p == plural && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect()
    }

    fn record(
        &mut self,
        kind: &'static str,
        rt: &'static ResourceType,
        ns: &str,
        object: &Value,
    ) -> Event {
        let event = Event {
            rv: self.rv,
            kind,
            plural: rt.plural,
            ns: ns.to_string(),
            object: object.clone(),
        };
        self.history.push(event.clone());
        if self.history.len() > 20_000 {
            self.history.drain(..10_000);
            self.compacted_rv = self.history[0].rv;
        }
        event
    }

    /// Fills in what the apiserver owns and checks what it validates.
    fn normalize(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        mut obj: Value,
        old: Option<&Value>,
    ) -> Result<Value, StoreError> {
        let name = name_of(&obj).unwrap_or_default().to_string();
        let invalid = |message: String| StoreError::Invalid {
            plural: rt.plural.to_string(),
            name: name.clone(),
            message,
        };
        let Some(map) = obj.as_object_mut() else {
            return Err(StoreError::BadRequest("body is not a JSON object".into()));
        };
        validate(rt, map).map_err(invalid)?;
        map.insert("apiVersion".into(), Value::from(rt.api_version()));
        map.insert("kind".into(), Value::from(rt.kind));
        self.rv += 1;
        let rv = self.rv;
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| StoreError::BadRequest("metadata is not an object".into()))?;
        if rt.namespaced {
            metadata.insert("namespace".into(), Value::from(ns));
        } else {
            metadata.remove("namespace");
        }
        metadata.insert("resourceVersion".into(), Value::from(rv.to_string()));
        match old.and_then(meta) {
            Some(old_meta) => {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = old_meta.get(k) {
                        metadata.insert(k.into(), v.clone());
                    }
                }
            }
            None => {
                self.uid += 1;
                metadata.insert(
                    "uid".into(),
                    Value::from(format!("00000000-0000-0000-0000-{:012}", self.uid)),
                );
                metadata.insert("creationTimestamp".into(), Value::from(now()));
            }
        }
        if rt.plural == "secrets" {
            if let Some(Value::Object(string_data)) = map.remove("stringData") {
                let data = map.entry("data").or_insert_with(|| json!({}));
                for (k, v) in string_data {
                    let s = v.as_str().unwrap_or_default();
                    data[k] = Value::from(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
            if let Some(data) = map.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    let ok = v.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        return Err(invalid(format!(
                            "data[{k}]: Invalid value: illegal base64 data"
                        )));
                    }
                }
            }
            let ty = map
                .entry("type")
                .or_insert_with(|| Value::from("Opaque"))
                .clone();
            if let Some(old_ty) = old.and_then(|o| o.get("type"))
                && *old_ty != ty
            {
                return Err(invalid("type: Invalid value: field is immutable".into()));
            }
        }
        if rt.plural == "namespaces" {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        if rt.is_workload() {
            let old_gen = old.and_then(|o| o["metadata"]["generation"].as_i64());
            let spec_changed = old.is_none_or(|o| o.get("spec") != map.get("spec"));
            let generation = match old_gen {
                Some(g) if !spec_changed => g,
                Some(g) => g + 1,
                None => 1,
            };
            map["metadata"]["generation"] = Value::from(generation);
            // Writes to the main resource never change status (that is the status subresource).
            let status = old
                .and_then(|o| o.get("status").cloned())
                .unwrap_or_else(|| json!({}));
            map.insert("status".into(), status);
        }
        Ok(obj)
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), StoreError> {
        if rt.namespaced
            && !self
                .objects
                .contains_key(&("namespaces", String::new(), ns.to_string()))
        {
            return Err(StoreError::NamespaceNotFound(ns.to_string()));
        }
        Ok(())
    }

    pub fn create(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        obj: Value,
    ) -> Result<(Value, Event), StoreError> {
        let name = name_of(&obj)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::BadRequest("metadata.name is required".into()))?
            .to_string();
        self.check_namespace(rt, ns)?;
        let key = (rt.plural, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                plural: rt.plural.into(),
                name,
            });
        }
        let obj = self.normalize(rt, ns, obj, None)?;
        self.objects.insert(key, obj.clone());
        let event = self.record("ADDED", rt, ns, &obj);
        Ok((obj, event))
    }

    pub fn replace(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
    ) -> Result<(Value, Event), StoreError> {
        self.try_replace(rt, ns, name, &obj)?;
        let old = self.current(rt, ns, name, rv_of(&obj))?;
        self.store_modified(rt, ns, obj, &old)
    }

    /// The checks of [`Store::replace`], storing nothing (a dry run).
    pub fn try_replace(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        obj: &Value,
    ) -> Result<(), StoreError> {
        if name_of(obj) != Some(name) {
            return Err(StoreError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(obj).unwrap_or("")
            )));
        }
        self.current(rt, ns, name, rv_of(obj)).map(|_| ())
    }

    /// The object a write starts from, checking the write's resourceVersion precondition.
    fn current(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Value, StoreError> {
        let old = self
            .objects
            .get(&(rt.plural, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                plural: rt.plural.into(),
                name: name.into(),
            })?;
        if precondition.is_some_and(|want| Some(want) != rv_of(&old)) {
            return Err(StoreError::Conflict {
                plural: rt.plural.into(),
                name: name.into(),
            });
        }
        Ok(old)
    }

    fn store_modified(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        obj: Value,
        old: &Value,
    ) -> Result<(Value, Event), StoreError> {
        let obj = self.normalize(rt, ns, obj, Some(old))?;
        let name = name_of(&obj).unwrap_or_default().to_string();
        self.objects
            .insert((rt.plural, ns.to_string(), name), obj.clone());
        let event = self.record("MODIFIED", rt, ns, &obj);
        Ok((obj, event))
    }

    pub fn patch(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(Value, Event), StoreError> {
        let old = self.current(rt, ns, name, rv_of(patch))?;
        let mut obj = old.clone();
        merge_patch(&mut obj, patch);
        if name_of(&obj) != Some(name) {
            return Err(StoreError::BadRequest(
                "a patch may not change metadata.name".into(),
            ));
        }
        self.store_modified(rt, ns, obj, &old)
    }

    pub fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<(Value, Event), StoreError> {
        let key = (rt.plural, ns.to_string(), name.to_string());
        let obj = self
            .objects
            .remove(&key)
            .ok_or_else(|| StoreError::NotFound {
                plural: rt.plural.into(),
                name: name.into(),
            })?;
        self.rv += 1;
        let event = self.record("DELETED", rt, ns, &obj);
        if rt.is_workload() {
            // The garbage collector: the workload's pods go with it.
            let controller = format!("{}/{name}", rt.plural);
            self.objects.retain(|(plural, pns, _), pod| {
                !(*plural == "pods"
                    && pns == ns
                    && pod["metadata"]["annotations"]["test.cacertd.io/controller"] == controller)
            });
        }
        Ok((obj, event))
    }

    /// Test fixture: create or replace, ignoring preconditions.
    pub fn put_fixture(&mut self, obj: Value) -> (Value, Event) {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let rt = TYPES
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("unknown kind {kind}"));
        let ns = if rt.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = name_of(&obj)
            .expect("fixture needs metadata.name")
            .to_string();
        let key = (rt.plural, ns.clone(), name);
        let old = self.objects.get(&key).cloned();
        let mut obj = obj;
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let status = obj.get("status").cloned();
        let mut obj = self
            .normalize(rt, &ns, obj, old.as_ref())
            .expect("valid fixture");
        if let Some(status) = status {
            obj["status"] = status;
        }
        self.objects.insert(key, obj.clone());
        let event = self.record(
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            rt,
            &ns,
            &obj,
        );
        if rt.is_workload() && old.is_none() {
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            self.replace_pods(rt, &ns, &obj, generation);
        }
        (obj, event)
    }

    /// The pods the simulated controllers run for a workload: its template's `replicas` copies
    /// (a DaemonSet's `desiredNumberScheduled`), each a new pod with a new uid, replacing the
    /// ones it had — for a StatefulSet only the ordinals at or above its partition.
    /// Deployment pods are named `<name>-<generation>-<i>` and owned by a ReplicaSet of that
    /// name; StatefulSet pods keep `<name>-<i>`.
    fn replace_pods(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        workload: &Value,
        generation: i64,
    ) -> Vec<Event> {
        let Some(pods) = TYPES.iter().find(|t| t.plural == "pods") else {
            return Vec::new();
        };
        let name = name_of(workload).unwrap_or_default().to_string();
        let controller = format!("{}/{name}", rt.plural);
        let count = match rt.plural {
            "daemonsets" => workload["status"]["desiredNumberScheduled"].as_i64(),
            _ => workload["spec"]["replicas"].as_i64(),
        }
        .unwrap_or(1);
        let partition = match rt.plural {
            "statefulsets" => workload["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
                .as_i64()
                .unwrap_or(0),
            _ => 0,
        };
        let pod_name = |i: i64| match rt.plural {
            "statefulsets" => format!("{name}-{i}"),
            _ => format!("{name}-{generation}-{i}"),
        };
        let (owner_kind, owner_name) = match rt.plural {
            "deployments" | "rollouts" => ("ReplicaSet", format!("{name}-{generation}")),
            _ => (rt.kind, name.clone()),
        };
        let mut events = Vec::new();
        let old: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|((plural, pns, _), pod)| {
                *plural == "pods"
                    && pns == ns
                    && pod["metadata"]["annotations"]["test.cacertd.io/controller"] == controller
            })
            .map(|((_, _, n), pod)| (n.clone(), pod.clone()))
            .collect();
        for (pod, obj) in old {
            let ordinal = pod.rsplit('-').next().and_then(|i| i.parse::<i64>().ok());
            if rt.plural == "statefulsets" && ordinal.is_some_and(|i| i < partition) {
                continue;
            }
            self.objects.remove(&("pods", ns.to_string(), pod));
            self.rv += 1;
            events.push(self.record("DELETED", pods, ns, &obj));
        }
        let template = &workload["spec"]["template"];
        for i in partition..count.max(partition) {
            let key = ("pods", ns.to_string(), pod_name(i));
            if self.objects.contains_key(&key) {
                continue;
            }
            let mut annotations = template["metadata"]["annotations"].clone();
            if !annotations.is_object() {
                annotations = json!({});
            }
            annotations["test.cacertd.io/controller"] = Value::from(controller.clone());
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            let pod = json!({
                "metadata": {
                    "name": pod_name(i),
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind,
                                          "name": owner_name, "uid": "owner", "controller": true}],
                },
                "spec": template["spec"].clone(),
                "status": {"phase": "Running"},
            });
            if let Ok(mut pod) = self.normalize(pods, ns, pod, None) {
                pod["status"] = json!({"phase": "Running"});
                self.objects.insert(key, pod.clone());
                events.push(self.record("ADDED", pods, ns, &pod));
            }
        }
        events
    }

    /// The simulated controller finishing a rollout of `generation` (or, with
    /// `deadline_exceeded`, giving up on a Deployment's).
    pub fn complete_rollout(
        &mut self,
        plural: &str,
        ns: &str,
        name: &str,
        generation: i64,
        deadline_exceeded: bool,
    ) -> Vec<Event> {
        let Some(rt) = TYPES.iter().find(|t| t.plural == plural) else {
            return Vec::new();
        };
        let key = (rt.plural, ns.to_string(), name.to_string());
        let Some(obj) = self.objects.get_mut(&key) else {
            return Vec::new();
        };
        if obj["metadata"]["generation"].as_i64() != Some(generation) {
            return Vec::new();
        }
        let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        // What a real controller would not roll out: a paused Deployment, an OnDelete
        // DaemonSet/StatefulSet. The generation is observed, the pods stay as they are.
        let paused = obj["spec"]["paused"] == Value::Bool(true);
        let on_delete = obj["spec"]["updateStrategy"]["type"] == "OnDelete";
        if paused || on_delete {
            obj["status"]["observedGeneration"] = Value::from(generation);
            self.rv += 1;
            obj["metadata"]["resourceVersion"] = Value::from(self.rv.to_string());
            let obj = obj.clone();
            return vec![self.record("MODIFIED", rt, ns, &obj)];
        }
        if deadline_exceeded && plural == "deployments" {
            // What the Deployment controller reports once `progressDeadlineSeconds` pass
            // without the new ReplicaSet becoming available.
            obj["status"] = json!({
                "observedGeneration": generation, "replicas": replicas + 1,
                "updatedReplicas": 1, "readyReplicas": replicas, "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True"},
                               {"type": "Progressing", "status": "False",
                                "reason": "ProgressDeadlineExceeded",
                                "message": format!("ReplicaSet \"{name}-{generation}\" has timed out progressing.")}],
            });
            self.rv += 1;
            obj["metadata"]["resourceVersion"] = Value::from(self.rv.to_string());
            let obj = obj.clone();
            return vec![self.record("MODIFIED", rt, ns, &obj)];
        }
        let partition = obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0);
        let desired = obj["status"]["desiredNumberScheduled"]
            .as_i64()
            .unwrap_or(1);
        let status = match plural {
            "deployments" => json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True"},
                               {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
            }),
            // Argo Rollouts: a restart is done when every pod is younger than `restartAt`.
            "rollouts" => json!({
                "observedGeneration": generation.to_string(), "replicas": replicas,
                "availableReplicas": replicas, "phase": "Healthy",
                "restartedAt": obj["spec"]["restartAt"].clone(),
            }),
            "daemonsets" => json!({
                "observedGeneration": generation, "desiredNumberScheduled": desired,
                "currentNumberScheduled": desired, "updatedNumberScheduled": desired,
                "numberReady": desired, "numberAvailable": desired, "numberMisscheduled": 0,
            }),
            _ => json!({
                "observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
                "currentReplicas": replicas, "updatedReplicas": replicas - partition,
                "availableReplicas": replicas,
                "currentRevision": format!("{name}-{generation}"), "updateRevision": format!("{name}-{generation}"),
            }),
        };
        obj["status"] = status;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::from(self.rv.to_string());
        let obj = obj.clone();
        let mut events = vec![self.record("MODIFIED", rt, ns, &obj)];
        events.extend(self.replace_pods(rt, ns, &obj, generation));
        events
    }
}

/// Leaf fields of a JSON object, as dotted paths (arrays count as leaves).
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                leaves(v, &format!("{prefix}.{k}"), out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(v, |v, k| v.get(k))
}

impl Store {
    /// Records `manager` as owner of the `spec` fields a write set (and forgets the ones it
    /// cleared) — the part of server-side apply's field management the tests rely on.
    pub fn record_owner(
        &mut self,
        plural: &'static str,
        ns: &str,
        name: &str,
        written: &Value,
        manager: &str,
    ) {
        let key = (plural, ns.to_string(), name.to_string());
        let owners = self.managed.entry(key).or_default();
        let mut fields = Vec::new();
        leaves(&written["spec"], ".spec", &mut fields);
        for (path, value) in fields {
            if value.is_null() {
                owners.retain(|p, _| !p.starts_with(&path));
            } else {
                owners.insert(path, manager.to_string());
            }
        }
    }

    /// Server-side apply: creates the object, or merges `patch` into it unless that changes a
    /// field another manager owns (409 Conflict) and `force` is off.
    pub fn apply(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        patch: &Value,
        manager: &str,
        force: bool,
    ) -> Result<(Value, Event), StoreError> {
        let key = (rt.plural, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            let mut obj = patch.clone();
            obj["metadata"]["name"] = Value::from(name);
            let created = self.create(rt, ns, obj)?;
            self.record_owner(rt.plural, ns, name, patch, manager);
            return Ok(created);
        };
        let mut fields = Vec::new();
        leaves(&patch["spec"], ".spec", &mut fields);
        let owners = self.managed.get(&key).cloned().unwrap_or_default();
        let conflicts: Vec<String> = fields
            .iter()
            .filter(|(path, value)| {
                owners.get(path).is_some_and(|o| o != manager) && at(&old, path) != Some(value)
            })
            .map(|(path, _)| format!("conflict with \"{}\": {path}", owners[path]))
            .collect();
        if !conflicts.is_empty() && !force {
            return Err(StoreError::ApplyConflict {
                message: format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join("; ")
                ),
            });
        }
        let mut obj = old.clone();
        merge_patch(&mut obj, patch);
        let result = self.store_modified(rt, ns, obj, &old)?;
        self.record_owner(rt.plural, ns, name, patch, manager);
        Ok(result)
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(plural: &str, obj: Value) -> Result<(), String> {
        let rt = TYPES.iter().find(|t| t.plural == plural).unwrap();
        validate(rt, obj.as_object().unwrap())
    }

    #[test]
    fn names_labels_and_data_keys_are_validated_as_kubernetes_does() {
        let secret = |name: &str, label: &str, key: &str| {
            json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": label}},
                   "data": {key: ""}})
        };
        assert_eq!(
            check(
                "secrets",
                secret("cacerts-backup-20261130t021714z", "cacertd", "ca-cert.pem")
            ),
            Ok(())
        );
        for (name, label, key, field) in [
            (
                "cacerts-backup-20261130T021714Z",
                "cacertd",
                "ca-cert.pem",
                "metadata.name",
            ),
            ("-cacerts", "cacertd", "ca-cert.pem", "metadata.name"),
            ("cacerts", "not ok", "ca-cert.pem", "metadata.labels"),
            ("cacerts", "-edge", "ca-cert.pem", "metadata.labels"),
            ("cacerts", "cacertd", "ca cert.pem", "data[ca cert.pem]"),
            ("cacerts", "cacertd", "ca/cert.pem", "data[ca/cert.pem]"),
        ] {
            let err = check("secrets", secret(name, label, key)).unwrap_err();
            assert!(err.starts_with(field), "{name} {label} {key}: {err}");
        }
        // A namespace name is a DNS-1123 label: no dots.
        assert!(check("namespaces", json!({"metadata": {"name": "istio.system"}})).is_err());
        assert_eq!(
            check("configmaps", json!({"metadata": {"name": "istio.system"}})),
            Ok(())
        );
    }
}
