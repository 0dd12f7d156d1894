//! Sign-in messages: any text, signed by a fixed wallet (so the fuzzer can
//! reach the checks behind the signature), through the gateway's verifier.
//! Never a panic; an accepted message is exactly the EIP-4361 layout of
//! what was parsed (no line the server ignores), names this server in its
//! domain and URI, and was issued within the allowed window. A foreign
//! signature is always refused.
#![no_main]

use std::str::FromStr;
use std::sync::LazyLock;

use k256::ecdsa::SigningKey;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::auth::eip191::sign_personal;
use switchboard_proto::auth::siwe::{DEFAULT_MAX_AGE, MAX_CLOCK_SKEW, SiweVerifier, uri_matches};
use time::OffsetDateTime;

/// The wallet whose address the seeds name (`[1; 32]` as its key).
static KEY: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::from_slice(&[1u8; 32]).expect("a valid scalar"));
static OTHER: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::from_slice(&[2u8; 32]).expect("a valid scalar"));

const DOMAIN: &str = "chat.example.com";

fn verifier() -> SiweVerifier {
    SiweVerifier {
        domain: DOMAIN.into(),
        chain_ids: vec![1, 137],
        max_age: DEFAULT_MAX_AGE,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // 2026-01-15T08:00:00Z: the seeds' Issued At are around it.
    let now = OffsetDateTime::from_unix_timestamp(1_768_464_000).expect("a valid time");
    let v = verifier();
    // Garbage signatures: typed errors only.
    for sig in [
        "",
        "0x",
        "0xzz",
        &"ab".repeat(65),
        &format!("0x{}", "00".repeat(65)),
    ] {
        assert!(v.verify(text, sig, now).is_err());
    }
    assert!(
        v.verify(text, &sign_personal(&OTHER, text.as_bytes()), now)
            .is_err()
    );
    let Ok(ok) = v.verify(text, &sign_personal(&KEY, text.as_bytes()), now) else {
        return;
    };
    let m = siwe::Message::from_str(text).expect("an accepted message parses");
    assert_eq!(m.to_string(), text, "accepted a message outside the layout");
    assert_eq!(m.domain.as_str(), DOMAIN);
    assert!(
        uri_matches(m.uri.as_str(), DOMAIN),
        "accepted URI {}",
        m.uri
    );
    let issued: &OffsetDateTime = m.issued_at.as_ref();
    assert!(*issued <= now + MAX_CLOCK_SKEW, "accepted a future message");
    assert!(*issued >= now - DEFAULT_MAX_AGE, "accepted a stale message");
    assert_eq!(ok.nonce, m.nonce);
});
