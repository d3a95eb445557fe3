# Vault policy for `cacertd rotate-root start` with [root] store = "vault-kv" (mount "secret",
# path "cacertd/root"), in addition to cacertd-kv.hcl. Attach it for the rotation only.
# The new root waits in cacertd/root-next until every cluster trusts and uses it; it then
# becomes the next version of cacertd/root by check-and-set, so KV v2 keeps the old root as the
# version before (nothing is deleted).
path "secret/data/cacertd/root" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/cacertd/root-next" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/cacertd/root-next" {
  capabilities = ["read"]
}
