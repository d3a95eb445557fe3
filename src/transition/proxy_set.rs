//! The proxies a phase's gate waits on, kept small enough for any mesh: a transition's record
//! lives in a Kubernetes Secret (at most 1 MiB) when replicas share it, and a primary with
//! its remotes may run tens of thousands of proxies.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of proxies (`cluster/pod-uid`), as the first 64 bits of each one's SHA-256: 8 bytes
/// a proxy (50,000 take 0.5 MiB of JSON), and two of a mesh's proxies share a digest with a
/// chance of about 1 in 10^10 — which could only make a gate wait for a proxy that is gone.
/// Serialized as one base64 string; a record written as a list of names is read too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySet(BTreeSet<u64>);

fn digest(key: &str) -> u64 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

impl ProxySet {
    pub fn of<K: AsRef<str>>(keys: impl IntoIterator<Item = K>) -> Self {
        ProxySet(keys.into_iter().map(|k| digest(k.as_ref())).collect())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains(&digest(key))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Serialize for ProxySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|d| d.to_be_bytes()).collect();
        s.serialize_str(&STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for ProxySet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Packed(String),
            Listed(Vec<String>),
        }
        match Form::deserialize(d)? {
            Form::Listed(keys) => Ok(ProxySet::of(keys)),
            Form::Packed(text) => {
                let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
                if bytes.len() % 8 != 0 {
                    return Err(serde::de::Error::custom(
                        "a proxy set is a whole number of 8-byte digests",
                    ));
                }
                Ok(ProxySet(
                    bytes
                        .chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_thousand_proxies_fit_a_secret_and_are_found_again() {
        let keys: Vec<String> = (0..50_000)
            .map(|i| format!("cluster{}/0c7f1e2a-{i:08x}-4d5e-9f00-1234567890ab", i % 7))
            .collect();
        let set = ProxySet::of(&keys);
        assert_eq!(set.len(), keys.len(), "no two share a digest");
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.len() < 600_000, "{} bytes", json.len());
        let back: ProxySet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert!(keys.iter().all(|k| back.contains(k)));
        assert!(!back.contains("cluster1/a-pod-created-later"));
    }

    #[test]
    fn a_record_that_listed_names_is_read() {
        let old = r#"["c1/uid-1","c2/uid-2"]"#;
        let set: ProxySet = serde_json::from_str(old).unwrap();
        assert!(set.contains("c1/uid-1") && set.contains("c2/uid-2") && !set.contains("c1/uid-2"));
        assert!(
            serde_json::from_str::<ProxySet>("\"AAAA\"").is_err(),
            "not whole digests"
        );
    }
}
