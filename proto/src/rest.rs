//! Bodies of the REST API (`/v1/...`), as the gateway answers them and
//! clients read them. Requests that carry addresses take them as text so a
//! server can name the offending entry (`members[2]: ...`) instead of
//! refusing the whole body.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frames::PresenceStatus;
use crate::ids::{Address, ConvId, ConvKind, MsgId};
use crate::model::{ConversationSummary, Visibility};

/// `GET /v1/auth/nonce`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NonceResponse {
    pub nonce: String,
}

/// `POST /v1/auth/verify`: an EIP-4361 message and its `personal_sign`
/// signature.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub message: String,
    pub signature: String,
}

/// The answer to a sign-in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VerifyResponse {
    pub token: String,
    pub address: Address,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/conversations`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub kind: ConvKind,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// `POST /v1/channels`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    #[schemars(with = "crate::ids::ChannelName")]
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
    #[serde(default)]
    pub publishers: Vec<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

/// `GET /v1/conversations`: one page, newest activity first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListPage {
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Delivery status of the caller's own messages, from the other members'
/// watermarks: `read` when every other member has read it, `delivered` when
/// it reached a device of every other member, else `sent`.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
}

/// One message of `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct HistoryItem {
    pub conv: ConvId,
    pub seq: u64,
    pub id: MsgId,
    pub from: Address,
    pub body: Box<RawValue>,
    pub ts: u64,
    /// Only on the caller's own messages, and never in channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeliveryStatus>,
}

/// `GET /v1/conversations/{id}/messages`: ascending by seq.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct HistoryPage {
    pub messages: Vec<HistoryItem>,
    /// The conversation's last seq.
    pub last_seq: u64,
}

/// `POST /v1/conversations/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    pub members: Vec<String>,
}

/// The answer to [`AddMembers`]: who was not a member before.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AddedMembers {
    pub added: Vec<Address>,
}

/// One user of `GET /v1/presence`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PresenceEntry {
    pub status: PresenceStatus,
    /// Unix ms; absent when never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// `GET /v1/presence?users=…`: checksummed address → entry.
pub type PresenceMap = HashMap<String, PresenceEntry>;

/// Every error answer: `{"error": {"code", "message"}}`, with an HTTP status
/// that matches the code.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
