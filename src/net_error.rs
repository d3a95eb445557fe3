//! Why a connection failed, in the words an operator acts on. HTTP clients report a failed
//! connection as `client error (Connect)` and keep the reason deep in their chain of causes:
//! nothing listening, a name that does not resolve, a certificate not trusted (and why), a
//! timeout. [`why`] walks that chain and names the first it recognises.

use std::error::Error;
use std::io;

/// The reason a connection failed, if `e`'s chain of causes says it; `None` for anything else
/// (an HTTP status, a body that does not parse).
pub fn why(e: &(dyn Error + 'static)) -> Option<String> {
    let mut timed_out = false;
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if let Some(tls) = tls_cause(cause) {
            return Some(tls);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return Some("connection refused: nothing listens at that address".into());
                }
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    return Some("the connection was reset by the other end".into());
                }
                io::ErrorKind::TimedOut => timed_out = true,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    return Some(format!("no route to the server: {io}"));
                }
                _ => {}
            }
        }
        let text = cause.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            return Some(format!(
                "the server's name does not resolve (DNS): {}",
                innermost(cause)
            ));
        }
        if text.contains("timed out") || text.contains("deadline has elapsed") {
            timed_out = true;
        }
        next = cause.source();
    }
    timed_out.then(|| "timed out: the server did not answer in time".into())
}

/// A TLS failure, said with its reason: a rustls error, directly or inside an `io::Error`.
fn tls_cause(cause: &(dyn Error + 'static)) -> Option<String> {
    // An `io::Error` wraps its cause without naming it as its source: look inside, however
    // many are nested.
    let mut inner: &(dyn Error + 'static) = cause;
    while let Some(io) = inner.downcast_ref::<io::Error>() {
        match io.get_ref() {
            Some(wrapped) => inner = wrapped,
            None => break,
        }
    }
    let rustls = inner.downcast_ref::<rustls::Error>()?;
    use rustls::CertificateError as C;
    let reason = match rustls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is not signed by a CA this client trusts (unknown issuer)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for the name it was reached by".to_string()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "the server's certificate is not signed by the CA this client trusts (one of the \
             same name, but another key)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        rustls::Error::InvalidCertificate(other) => format!("the server's certificate: {other:?}"),
        other => other.to_string(),
    };
    Some(format!("TLS handshake failed: {reason}"))
}

/// The last cause in `e`'s chain: the most specific message.
fn innermost(e: &(dyn Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapper(#[source] Box<dyn Error + Send + Sync + 'static>);

    fn wrapped(inner: impl Error + Send + Sync + 'static) -> Wrapper {
        Wrapper(Box::new(inner))
    }

    #[test]
    fn the_reason_is_found_however_deep() {
        let refused = wrapped(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(why(&refused).unwrap().contains("connection refused"));
        let tls = wrapped(io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert!(
            why(&tls)
                .unwrap()
                .contains("TLS handshake failed: the server's certificate is not signed")
        );
        let timeout = wrapped(io::Error::from(io::ErrorKind::TimedOut));
        assert!(why(&timeout).unwrap().contains("timed out"));
        let other = wrapped(io::Error::other("a body that does not parse"));
        assert_eq!(why(&other), None);
    }
}
