use super::*;

#[test]
fn only_the_signer_a_cluster_had_is_written_back_without_the_mesh_checks() {
    use crate::transition::Phase;
    let root = crate::pki::fixtures::root();
    let kind = TransitionKind::Migrate;
    for of in [MaterialOf::Original, MaterialOf::Phase(Phase::AddNewRoot)] {
        assert!(
            matches!(
                written_material(kind, of, Some(root.cert()), false),
                Material::ServedBefore
            ),
            "{of:?}"
        );
    }
    for p in [Phase::SwitchSigner, Phase::RemoveOldRoot, Phase::Done] {
        assert!(
            matches!(
                written_material(kind, MaterialOf::Phase(p), Some(root.cert()), false),
                Material::Issued { root: Some(r) } if r == root.cert()
            ),
            "{p:?}"
        );
    }
    // A root's removal: each cluster's own intermediate, all the mesh checks.
    assert!(matches!(
        written_material(
            TransitionKind::RemoveRoot,
            MaterialOf::Phase(Phase::RemoveOldRoot),
            None,
            false
        ),
        Material::Issued { root: None }
    ));
    // A revocation: only the revoked cluster's successor is new material.
    let (revoke, switch) = (
        TransitionKind::Revoke,
        MaterialOf::Phase(Phase::SwitchSigner),
    );
    assert!(matches!(
        written_material(revoke, switch, None, true),
        Material::ServedBefore
    ));
    assert!(matches!(
        written_material(revoke, switch, None, false),
        Material::Issued { root: None }
    ));
}
