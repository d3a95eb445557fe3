//! The `cacerts` Secret as a Kubernetes manifest, for `kubectl apply -f` or a GitOps repository.

use zeroize::Zeroizing;

use super::WriteMeta;
use crate::pki::{CaCertsFiles, base64_secret, fmt_time};

/// Renders Secret `istio-system/cacerts` (type Opaque, the four keys of docs/istio.md §1). The
/// result embeds the private key, so it lives in a zeroizing buffer and is written 0600.
pub fn cacerts_secret_yaml(files: &CaCertsFiles, meta: &WriteMeta) -> Zeroizing<String> {
    let header = format!(
        "# Istio plug-in CA material for cluster {cluster}, written by cacertd.\n\
         # Contains the intermediate CA's PRIVATE KEY: keep it encrypted at rest (e.g. SOPS).\n\
         apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  \
           name: cacerts\n  \
           namespace: istio-system\n  \
           labels:\n    \
             app.kubernetes.io/managed-by: cacertd\n  \
           annotations:\n    \
             cacertd.io/cluster: {cluster}\n    \
             cacertd.io/serial: {serial}\n    \
             cacertd.io/written-at: {at}\n    \
             cacertd.io/reason: {reason}\n\
         type: Opaque\n\
         data:\n",
        // JSON strings are valid YAML double-quoted scalars, escapes included.
        cluster = quote(&meta.cluster),
        serial = quote(&meta.serial),
        at = quote(&fmt_time(meta.written_at)),
        reason = quote(&meta.reason),
    );
    let encoded: Vec<(&str, Zeroizing<String>)> = files
        .files()
        .into_iter()
        .map(|(name, bytes)| (name, base64_secret(bytes)))
        .collect();
    // Sized exactly: a growing buffer would leave copies of the key behind as it reallocates.
    let len = header.len()
        + encoded
            .iter()
            .map(|(n, e)| 2 + n.len() + 2 + e.len() + 1)
            .sum::<usize>();
    let mut out = Zeroizing::new(String::with_capacity(len));
    out.push_str(&header);
    for (name, encoded) in &encoded {
        out.push_str("  ");
        out.push_str(name);
        out.push_str(": ");
        out.push_str(encoded);
        out.push('\n');
    }
    debug_assert_eq!(out.len(), len);
    out
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
