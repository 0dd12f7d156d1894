//! Session tokens (`Authorization: Bearer`, the `auth` frame,
//! `access_token=`): any text is refused with a typed error or names the
//! address it was issued to, and a token issued for any address and
//! lifetime verifies back to that address until it expires.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use time::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    let signer = TokenSigner::new(b"fuzz-secret-fuzz-secret-fuzz-sec");
    let now = OffsetDateTime::from_unix_timestamp(1_768_464_000).expect("a valid time");
    if let Ok(text) = std::str::from_utf8(data) {
        // Only tokens this signer issued can verify; none is in the input space
        // short of forging HMAC-SHA256, so any Ok here is a forgery.
        if let Ok(addr) = signer.verify(text, now) {
            panic!("accepted a token it never issued: {text:?} for {addr}");
        }
    }
    // Structure: 20 address bytes, 4 bytes of lifetime (seconds), then the
    // seconds to move the clock before verifying.
    if data.len() >= 28 {
        let mut a = [0u8; 20];
        a.copy_from_slice(&data[..20]);
        let ttl = u32::from_le_bytes([data[20], data[21], data[22], data[23]]);
        let later = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
        let address = Address(a);
        let (token, _) = signer.issue(&address, Duration::from_secs(ttl.into()), now);
        let at = now + Duration::from_secs(later.into());
        match signer.verify(&token, at) {
            Ok(got) => {
                assert_eq!(got, address, "{token}");
                assert!(later < ttl, "verified after expiry: {token}");
            }
            Err(e) => assert!(later >= ttl, "{token} refused within its lifetime: {e}"),
        }
        // Any one-byte change is refused.
        let mut bytes = token.into_bytes();
        let i = usize::from(data[0]) % bytes.len();
        bytes[i] ^= data[1] | 1;
        if let Ok(t) = String::from_utf8(bytes) {
            assert!(
                signer.verify(&t, now).is_err(),
                "a modified token verified: {t}"
            );
        }
    }
});
