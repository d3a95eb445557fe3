//! Files holding Vault credentials: a token, an AppRole secret ID, a service account's JWT.

use zeroize::Zeroize;

use super::VaultError;

/// Reads the credential in `path`, trimmed, from a regular file of at most 64 KiB (a device,
/// a pipe or a folder is refused by name); the bytes read are wiped.
pub(super) fn read_secret_file(path: &std::path::Path) -> Result<String, VaultError> {
    let mut bytes = crate::fsutil::read_optional_up_to(path, MAX_SECRET_FILE)
        .map_err(|e| VaultError::Config(e.to_string()))?
        .ok_or_else(|| {
            VaultError::Config(format!("cannot read {}: no such file", path.display()))
        })?;
    let trimmed = std::str::from_utf8(&bytes).map(|s| s.trim().to_string());
    bytes.zeroize();
    trimmed.map_err(|_| VaultError::Config(format!("{} is not UTF-8 text", path.display())))
}

/// The most cacertd reads of a file holding a Vault credential (a token, a secret ID, a
/// service account's JWT: a few KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_are_read_bounded_and_regular_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s.abc\n").unwrap();
        assert_eq!(read_secret_file(&token).unwrap(), "s.abc");
        let never_ends = std::path::PathBuf::from("/dev/zero");
        let e = read_secret_file(&never_ends).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let long = dir.path().join("long");
        std::fs::write(&long, vec![b'a'; 65 * 1024]).unwrap();
        let e = read_secret_file(&long).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
        let e = read_secret_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("no such file"), "{e}");
    }
}
