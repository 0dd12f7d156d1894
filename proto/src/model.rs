//! The conversation model as clients see it: a conversation's description
//! (direct, group or channel, with who may read and post), members and their
//! roles, and the lines of a user's conversation list. The engines store these;
//! the REST API returns them as they are.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{Address, ConvId, ConvKind};

/// A group (or the synthesized view of a direct conversation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Conversation {
    pub id: ConvId,
    pub kind: ConvKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub members: Vec<Address>,
    /// The creator of a group or channel; `None` for direct conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Address>,
    /// Unix ms.
    pub created_at: u64,
    /// Channels: who may post, the creator included (it always may).
    /// Empty for other kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publishers: Vec<Address>,
    /// Channels: who may read. `None` for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// Who may read a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Any signed-in user.
    Public,
    /// Its members, publishers and creator.
    Members,
}

impl Conversation {
    /// Whether `user` may read it: a member; for a channel also its creator
    /// and publishers, and anyone when it is public.
    pub fn can_read(&self, user: &Address) -> bool {
        match self.kind {
            ConvKind::Channel => {
                self.visibility == Some(Visibility::Public)
                    || self.can_publish(user)
                    || self.members.contains(user)
            }
            _ => self.members.contains(user),
        }
    }

    /// Whether `user` may post to it: a member; for a channel its creator
    /// and publishers only.
    pub fn can_publish(&self, user: &Address) -> bool {
        match self.kind {
            ConvKind::Channel => {
                self.created_by.as_ref() == Some(user) || self.publishers.contains(user)
            }
            _ => self.members.contains(user),
        }
    }
}

/// A member's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the group or was made admin: manages members.
    Admin,
    Member,
}

/// One member row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub user: Address,
    pub role: Role,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// One line of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationSummary {
    pub id: ConvId,
    pub kind: ConvKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Highest seq stored.
    pub last_seq: u64,
    /// The caller's read watermark.
    pub read_seq: u64,
    /// Messages from others above `read_seq`, counted up to [`UNREAD_CAP`]
    /// (show "999+" beyond).
    pub unread: u64,
    /// Unix ms of the newest message, or of creation when there is none;
    /// the list is ordered by it, newest first.
    pub active_at: u64,
}

/// Unread counts stop here: counting is a range scan per conversation.
pub const UNREAD_CAP: u64 = 999;

/// Position in a conversation list: strictly older than this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub active_at: u64,
    pub id: String,
}

impl ListCursor {
    /// Opaque text form for APIs: `<active_at>.<id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.active_at, self.id)
    }
    pub fn decode(s: &str) -> Option<Self> {
        let (at, id) = s.split_once('.')?;
        Some(ListCursor {
            active_at: at.parse().ok()?,
            id: id.parse::<ConvId>().ok()?.to_string(),
        })
    }
}
