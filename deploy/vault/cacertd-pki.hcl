# Vault policy for cacertd with [root] store = "vault-pki" (mount "pki"). The root key never
# leaves Vault: cacertd may ask Vault to generate a root (internal only) and to sign
# intermediates; it has no access to any export path.
path "pki/root/generate/internal" {
  capabilities = ["update"]
}
path "pki/root/sign-intermediate" {
  capabilities = ["update"]
}
# With [root] issuer = "<ref>":
path "pki/issuer/+/sign-intermediate" {
  capabilities = ["update"]
}
path "pki/issuer/+/json" {
  capabilities = ["read"]
}
path "pki/cert/ca" {
  capabilities = ["read"]
}
# sys/internal/ui/mounts/<mount> needs no policy; auth/token/lookup-self and renew-self come
# with Vault's built-in "default" policy.
