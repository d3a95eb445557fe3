# Vault policy for cacertd with [root] store = "vault-kv" (mount "secret", path "cacertd/root").
# cacertd reads and writes only this secret; check-and-set 0 on create means it can never
# overwrite an existing root, so "update" is not needed.
path "secret/data/cacertd/root" {
  capabilities = ["create", "read"]
}
path "secret/metadata/cacertd/root" {
  capabilities = ["read"]
}
# The mount's type and KV version (sys/internal/ui/mounts/<mount>) need no policy, and
# auth/token/lookup-self and renew-self come with Vault's built-in "default" policy.
