//! Identifiers: wallet addresses, conversation ids, client message ids, gateway ids.
//!
//! Every id that arrives from the network is parsed here, once, into a type whose
//! invariants later code can rely on (length, charset, canonical case).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("address must be 0x followed by 40 hex digits")]
    Address,
    #[error("conversation id {0:?} is not valid: {1}")]
    Conversation(String, &'static str),
    #[error("message id must be 1 to 64 characters of [A-Za-z0-9_.:-]")]
    Message,
}

/// An Ethereum account address. Parsed case-insensitively; printed EIP-55
/// checksummed ([`fmt::Display`]) or lowercase ([`Address::lower`]) for keys and ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// Lowercase `0x…` form, the canonical form inside ids and storage keys.
    pub fn lower(&self) -> String {
        self.lower_buf().as_str().to_owned()
    }

    /// EIP-55 mixed-case checksum form: a hex digit is upper-cased when the
    /// matching nibble of keccak256(lowercase hex) is >= 8.
    pub fn checksummed(&self) -> String {
        self.checksummed_buf().as_str().to_owned()
    }

    /// [`Address::lower`] on the stack: keys and frames are built from it
    /// on every message, without a heap allocation of their own.
    pub fn lower_buf(&self) -> AddressText {
        let mut out = [0u8; 42];
        out[..2].copy_from_slice(b"0x");
        // 40 bytes for 20: the only way encoding can fail is a wrong length.
        let _ = hex::encode_to_slice(self.0, &mut out[2..]);
        AddressText(out)
    }

    /// [`Address::checksummed`] on the stack.
    pub fn checksummed_buf(&self) -> AddressText {
        let mut text = self.lower_buf();
        let hash = Keccak256::digest(&text.0[2..]);
        for (i, c) in text.0[2..].iter_mut().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                c.make_ascii_uppercase();
            }
        }
        text
    }
}

/// An address's 42 characters (`0x` and 40 hex digits), on the stack.
#[derive(Clone, Copy)]
pub struct AddressText([u8; 42]);

impl AddressText {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it (`0x` and hex digits).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for Address {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let hex_part = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(IdError::Address)?;
        if hex_part.len() != 40 {
            return Err(IdError::Address);
        }
        let mut out = [0u8; 20];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| IdError::Address)?;
        Ok(Address(out))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.checksummed_buf().as_str())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.lower_buf().as_str())
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.checksummed_buf().as_str())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of conversation an id names; the kind is visible in the id's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConvKind {
    /// `dm:<addrA>:<addrB>`: two wallets, membership follows from the id.
    Direct,
    /// `g:<32 hex>`: created over REST, members kept by the broker.
    Group,
    /// `ch:<name>`: a broadcast stream created over REST: few publishers,
    /// many subscribers, fanned out through one topic per channel.
    Channel,
}

/// Longest channel name (the part after `ch:`).
pub const MAX_CHANNEL_NAME_LEN: usize = 64;

/// A conversation id. Direct ids are canonical (`dm:` + the two lowercase
/// addresses, sorted), so any wallet can address any other with no set-up and
/// both sides compute the same id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvId(String);

/// Longest conversation id accepted (it is embedded in storage keys).
pub const MAX_CONV_ID_LEN: usize = 96;

