# Vault policy for `cacertd rotate-root start` with [root] store = "vault-pki" (mount "pki"), in
# addition to cacertd-pki.hcl. Attach it for the rotation only. Vault generates the new root as
# a second issuer (<issuer>-next, or cacertd-root-next without [root] issuer) whose key never
# leaves it; when the rotation is done the new issuer takes the configured issuer's name (the
# old one renamed <name>-replaced-<time>) or becomes the mount's default issuer. No issuer is
# ever deleted.
path "pki/root/generate/internal" {
  capabilities = ["update"]
}
# Read, sign with and rename issuers.
path "pki/issuer/+/json" {
  capabilities = ["read"]
}
path "pki/issuer/+/sign-intermediate" {
  capabilities = ["update"]
}
# Renaming an issuer reads its settings first and writes them back unchanged.
path "pki/issuer/+" {
  capabilities = ["read", "update"]
}
# cacertd refuses to generate while default_follows_latest_issuer is on.
path "pki/config/issuers" {
  capabilities = ["read", "update"]
}
