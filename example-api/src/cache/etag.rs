//! Strong ETags and the RFC 9110 conditional request rules: `If-None-Match` uses weak
//! comparison, `If-Match` strong comparison.

use sha2::{Digest, Sha256};

/// A strong ETag over the exact bytes of a representation.
pub fn etag(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&d[..12]))
}

fn tags(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// `If-None-Match`: true if any listed tag matches `current` by weak comparison (or `*`).
pub fn none_match_hits(header: &str, current: &str) -> bool {
    let cur = current.trim_start_matches("W/");
    tags(header).any(|t| t == "*" || t.trim_start_matches("W/") == cur)
}

/// `If-Match`: true if any listed tag matches `current` by strong comparison (or `*`).
/// Weak tags never match strongly.
pub fn match_hits(header: &str, current: &str) -> bool {
    tags(header).any(|t| t == "*" || (!t.starts_with("W/") && t == current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_strong_comparison() {
        let e = etag(b"abc");
        assert!(none_match_hits(&format!("W/{e}"), &e));
        assert!(none_match_hits(&format!("\"x\", {e}"), &e));
        assert!(!none_match_hits("\"x\"", &e));
        assert!(match_hits(&e, &e));
        assert!(!match_hits(&format!("W/{e}"), &e));
        assert!(match_hits("*", &e));
        assert_ne!(etag(b"abc"), etag(b"abd"));
    }
}
