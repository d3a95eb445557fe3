# Vault policy for `cacertd root init` (or `issue --init-root`) with [root] store = "vault-pki"
# (mount "pki"), in addition to cacertd-pki.hcl. Attach it to create the mesh's root, then
# detach it: day to day, cacertd needs no power to make a root. Vault generates the root inside
# the PKI engine (internal: its key never leaves it); cacertd never replaces a root that exists.
path "pki/root/generate/internal" {
  capabilities = ["update"]
}
