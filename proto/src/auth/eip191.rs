//! EIP-191 `personal_sign`: hashing, signing and address recovery on secp256k1.

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};

use super::AuthError;
use crate::ids::Address;

/// keccak256("\x19Ethereum Signed Message:\n" + decimal length + message), the
/// digest `personal_sign` signs (legacy Keccak, not SHA3-256).
pub fn personal_message_hash(message: &[u8]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(b"\x19Ethereum Signed Message:\n");
    h.update(message.len().to_string().as_bytes());
    h.update(message);
    h.finalize().into()
}

/// The address of a public key: the last 20 bytes of keccak256 of the
/// uncompressed point without its 0x04 prefix.
pub fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_sec1_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    Address(out)
}

/// Parse `0x` + 130 hex digits.
pub fn parse_signature_hex(s: &str) -> Result<Vec<u8>, AuthError> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    if h.len() != 130 {
        return Err(AuthError::BadSignature(
            "expected 65 bytes (0x + 130 hex digits)",
        ));
    }
    hex::decode(h).map_err(|_| AuthError::BadSignature("not hex"))
}

/// Recover the signer of `message` from a 65-byte `r‖s‖v` signature
/// (`v` = 27/28 or 0/1). The recovered key must also verify the signature,
/// which rejects the malleable high-S twin of a valid signature.
pub fn recover_address(message: &[u8], signature: &[u8]) -> Result<Address, AuthError> {
    if signature.len() != 65 {
        return Err(AuthError::BadSignature("expected 65 bytes"));
    }
    let v = match signature[64] {
        27 | 28 => signature[64] - 27,
        0 | 1 => signature[64],
        _ => return Err(AuthError::BadSignature("v must be 27, 28, 0 or 1")),
    };
    let sig = Signature::from_slice(&signature[..64])
        .map_err(|_| AuthError::BadSignature("r or s out of range"))?;
    let rid = RecoveryId::from_byte(v).ok_or(AuthError::BadSignature("bad recovery id"))?;
    let prehash = personal_message_hash(message);
    let key = VerifyingKey::recover_from_prehash(&prehash, &sig, rid)
        .map_err(|_| AuthError::BadSignature("no key recovers from this signature"))?;
    key.verify_prehash(&prehash, &sig)
        .map_err(|_| AuthError::BadSignature("signature does not verify (high S?)"))?;
    Ok(address_of(&key))
}

/// Sign like a wallet's `personal_sign`: `0x` + r‖s‖v hex with v = 27/28.
/// Used by the SDK, the CLI and tests.
pub fn sign_personal(key: &SigningKey, message: &[u8]) -> String {
    let (sig, rid) = key.sign_prehash_recoverable(&personal_message_hash(message));
    let mut out = sig.to_bytes().to_vec();
    out.push(27 + rid.to_byte());
    format!("0x{}", hex::encode(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    const SIG: &str = "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c";
    const ADDR: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";

    fn key() -> SigningKey {
        SigningKey::from_slice(&hex::decode(KEY).unwrap()).unwrap()
    }

    #[test]
    fn web3js_personal_sign_vector() {
        assert_eq!(address_of(key().verifying_key()).to_string(), ADDR);
        assert_eq!(sign_personal(&key(), b"Some data"), SIG);
        let sig = parse_signature_hex(SIG).unwrap();
        assert_eq!(
            recover_address(b"Some data", &sig).unwrap().to_string(),
            ADDR
        );
        // v as 0/1 recovers the same address.
        let mut v01 = sig.clone();
        v01[64] -= 27;
        assert_eq!(
            recover_address(b"Some data", &v01).unwrap().to_string(),
            ADDR
        );
    }

    #[test]
    fn tampered_message_recovers_someone_else() {
        let sig = parse_signature_hex(SIG).unwrap();
        let who = recover_address(b"Some datA", &sig);
        assert!(who.map_or(true, |a| a.to_string() != ADDR));
    }

    #[test]
    fn high_s_twin_is_rejected() {
        let sig = parse_signature_hex(SIG).unwrap();
        let parsed = Signature::from_slice(&sig[..64]).unwrap();
        let s = parsed.s();
        let high = Signature::from_scalars(parsed.r().to_bytes(), (-*s).to_bytes()).unwrap();
        let mut twin = high.to_bytes().to_vec();
        twin.push(if sig[64] == 27 { 28 } else { 27 });
        assert_eq!(
            recover_address(b"Some data", &twin),
            Err(AuthError::BadSignature(
                "signature does not verify (high S?)"
            ))
        );
    }

    #[test]
    fn malformed_signatures() {
        assert!(parse_signature_hex("0x1234").is_err());
        assert!(parse_signature_hex(&format!("0x{}", "zz".repeat(65))).is_err());
        assert!(recover_address(b"x", &[0u8; 64]).is_err());
        let mut bad_v = parse_signature_hex(SIG).unwrap();
        bad_v[64] = 35;
        assert!(recover_address(b"Some data", &bad_v).is_err());
        assert!(recover_address(b"Some data", &[0u8; 65]).is_err());
    }
}
