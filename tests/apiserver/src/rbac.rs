//! Authorization as Kubernetes' RBAC authorizer decides it, from the Role, ClusterRole,
//! RoleBinding and ClusterRoleBinding objects in the store: a request is allowed when some
//! binding whose subjects include the caller refers (through a `roleRef` in the RBAC API group)
//! to a role with a rule matching the request's API group, resource, verb and name. A
//! ClusterRoleBinding grants everywhere; a RoleBinding only in its own namespace, whether it
//! names a Role there or a ClusterRole. Members of `system:masters` may do anything.

use serde_json::Value;

use crate::store::Store;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Who a bearer token authenticates as.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A user with the groups the apiserver adds: a service account's
    /// (`system:serviceaccount:NS:NAME`) also belongs to `system:serviceaccounts` and
    /// `system:serviceaccounts:NS`.
    pub fn new(user: &str) -> Self {
        let mut groups = vec!["system:authenticated".to_string()];
        if let Some(rest) = user.strip_prefix("system:serviceaccount:")
            && let Some((ns, _)) = rest.split_once(':')
        {
            groups.push("system:serviceaccounts".to_string());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
        Identity {
            user: user.to_string(),
            groups,
        }
    }
}

/// One request to authorize. `name` is the object's name, or for a list or watch narrowed to
/// one object by a `metadata.name` field selector, that object's.
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

pub(crate) fn allows(store: &Store, who: &Identity, req: &Attributes<'_>) -> bool {
    if who.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let grants = |role: Option<&Value>| {
        role.and_then(|r| r["rules"].as_array())
            .into_iter()
            .flatten()
            .any(|rule| rule_allows(rule, req))
    };
    let cluster_wide = store
        .list("clusterrolebindings", None)
        .into_iter()
        .any(|b| {
            bound(b, who, None)
                && b["roleRef"]["kind"] == "ClusterRole"
                && grants(store.get("clusterroles", "", role_name(b)))
        });
    if cluster_wide {
        return true;
    }
    let Some(ns) = req.namespace else {
        return false;
    };
    store
        .list("rolebindings", Some(ns))
        .into_iter()
        .filter(|b| bound(b, who, Some(ns)))
        .any(|b| match b["roleRef"]["kind"].as_str() {
            Some("Role") => grants(store.get("roles", ns, role_name(b))),
            Some("ClusterRole") => grants(store.get("clusterroles", "", role_name(b))),
            _ => false,
        })
}

fn role_name(binding: &Value) -> &str {
    binding["roleRef"]["name"].as_str().unwrap_or_default()
}

/// Whether a binding (in namespace `ns`, `None` for a ClusterRoleBinding) names `who` among its
/// subjects and refers to a role of the RBAC API group.
fn bound(binding: &Value, who: &Identity, ns: Option<&str>) -> bool {
    if binding["roleRef"]["apiGroup"] != RBAC_GROUP {
        return false;
    }
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            match s["kind"].as_str() {
                Some("User") => who.user == name,
                Some("Group") => who.groups.iter().any(|g| g == name),
                Some("ServiceAccount") => {
                    // In a RoleBinding a service account without a namespace is one of the
                    // binding's own namespace.
                    let Some(sa_ns) = s["namespace"].as_str().or(ns) else {
                        return false;
                    };
                    who.user == format!("system:serviceaccount:{sa_ns}:{name}")
                }
                _ => false,
            }
        })
}

