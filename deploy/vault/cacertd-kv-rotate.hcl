# Vault policy for `cacertd rotate-root start` with [root] store = "vault-kv" (mount "secret",
# path "cacertd/root"), in addition to cacertd-kv.hcl. Attach it for the rotation only.
# The new root waits in cacertd/root-next until every cluster trusts and uses it; it then
# becomes the next version of cacertd/root by check-and-set, so KV v2 keeps the old root as the
# version before (nothing of cacertd/root is deleted). The waiting copy of the new root's key
# is then destroyed: every version of cacertd/root-next, then its metadata (also after
# `transition abort`, when nothing was signed under that root).
path "secret/data/cacertd/root" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/cacertd/root-next" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/cacertd/root-next" {
  capabilities = ["read", "delete"]
}
path "secret/destroy/cacertd/root-next" {
  capabilities = ["update"]
}
