# Vault policy for `cacertd revoke CLUSTER` with [root] store = "vault-pki" (mount "pki"), in
# addition to cacertd-pki.hcl. Attach it for the revocation only. Vault revokes the cluster's
# intermediate (which it signed, so it knows it by serial) and rebuilds the issuer's revocation
# list, signed with the issuer's key inside Vault; cacertd publishes that list to every primary
# once the cluster's workloads hold certificates from its successor.
path "pki/revoke" {
  capabilities = ["update"]
}
