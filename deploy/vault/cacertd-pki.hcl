# Vault policy for cacertd's day-to-day work with [root] store = "vault-pki" (mount "pki"). The
# root key never leaves Vault: cacertd asks Vault to sign intermediates with one issuer, and
# has no access to any export path, nor to any other issuer. Creating the root is a separate
# grant (cacertd-pki-init.hcl), as rotating it is (cacertd-pki-rotate.hcl).
#
# Without [root] issuer, cacertd signs with the mount's default issuer:
path "pki/root/sign-intermediate" {
  capabilities = ["update"]
}
path "pki/cert/ca" {
  capabilities = ["read"]
}
# Rebuilding the issuer's revocation list (same entries, a fresh expiry): once a primary serves
# revocation lists, `serve` and `crl refresh` publish Vault's list before it expires. Reading
# the list itself (pki/issuer/<ref>/crl) needs no policy.
path "pki/crl/rotate" {
  capabilities = ["read"]
}
# With [root] issuer = "<name>", grant that issuer only, instead of the first two paths above:
#
# path "pki/issuer/<name>/sign-intermediate" {
#   capabilities = ["update"]
# }
# path "pki/issuer/<name>/json" {
#   capabilities = ["read"]
# }
#
# sys/internal/ui/mounts/<mount> needs no policy; auth/token/lookup-self, renew-self and
# revoke-self come with Vault's built-in "default" policy.
