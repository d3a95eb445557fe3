//! Query strings, label selectors and field selectors.

use std::collections::HashMap;

use serde_json::Value;

pub(crate) fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex =
                    std::str::from_utf8(&bytes[(i + 1).min(bytes.len())..(i + 3).min(bytes.len())])
                        .unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One requirement of a label selector.
#[derive(Debug)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn set_of(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of alphanumerics,
/// '-', '_' and '.', beginning and ending alphanumeric.
fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(prefix, name)| {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            ""
        } else {
            name
        }
    });
    valid_value(name) && !name.is_empty() && name.len() <= 63
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

fn check(req: Req) -> Result<Req, String> {
    let ok = match &req {
        Req::Eq(k, v) | Req::NotEq(k, v) => valid_key(k) && valid_value(v),
        Req::In(k, vs) | Req::NotIn(k, vs) => valid_key(k) && vs.iter().all(|v| valid_value(v)),
        Req::Exists(k) | Req::NotExists(k) => valid_key(k),
    };
    if ok {
        Ok(req)
    } else {
        Err(format!(
            "unable to parse requirement: {req:?}: invalid label key or value"
        ))
    }
}

fn parse_label_selector(s: &str) -> Result<Vec<Req>, String> {
    terms(s)
        .into_iter()
        .map(|t| -> Result<Req, String> {
            if let Some((k, v)) = t.split_once("!=") {
                return Ok(Req::NotEq(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                return Ok(Req::Eq(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = t.split_once(" notin ") {
                return set_of(v)
                    .map(|s| Req::NotIn(k.trim().into(), s))
                    .ok_or(format!("bad selector {t:?}"));
            }
            if let Some((k, v)) = t.split_once(" in ") {
                return set_of(v)
                    .map(|s| Req::In(k.trim().into(), s))
                    .ok_or(format!("bad selector {t:?}"));
            }
            if let Some(k) = t.strip_prefix('!') {
                return Ok(Req::NotExists(k.trim().into()));
            }
            Ok(Req::Exists(t))
        })
        .map(|r| r.and_then(check))
        .collect()
}

/// A compiled label and field selector.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    labels: Vec<Req>,
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, String> {
        let labels = match q.get("labelSelector") {
            Some(s) if !s.is_empty() => parse_label_selector(s)?,
            _ => Vec::new(),
        };
        let mut fields = Vec::new();
        if let Some(s) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
            for t in s.split(',') {
                let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
                    (k, false, v)
                } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                    (k, true, v)
                } else {
                    return Err(format!("invalid field selector {t:?}"));
                };
                if !matches!(k, "metadata.name" | "metadata.namespace") {
                    return Err(format!("field label not supported: {k}"));
                }
                fields.push((k.to_string(), eq, v.to_string()));
            }
        }
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v),
            Req::NotEq(k, v) => label(k) != Some(v),
            Req::In(k, set) => label(k).is_some_and(|l| set.iter().any(|s| s == l)),
            Req::NotIn(k, set) => label(k).is_none_or(|l| !set.iter().any(|s| s == l)),
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(k, eq, v)| {
            let field = match k.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            };
            (field == Some(v.as_str())) == *eq
        });
        labels_ok && fields_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(label: &str) -> Selector {
        let mut q = HashMap::new();
        q.insert("labelSelector".to_string(), label.to_string());
        Selector::from_query(&q).unwrap()
    }

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"istio-injection": "enabled", "app": "x"}}});
        assert!(sel("istio-injection=enabled").matches(&o));
        assert!(sel("istio-injection==enabled,app").matches(&o));
        assert!(!sel("istio-injection!=enabled").matches(&o));
        assert!(sel("app in (x,y)").matches(&o));
        assert!(!sel("app notin (x)").matches(&o));
        assert!(sel("!istio.io/rev").matches(&o));
        assert!(!sel("istio.io/rev").matches(&o));
    }

    #[test]
    fn invalid_selectors_are_refused() {
        for bad in ["!a=b", "a b", "a=b c", "app in x", "-bad=1", "a/=b"] {
            let mut q = HashMap::new();
            q.insert("labelSelector".to_string(), bad.to_string());
            assert!(Selector::from_query(&q).is_err(), "{bad}");
        }
        sel("istio.io/rev");
        sel("istio in (ingressgateway,eastwestgateway)");
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("labelSelector=a%3Db%2Cc&watch=1&x=%ZZ");
        assert_eq!(q["labelSelector"], "a=b,c");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "%ZZ");
    }
}