fn rule_allows(rule: &Value, req: &Attributes<'_>) -> bool {
    let has = |field: &str, wanted: &str| {
        rule[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "*" || v == wanted))
    };
    if !has("apiGroups", req.group) || !has("resources", req.resource) || !has("verbs", req.verb) {
        return false;
    }
    match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
        None => true,
        // Names never grant `create` (the name is not known to the authorizer then), nor a
        // list or watch that is not narrowed to one of them.
        Some(names) => {
            req.verb != "create" && req.name.is_some_and(|n| names.iter().any(|v| v == n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(objects: &[Value]) -> Store {
        let mut store = Store::default();
        for o in objects {
            store.put_fixture(o.clone());
        }
        store
    }

    fn role(kind: &str, ns: &str, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
               "metadata": {"name": "r", "namespace": ns}, "rules": rules})
    }

    fn binding(kind: &str, ns: &str, role_kind: &str, subject: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
               "metadata": {"name": "b", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "r"},
               "subjects": [subject]})
    }

    fn get_secret<'a>(ns: &'a str, name: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb: "get",
            group: "",
            resource: "secrets",
            namespace: Some(ns),
            name,
        }
    }

    #[test]
    fn a_role_grants_only_through_a_binding_to_the_caller_in_its_namespace() {
        let sa = Identity::new("system:serviceaccount:cacertd:cacertd");
        let secrets = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]);
        let subject = json!({"kind": "ServiceAccount", "name": "cacertd", "namespace": "cacertd"});
        // No binding: nothing.
        let s = store(&[role("Role", "istio-system", secrets.clone())]);
        assert!(!allows(
            &s,
            &sa,
            &get_secret("istio-system", Some("cacerts"))
        ));
        let s = store(&[
            role("Role", "istio-system", secrets.clone()),
            binding("RoleBinding", "istio-system", "Role", subject.clone()),
        ]);
        assert!(allows(
            &s,
            &sa,
            &get_secret("istio-system", Some("cacerts"))
        ));
        assert!(!allows(&s, &sa, &get_secret("default", Some("cacerts"))));
        assert!(!allows(
            &s,
            &Identity::new("someone"),
            &get_secret("istio-system", None)
        ));
        // A binding to a Role of another name, or with the wrong roleRef kind, grants nothing.
        let mut wrong = binding("RoleBinding", "istio-system", "Role", subject.clone());
        wrong["roleRef"]["name"] = json!("other");
        let s = store(&[role("Role", "istio-system", secrets.clone()), wrong]);
        assert!(!allows(&s, &sa, &get_secret("istio-system", None)));
        let s = store(&[
            role("Role", "istio-system", secrets.clone()),
            binding(
                "RoleBinding",
                "istio-system",
                "ClusterRole",
                subject.clone(),
            ),
        ]);
        assert!(!allows(&s, &sa, &get_secret("istio-system", None)));
        // A RoleBinding to a ClusterRole grants in the binding's namespace only.
        let s = store(&[
            role("ClusterRole", "", secrets.clone()),
            binding(
                "RoleBinding",
                "istio-system",
                "ClusterRole",
                subject.clone(),
            ),
        ]);
        assert!(allows(&s, &sa, &get_secret("istio-system", None)));
        assert!(!allows(&s, &sa, &get_secret("default", None)));
        // A ClusterRoleBinding grants everywhere, and to groups.
        let s = store(&[
            role("ClusterRole", "", secrets),
            binding(
                "ClusterRoleBinding",
                "",
                "ClusterRole",
                json!({"kind": "Group", "name": "system:serviceaccounts:cacertd"}),
            ),
        ]);
        assert!(allows(&s, &sa, &get_secret("default", None)));
        assert!(!allows(
            &s,
            &Identity::new("system:serviceaccount:other:x"),
            &get_secret("default", None)
        ));
    }

    #[test]
    fn rules_match_api_group_resource_verb_and_name() {
        let sa = Identity::new("system:serviceaccount:cacertd:cacertd");
        let subject = json!({"kind": "ServiceAccount", "name": "cacertd", "namespace": "cacertd"});
        let with = |rules: Value| {
            store(&[
                role("ClusterRole", "", rules),
                binding("ClusterRoleBinding", "", "ClusterRole", subject.clone()),
            ])
        };
        let patch_deployment = Attributes {
            verb: "patch",
            group: "apps",
            resource: "deployments",
            namespace: Some("app"),
            name: Some("web"),
        };
        // Deployments are in "apps", not the core group.
        let s =
            with(json!([{"apiGroups": [""], "resources": ["deployments"], "verbs": ["patch"]}]));
        assert!(!allows(&s, &sa, &patch_deployment));
        let s = with(
            json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}]),
        );
        assert!(allows(&s, &sa, &patch_deployment));
        let s =
            with(json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]));
        assert!(!allows(&s, &sa, &patch_deployment));
        // Names narrow get/update, never create, and list/watch only when selected by name.
        let s = with(json!([{"apiGroups": [""], "resources": ["secrets"],
                             "resourceNames": ["cacerts"], "verbs": ["get", "create", "watch"]}]));
        assert!(allows(
            &s,
            &sa,
            &get_secret("istio-system", Some("cacerts"))
        ));
        assert!(!allows(&s, &sa, &get_secret("istio-system", Some("other"))));
        let create = Attributes {
            verb: "create",
            ..get_secret("istio-system", Some("cacerts"))
        };
        assert!(!allows(&s, &sa, &create));
        let watch = |name| Attributes {
            verb: "watch",
            ..get_secret("istio-system", name)
        };
        assert!(allows(&s, &sa, &watch(Some("cacerts"))));
        assert!(!allows(&s, &sa, &watch(None)));
    }
}
