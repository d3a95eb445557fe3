//! URLs cacertd is given: the Vault address, checked as a URL, and any server URL as messages
//! show it.

/// A Vault address cacertd will talk to: a URL (parsed, not compared as text), https — or
/// plain http to a loopback host only, since it would carry the token and a vault-kv root key
/// in clear text — and no credentials inside it.
pub fn check_vault_address(address: &str) -> Result<(), String> {
    let shown = url_for_messages(address);
    let url = url::Url::parse(address)
        .map_err(|e| format!("{shown:?} is not a URL like https://vault.example:8200: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?} carries credentials before the host; give the address alone"
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => return Err(format!("{shown:?} names no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{shown}: plain HTTP would send the Vault token (and a vault-kv root key) in \
             cleartext; use https (plain HTTP is allowed on loopback only)"
        )),
        other => Err(format!("{shown:?}: {other}: is not http or https")),
    }
}

/// A URL as errors and logs show it: without credentials written into it (`user:pass@`).
pub fn url_for_messages(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) if url.contains('@') => "(a URL that does not parse)".into(),
        _ => url.to_string(),
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
            assert!(!e.contains("localhost:x@"), "{bad}: credentials shown: {e}");
        }
    }
}
