# Vault policy for `cacertd root init` (or `issue --init-root`) with [root] store = "vault-pki"
# (mount "pki"), in addition to cacertd-pki.hcl. Attach it to create the mesh's root, then
# detach it: day to day, cacertd needs no power to make a root. Vault generates the root inside
# the PKI engine (internal: its key never leaves it); cacertd never replaces a root that exists.
path "pki/root/generate/internal" {
  capabilities = ["update"]
}
# `root init --csr` and the `root import` of the signed certificate, for a mesh CA that the
# company's offline root signs: Vault makes the key and keeps it (intermediate/generate/
# internal), takes the signed certificate with its chain (intermediate/set-signed), and cacertd
# makes that issuer the mount's default (config/issuers).
path "pki/intermediate/generate/internal" {
  capabilities = ["update"]
}
path "pki/intermediate/set-signed" {
  capabilities = ["update"]
}
path "pki/config/issuers" {
  capabilities = ["read", "update"]
}