impl ConvId {
    /// The direct conversation between two distinct wallets.
    pub fn direct(a: &Address, b: &Address) -> Result<Self, IdError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        if lo == hi {
            return Err(IdError::Conversation(
                format!("dm:{}:{}", lo.lower(), hi.lower()),
                "a direct conversation needs two different wallets",
            ));
        }
        Ok(ConvId(format!("dm:{}:{}", lo.lower(), hi.lower())))
    }

    /// A fresh random group id.
    pub fn new_group() -> Self {
        let bytes: [u8; 16] = rand::random();
        ConvId(format!("g:{}", hex::encode(bytes)))
    }

    /// The channel `ch:<name>`: `name` is 1 to 64 characters of
    /// `[A-Za-z0-9_.:-]`, case-sensitive.
    pub fn channel(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_CHANNEL_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(ConvId(format!("ch:{name}")))
        } else {
            Err(IdError::Conversation(
                format!("ch:{}", name.chars().take(100).collect::<String>()),
                "a channel name is 1 to 64 characters of [A-Za-z0-9_.:-]",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ConvKind {
        if self.0.starts_with("dm:") {
            ConvKind::Direct
        } else if self.0.starts_with("ch:") {
            ConvKind::Channel
        } else {
            ConvKind::Group
        }
    }

    /// A channel's name (`None` for other kinds).
    pub fn channel_name(&self) -> Option<&str> {
        self.0.strip_prefix("ch:")
    }

    /// The two members of a direct conversation, `None` for other kinds.
    pub fn direct_members(&self) -> Option<[Address; 2]> {
        let rest = self.0.strip_prefix("dm:")?;
        let (a, b) = rest.split_once(':')?;
        Some([a.parse().ok()?, b.parse().ok()?])
    }
}

impl FromStr for ConvId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = |why| Err(IdError::Conversation(s.chars().take(100).collect(), why));
        if s.len() > MAX_CONV_ID_LEN {
            return bad("too long");
        }
        if let Some(rest) = s.strip_prefix("dm:") {
            let Some((a, b)) = rest.split_once(':') else {
                return bad("expected dm:<address>:<address>");
            };
            let (Ok(a), Ok(b)) = (a.parse::<Address>(), b.parse::<Address>()) else {
                return bad("expected dm:<address>:<address>");
            };
            // Accept any case and order on input; hand back the canonical id.
            return ConvId::direct(&a, &b);
        }
        if let Some(rest) = s.strip_prefix("g:") {
            if rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(ConvId(format!("g:{}", rest.to_ascii_lowercase())));
            }
            return bad("expected g:<32 hex digits>");
        }
        if let Some(name) = s.strip_prefix("ch:") {
            return ConvId::channel(name);
        }
        bad("unknown conversation kind (expected dm:, g: or ch:)")
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConvId({})", self.0)
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A client-generated message id: the idempotency key of a `send`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MsgId(String);

impl MsgId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A random id, for clients that do not bring their own.
    pub fn random() -> Self {
        let bytes: [u8; 12] = rand::random();
        MsgId(hex::encode(bytes))
    }
}

impl FromStr for MsgId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(MsgId(s.to_owned()))
        } else {
            Err(IdError::Message)
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// JSON Schema of the ids: strings, with the patterns and lengths their
// parsers enforce, so a schema-driven client refuses what the gateway would
// (proto/schema/*.json). Keep each pattern in step with its `FromStr`.

/// An address on the wire: `0x` + 40 hex digits, any case (output is EIP-55).
pub const ADDRESS_PATTERN: &str = "^0[xX][0-9a-fA-F]{40}$";
/// A channel name (the part of `ch:<name>` after the prefix).
pub const CHANNEL_NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
/// A message id on the wire.
pub const MSG_ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
/// A conversation id on the wire: direct, group or channel.
pub const CONV_ID_PATTERN: &str =
    "^(dm:0[xX][0-9a-fA-F]{40}:0[xX][0-9a-fA-F]{40}|g:[0-9a-fA-F]{32}|ch:[A-Za-z0-9_.:-]{1,64})$";

impl schemars::JsonSchema for Address {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Address".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An Ethereum address: 0x and 40 hex digits, accepted in any case, sent EIP-55 checksummed.",
            "type": "string",
            "minLength": 42,
            "maxLength": 42,
            "pattern": ADDRESS_PATTERN,
        })
    }
}

impl schemars::JsonSchema for ConvId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConvId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A conversation id: dm:<address>:<address> (direct; canonical form lowercase and sorted), g:<32 hex> (group) or ch:<name> (channel, 1 to 64 of [A-Za-z0-9_.:-]).",
            "type": "string",
            "minLength": 4,
            "maxLength": MAX_CONV_ID_LEN,
            "pattern": CONV_ID_PATTERN,
        })
    }
}

