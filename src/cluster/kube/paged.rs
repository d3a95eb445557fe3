//! Lists across every namespace, a page at a time (`limit`, then `continue`), as client-go's
//! pager does: a cluster of thousands of namespaces answers in bounded pieces, and cacertd
//! keeps only what it needs of each object, never the whole list at once.

use std::fmt::Debug;

use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use super::KubeTarget;
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;

/// Objects asked for per request.
const PAGE: u32 = 500;

impl KubeTarget {
    /// Every object `params` selects in `api`, each turned by `keep` into what is kept of it
    /// (`None`: nothing). `action` names the list in an error.
    pub(super) async fn list_paged<K, T>(
        &self,
        api: &Api<K>,
        params: ListParams,
        action: &str,
        mut keep: impl FnMut(K) -> Option<T>,
    ) -> Result<Vec<T>, TargetError>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug,
    {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut page_params = params.clone().limit(PAGE);
            if let Some(t) = &token {
                page_params = page_params.continue_token(t);
            }
            let page = match retrying(self.settings(), action, || api.list(&page_params)).await {
                Ok(page) => page,
                // The continue token expired (the apiserver keeps one for minutes): as
                // client-go's pager does, the list is read again whole, in one answer.
                Err(kube::Error::Api(s)) if s.code == 410 && token.is_some() => {
                    let whole = retrying(self.settings(), action, || api.list(&params))
                        .await
                        .map_err(|e| self.error(action, e))?;
                    return Ok(whole.items.into_iter().filter_map(keep).collect());
                }
                Err(e) => return Err(self.error(action, e)),
            };
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            out.extend(page.items.into_iter().filter_map(&mut keep));
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}
