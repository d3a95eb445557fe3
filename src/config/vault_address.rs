//! The Vault address, checked as a URL.

/// A Vault address cacertd will talk to: a URL (parsed, not compared as text), https — or
/// plain http to a loopback host only, since it would carry the token and a vault-kv root key
/// in clear text — and no credentials inside it.
pub fn check_vault_address(address: &str) -> Result<(), String> {
    let url = url::Url::parse(address)
        .map_err(|e| format!("{address:?} is not a URL like https://vault.example:8200: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{address:?} carries credentials before the host; give the address alone"
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => return Err(format!("{address:?} names no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{address}: plain HTTP would send the Vault token (and a vault-kv root key) in \
             cleartext; use https (plain HTTP is allowed on loopback only)"
        )),
        other => Err(format!("{address:?}: {other}: is not http or https")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_vault_address as check_address;

    #[test]
    fn an_address_is_parsed_not_compared_as_text() {
        for ok in [
            "https://vault.example:8200",
            "HTTPS://vault.example",
            "http://127.0.0.1:8200",
            "http://127.0.0.2:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("HTTP://10.0.0.5:8200", "plain HTTP"),
            ("http://localhost:x@10.0.0.5:8200", "credentials"),
            ("http://localhost.evil.example:8200", "plain HTTP"),
            ("not a url", "is not a URL"),
            ("ftp://vault.example", "is not http or https"),
        ] {
            let e = check_address(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