/// The schema of a channel name (`POST /v1/channels` `name`), which
/// [`ConvId::channel`] parses: a name of its own in the schema, so clients
/// generated from it check names with the gateway's pattern.
pub struct ChannelName;

impl schemars::JsonSchema for ChannelName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ChannelName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A channel name, the part of ch:<name> after the prefix: 1 to 64 of [A-Za-z0-9_.:-], case-sensitive.",
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CHANNEL_NAME_LEN,
            "pattern": CHANNEL_NAME_PATTERN,
        })
    }
}

impl schemars::JsonSchema for MsgId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MsgId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A client-chosen message id, the idempotency key of a send: 1 to 64 of [A-Za-z0-9_.:-].",
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": MSG_ID_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_checksum_vectors() {
        // From the EIP-55 specification.
        for s in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let a: Address = s.to_lowercase().parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn address_rejects_garbage() {
        for s in [
            "",
            "0x",
            "0x123",
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xzzzz",
        ] {
            assert!(s.parse::<Address>().is_err(), "{s}");
        }
    }

    #[test]
    fn direct_ids_are_canonical() {
        let a: Address = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
            .parse()
            .unwrap();
        let b: Address = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
            .parse()
            .unwrap();
        let ab = ConvId::direct(&a, &b).unwrap();
        assert_eq!(ab, ConvId::direct(&b, &a).unwrap());
        assert_eq!(
            ab.as_str(),
            "dm:0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed:0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359"
        );
        let upper = format!("dm:{}:{}", b, a);
        assert_eq!(upper.parse::<ConvId>().unwrap(), ab);
        assert_eq!(ab.direct_members().unwrap(), [a, b]);
        assert!(ConvId::direct(&a, &a).is_err());
    }

    #[test]
    fn conv_ids_reject_unknown_kinds() {
        for s in ["", "x:1", "g:123", "dm:0x1:0x2", &"g:".repeat(60)] {
            assert!(s.parse::<ConvId>().is_err(), "{s}");
        }
        let g = ConvId::new_group();
        assert_eq!(g.as_str().parse::<ConvId>().unwrap(), g);
        assert_eq!(g.kind(), ConvKind::Group);
    }

    #[test]
    fn the_channel_alternative_of_conv_ids_is_the_channel_name_pattern() {
        let body = CHANNEL_NAME_PATTERN
            .strip_prefix('^')
            .and_then(|p| p.strip_suffix('$'))
            .unwrap();
        assert!(
            CONV_ID_PATTERN.contains(&format!("|ch:{body})$")),
            "{CONV_ID_PATTERN} vs {CHANNEL_NAME_PATTERN}"
        );
        assert!(body.ends_with(&format!("{{1,{MAX_CHANNEL_NAME_LEN}}}")));
    }

    #[test]
    fn channel_ids() {
        let c: ConvId = "ch:live.match-42:comments".parse().unwrap();
        assert_eq!(c.kind(), ConvKind::Channel);
        assert_eq!(c.channel_name(), Some("live.match-42:comments"));
        assert_eq!(ConvId::channel("Live").unwrap().as_str(), "ch:Live");
        for bad in [
            "ch:",
            "ch:has space",
            "ch:ü",
            &format!("ch:{}", "x".repeat(65)),
        ] {
            assert!(bad.parse::<ConvId>().is_err(), "{bad}");
        }
        assert!(format!("ch:{}", "x".repeat(64)).parse::<ConvId>().is_ok());
    }

    #[test]
    fn msg_ids() {
        assert!("abc-123_x.y:z".parse::<MsgId>().is_ok());
        assert!("".parse::<MsgId>().is_err());
        assert!("has space".parse::<MsgId>().is_err());
        assert!("x".repeat(65).parse::<MsgId>().is_err());
    }
}
