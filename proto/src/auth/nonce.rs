//! Sign-in nonces.

use rand::distr::{Alphanumeric, SampleString};

/// 24 random alphanumerics (~143 bits). EIP-4361 requires at least 8; the
/// protocol promises at least 16.
pub fn generate_nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_are_long_alphanumeric_and_distinct() {
        let a = super::generate_nonce();
        let b = super::generate_nonce();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
