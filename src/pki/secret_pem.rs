//! PEM for private keys, in memory that is wiped: the `pem` crate builds its base64 in
//! ordinary `String`s and `Vec`s that would leave copies of the key in freed memory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// One PEM block whose contents are secret.
pub(crate) struct SecretBlock {
    pub tag: String,
    pub der: Zeroizing<Vec<u8>>,
}

/// Splits PEM text into blocks. Errors describe the structure, never the contents.
pub(crate) fn parse_blocks(text: &[u8]) -> Result<Vec<SecretBlock>, String> {
    scan(text, true).map(|(blocks, _)| blocks)
}

/// Splits PEM text the way Go's `CertPool.AppendCertsFromPEM` reads it: a block it cannot use
/// (headers, bad base64, no END line) is skipped, with a note saying why, and the rest is kept.
pub(crate) fn parse_blocks_lenient(text: &[u8]) -> (Vec<SecretBlock>, Vec<String>) {
    scan(text, false).unwrap_or_else(|e| (Vec::new(), vec![e]))
}

/// The most PEM text read at once (a `cacerts` file, a trust bundle, a ConfigMap's bundle):
/// a trust bundle of a thousand roots is well under it.
pub const MAX_PEM_TEXT: usize = 1 << 20;

/// Scans `text` once, line by line: the work and the memory grow with its length, whatever it
/// holds (a buffer per block is sized by the text up to the next armour line, not by the whole
/// input).
fn scan(text: &[u8], strict: bool) -> Result<(Vec<SecretBlock>, Vec<String>), String> {
    if text.len() > MAX_PEM_TEXT {
        return Err(format!(
            "{} bytes of PEM, more than the {} KiB cacertd reads at once",
            text.len(),
            MAX_PEM_TEXT / 1024
        ));
    }
    let text = std::str::from_utf8(text).map_err(|_| "not PEM text (invalid UTF-8)".to_string())?;
    let mut blocks = Vec::new();
    let mut skipped = Vec::new();
    let fail = |msg: String, skipped: &mut Vec<String>| -> Result<(), String> {
        if strict {
            Err(msg)
        } else {
            skipped.push(msg);
            Ok(())
        }
    };
    // (tag, base64 body, whether the block had headers)
    let mut current: Option<(String, Zeroizing<String>, bool)> = None;
    let mut offset = 0;
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        offset += raw.len();
        let line = raw.trim();
        if let Some(tag) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some((open, _, _)) = current.take() {
                fail(
                    format!("line {}: BEGIN {tag} inside an open {open} block", n + 1),
                    &mut skipped,
                )?;
            }
            current = Some((tag.to_string(), body_buffer(&text[offset..]), false));
            continue;
        }
        let Some((tag, body, headers)) = &mut current else {
            continue;
        };
        if let Some(end) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            let (tag, body, headers) = (std::mem::take(tag), std::mem::take(body), *headers);
            current = None;
            match closed_block((tag, end), &body, headers, n + 1) {
                Ok(block) => blocks.push(block),
                Err(msg) => fail(msg, &mut skipped)?,
            }
        } else if line.contains(':') {
            *headers = true;
        } else {
            body.push_str(line);
        }
    }
    if let Some((tag, _, _)) = current {
        fail(
            format!("the {tag} block has no END line (truncated file?)"),
            &mut skipped,
        )?;
    }
    Ok((blocks, skipped))
}

/// The block `tag` whose END line (number `line`, naming `end`) closed it: its base64 `body`
/// decoded, unless the END names another block, it had headers, or the body is not base64.
fn closed_block(
    (tag, end): (String, &str),
    body: &str,
    headers: bool,
    line: usize,
) -> Result<SecretBlock, String> {
    if end != tag {
        return Err(format!("line {line}: END {end} closes BEGIN {tag}"));
    }
    if headers {
        // RFC 1421 headers: only legacy encrypted keys carry them.
        return Err(format!(
            "the {tag} block has headers (a legacy encrypted key?); decrypt it first (openssl \
             pkey -in F -out F.plain)"
        ));
    }
    let mut der = Zeroizing::new(Vec::with_capacity(body.len() / 4 * 3 + 3));
    if STANDARD.decode_vec(body.as_bytes(), &mut der).is_err() {
        return Err(format!(
            "the {tag} block is not valid base64 (truncated or corrupt)"
        ));
    }
    Ok(SecretBlock { tag, der })
}

/// The buffer for the base64 body of a block whose BEGIN line `rest` follows. The body ends at
/// the next armour line at the latest: sized so, the buffer never grows (which would leave
/// copies of a key in freed memory), and the searches of all blocks together cover the text
/// once.
fn body_buffer(rest: &str) -> Zeroizing<String> {
    let body_len = rest.find("-----").unwrap_or(rest.len());
    Zeroizing::new(String::with_capacity(body_len))
}

/// Encodes one block into a buffer sized exactly, so it never reallocates and leaves copies.
pub(crate) fn encode_block(tag: &str, der: &[u8]) -> Zeroizing<String> {
    let b64_len = der.len().div_ceil(3) * 4;
    let mut b64 = Zeroizing::new(String::with_capacity(b64_len));
    STANDARD.encode_string(der, &mut b64);
    let lines = b64_len.div_ceil(64);
    let cap = "-----BEGIN -----\n".len() * 2 + tag.len() * 2 + b64_len + lines;
    let mut out = Zeroizing::new(String::with_capacity(cap));
    out.push_str("-----BEGIN ");
    out.push_str(tag);
    out.push_str("-----\n");
    let mut rest: &str = &b64;
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(tag);
    out.push_str("-----\n");
    debug_assert!(out.len() <= cap);
    out
}

/// Base64 of secret bytes, in a buffer sized exactly.
pub(crate) fn base64_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// Test fixtures: PEM armour lines, built rather than written out so that no source file
/// holds anything shaped like a key.
#[cfg(test)]
pub(crate) fn armour(tag: &str, body: &str, end: Option<&str>) -> String {
    let mut out = format!("-----BEGIN {tag}-----\n{body}\n");
    if let Some(end) = end {
        out.push_str(&format!("-----END {end}-----\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_the_pem_crate() {
        for len in [0usize, 1, 47, 48, 49, 121, 1217] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let ours = encode_block("PRIVATE KEY", &der);
            let theirs = pem::encode_config(
                &pem::Pem::new("PRIVATE KEY", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(ours.as_str(), theirs, "len {len}");
            let back = parse_blocks(ours.as_bytes()).unwrap();
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].tag, "PRIVATE KEY");
            assert_eq!(back[0].der.as_slice(), der.as_slice());
        }
    }

    #[test]
    fn structural_errors_do_not_quote_contents() {
        let pk = "PRIVATE KEY";
        let e = parse_blocks(armour(pk, "U0VDUkVU", None).as_bytes())
            .err()
            .unwrap();
        assert!(e.contains("no END line") && !e.contains("U0VDUkVU"), "{e}");
        let e = parse_blocks(armour(pk, "U0VDUkVU!!", Some(pk)).as_bytes())
            .err()
            .unwrap();
        assert!(e.contains("base64") && !e.contains("U0VDUkVU"), "{e}");
        let rsa = "RSA PRIVATE KEY";
        let e = parse_blocks(armour(rsa, "Proc-Type: 4,ENCRYPTED\nAAAA", Some(rsa)).as_bytes())
            .err()
            .unwrap();
        assert!(e.contains("encrypted"), "{e}");
        let e = parse_blocks(b"-----BEGIN A-----\nAAAA\n-----END B-----\n")
            .err()
            .unwrap();
        assert!(e.contains("END B closes BEGIN A"), "{e}");
    }

    /// Many BEGIN lines and nothing else: once the whole input was allocated per BEGIN line
    /// (4 MiB of them took seconds); now the memory asked for is bounded by the input. And
    /// anything over the cap is refused without being scanned.
    #[test]
    fn scanning_is_linear_and_capped() {
        let begin = "-----BEGIN CERTIFICATE-----\n";
        let many = begin.repeat(MAX_PEM_TEXT / begin.len());
        let (blocks, notes) = parse_blocks_lenient(many.as_bytes());
        assert!(blocks.is_empty());
        assert_eq!(notes.len(), MAX_PEM_TEXT / begin.len());
        let too_big = format!("{many}{begin}{begin}");
        let e = parse_blocks(too_big.as_bytes()).err().unwrap();
        assert!(e.contains("more than the 1024 KiB"), "{e}");
        // A block's buffer is sized by its own body, not by what follows it.
        let rest = format!("AAAA\nBBBB\n-----END X-----\n{many}");
        let buffer = body_buffer(&rest);
        assert!(
            (10..64).contains(&buffer.capacity()),
            "{}",
            buffer.capacity()
        );
        // Bodies are read whole, whatever their line breaks.
        let text = format!("{}\n", armour("X", "AQ\nID", Some("X")));
        assert_eq!(
            parse_blocks(text.as_bytes()).unwrap()[0].der.as_slice(),
            &[1, 2, 3]
        );
    }

    #[test]
    fn crlf_and_surrounding_text_are_tolerated() {
        let ec = "EC PRIVATE KEY";
        let text =
            format!("comment\n{}trailer", armour(ec, "AQID", Some(ec))).replace('\n', "\r\n");
        let b = parse_blocks(text.as_bytes()).unwrap();
        assert_eq!(b[0].der.as_slice(), &[1, 2, 3]);
    }
}
