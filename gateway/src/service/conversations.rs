//! Direct conversations and groups: creating and reading them, the caller's
//! list, history pages with delivery statuses, and membership. With a store
//! (PostgreSQL) it is the source of truth for groups and the listing; without
//! one (the embedded default) the broker answers the same requests from what
//! it holds.

use std::collections::HashSet;

use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::model::{
    Conversation, ConversationSummary, ListCursor, Member, Role, UNREAD_CAP,
};
use switchboard_proto::rest::{DeliveryStatus, HistoryItem, HistoryPage};
use switchboard_proto::time::now_ms;

use super::{ChatError, ChatService, Result};

/// Longest group or channel title, in characters.
pub const MAX_TITLE: usize = 200;

/// One page of a user's conversations, and the cursor of the next.
pub type ListPage = (Vec<ConversationSummary>, Option<ListCursor>);

/// The members of a conversation as its reader may see them: roles and
/// watermarks; empty for a channel (channels track no readers).
pub type MemberView = Vec<Member>;

pub(super) fn check_title(title: Option<&str>) -> Result<()> {
    match title {
        Some(t) if t.chars().count() > MAX_TITLE => Err(ChatError::invalid(format!(
            "title is longer than {MAX_TITLE} characters"
        ))),
        _ => Ok(()),
    }
}

impl ChatService {
    /// Create a group of `creator` and `members` (the creator is admin).
    pub async fn create_group(
        &self,
        creator: Address,
        members: Vec<Address>,
        title: Option<String>,
    ) -> Result<Conversation> {
        // Sorted and deduplicated in O(n log n): a hostile list must not
        // cost a quadratic scan.
        let mut all = members;
        all.push(creator);
        all.sort();
        all.dedup();
        if all.len() > self.cfg.max_group_members {
            return Err(ChatError::invalid(format!(
                "a group has at most {} members (got {})",
                self.cfg.max_group_members,
                all.len()
            )));
        }
        check_title(title.as_deref())?;
        let conv = Conversation {
            id: ConvId::new_group(),
            kind: ConvKind::Group,
            title: title.filter(|t| !t.is_empty()),
            members: all,
            created_by: Some(creator),
            created_at: now_ms(),
            publishers: Vec::new(),
            visibility: None,
        };
        // PostgreSQL first (the source of truth), then the broker's copy
        // that the send script checks.
        if let Some(store) = &self.store
            && !store.create_group(&conv).await?
        {
            return Err(ChatError::AlreadyExists);
        }
        self.broker.create_group(&conv).await?;
        Ok(conv)
    }

    /// `id` as `user` may see it; [`ChatError::NotFound`] when it does not
    /// exist or `user` may not read it.
    pub async fn conversation(&self, id: &ConvId, user: &Address) -> Result<Conversation> {
        let found = match (&self.store, id.kind()) {
            (Some(store), ConvKind::Group) => match store.members(id).await? {
                Some(members) => self.broker.conversation(id).await?.map(|mut c| {
                    c.members = members.into_iter().map(|m| m.user).collect();
                    c
                }),
                None => None,
            },
            (_, ConvKind::Channel) => self.channel(id).await?,
            _ => self.broker.conversation(id).await?,
        };
        match found {
            Some(c) if c.can_read(user) => Ok(c),
            _ => Err(ChatError::NotFound),
        }
    }

    /// Members of `conv` with roles and watermarks, or
    /// [`ChatError::NotFound`] when it does not exist or `user` is not in it.
    pub async fn member_view(&self, conv: &ConvId, user: &Address) -> Result<MemberView> {
        if conv.kind() == ConvKind::Channel {
            // Channels track no per-reader state: whoever may read gets the
            // history, without delivery statuses.
            return match self.channel(conv).await? {
                Some(c) if c.can_read(user) => Ok(Vec::new()),
                _ => Err(ChatError::NotFound),
            };
        }
        let mut members: Vec<Member> = match (&self.store, conv.kind()) {
            (Some(store), ConvKind::Group) => {
                store.members(conv).await?.ok_or(ChatError::NotFound)?
            }
            _ => {
                let c = self
                    .broker
                    .conversation(conv)
                    .await?
                    .ok_or(ChatError::NotFound)?;
                c.members
                    .iter()
                    .map(|m| Member {
                        user: *m,
                        role: if Some(*m) == c.created_by {
                            Role::Admin
                        } else {
                            Role::Member
                        },
                        delivered_seq: 0,
                        read_seq: 0,
                    })
                    .collect()
            }
        };
        if !members.iter().any(|m| m.user == *user) {
            return Err(ChatError::NotFound);
        }
        // Watermarks: the broker has them first (the store gets them through
        // the worker), so read them there for direct conversations and for
        // the broker-only case; groups with a store use the store's copy.
        if self.store.is_none() || conv.kind() == ConvKind::Direct {
            for m in &mut members {
                let w = self.broker.watermarks(conv, &m.user).await?;
                m.delivered_seq = w.delivered;
                m.read_seq = w.read;
            }
        }
        Ok(members)
    }

    /// `user`'s conversations, most recently active first, strictly older
    /// than `before`, at most `limit`, and the cursor of the next page.
    pub async fn list(
        &self,
        user: &Address,
        before: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage> {
        let mut items = match &self.store {
            Some(store) => store.conversations_of(user, before, limit + 1).await?,
            None => self.broker_list(user, before, limit + 1).await?,
        };
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|c| ListCursor {
                active_at: c.active_at,
                id: c.id.to_string(),
            })
        } else {
            None
        };
        Ok((items, next))
    }

    /// The listing from the broker alone (embedded default): every
    /// conversation's last seq, the caller's read mark and the newest
    /// message time, sorted in memory. Fine for a development server's
    /// handful.
    async fn broker_list(
        &self,
        user: &Address,
        before: Option<&ListCursor>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let mut out = Vec::new();
        for id in self.broker.user_conversations(user).await? {
            let Some(c) = self.broker.conversation(&id).await? else {
                continue;
            };
            let last_seq = self.last_seq(&id).await?;
            let newest = self
                .broker
                .read_log(&id, last_seq.saturating_sub(1), 1)
                .await?;
            let read_seq = self.broker.watermarks(&id, user).await?.read;
            let unread = self
                .broker
                .read_log(&id, read_seq, UNREAD_CAP as usize)
                .await?
                .messages
                .iter()
                .filter(|m| m.from != *user)
                .count() as u64;
            out.push(ConversationSummary {
                kind: c.kind,
                title: c.title,
                last_seq,
                read_seq,
                unread,
                active_at: newest.messages.first().map_or(c.created_at, |m| m.ts),
                id,
            });
        }
        out.sort_by(|a, b| (b.active_at, b.id.as_str()).cmp(&(a.active_at, a.id.as_str())));
        if let Some(c) = before {
            out.retain(|s| (s.active_at, s.id.as_str()) < (c.active_at, c.id.as_str()));
        }
        out.truncate(limit);
        Ok(out)
    }

    /// A page of `conv`'s history for `user`: after `after` (oldest first),
    /// or the newest `limit` below `before` (or below the end) — what a chat
    /// view opens on. The caller's own messages carry their delivery status.
    pub async fn history_page(
        &self,
        conv: &ConvId,
        user: &Address,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let members = self.member_view(conv, user).await?;
        if let (Some(a), Some(b)) = (after, before)
            && b <= a
        {
            return Err(ChatError::invalid("before must be greater than after"));
        }
        let (after, before) = match (after, before) {
            (Some(a), b) => (a, b),
            (None, b) => {
                let before = match b {
                    Some(b) => b,
                    None => self.last_seq(conv).await?.saturating_add(1),
                };
                (before.saturating_sub(limit as u64 + 1), Some(before))
            }
        };
        let want = match before {
            Some(b) => limit.min(b.saturating_sub(after.saturating_add(1)) as usize),
            None => limit,
        };
        let page = if want == 0 {
            Default::default()
        } else {
            self.replay(conv, after, want).await?
        };
        let others: Vec<&Member> = members.iter().filter(|m| m.user != *user).collect();
        let status_of = |seq: u64| {
            if others.iter().all(|m| m.read_seq >= seq) {
                DeliveryStatus::Read
            } else if others
                .iter()
                .all(|m| m.delivered_seq.max(m.read_seq) >= seq)
            {
                DeliveryStatus::Delivered
            } else {
                DeliveryStatus::Sent
            }
        };
        let messages = page
            .messages
            .into_iter()
            .filter(|m| before.is_none_or(|b| m.seq < b))
            .map(|m| HistoryItem {
                status: (m.from == *user && conv.kind() != ConvKind::Channel)
                    .then(|| status_of(m.seq)),
                conv: m.conv,
                seq: m.seq,
                id: m.id,
                from: m.from,
                body: m.body,
                ts: m.ts,
            })
            .collect();
        Ok(HistoryPage {
            messages,
            last_seq: page.last_seq,
        })
    }

    /// `user` (an admin) adds `users` to the group `conv`; returns those who
    /// were not members yet.
    pub async fn add_members(
        &self,
        conv: &ConvId,
        user: &Address,
        users: Vec<Address>,
    ) -> Result<Vec<Address>> {
        let members = self.require_group_admin(conv, user).await?;
        let current: HashSet<Address> = members.iter().map(|m| m.user).collect();
        let mut seen = HashSet::with_capacity(users.len());
        let new: Vec<Address> = users
            .into_iter()
            .filter(|u| !current.contains(u) && seen.insert(*u))
            .collect();
        if members.len() + new.len() > self.cfg.max_group_members {
            return Err(ChatError::invalid(format!(
                "a group has at most {} members ({} now, {} to add)",
                self.cfg.max_group_members,
                members.len(),
                new.len()
            )));
        }
        // The store first: it is the source of truth; the broker's set is
        // the cache the send script checks.
        if let Some(store) = &self.store {
            store.add_members(conv, &new).await?;
        }
        self.broker.add_members(conv, &new).await?;
        self.invalidate_members(conv);
        Ok(new)
    }

    /// `user` removes `target` from the group `conv`: anyone may leave, only
    /// admins remove others. [`ChatError::NotMember`] when `target` was not
    /// in it.
    pub async fn remove_member(
        &self,
        conv: &ConvId,
        user: &Address,
        target: &Address,
    ) -> Result<()> {
        if target != user {
            self.require_group_admin(conv, user).await?;
        } else if conv.kind() != ConvKind::Group {
            return Err(direct_is_fixed());
        } else {
            self.member_view(conv, user).await?;
        }
        let removed_store = match &self.store {
            Some(store) => store.remove_member(conv, target).await?,
            None => false,
        };
        let removed_broker = self.broker.remove_member(conv, target).await?;
        self.invalidate_members(conv);
        if removed_store || removed_broker {
            Ok(())
        } else {
            Err(ChatError::NoSuchMember)
        }
    }

    async fn require_group_admin(&self, conv: &ConvId, user: &Address) -> Result<Vec<Member>> {
        if conv.kind() != ConvKind::Group {
            return Err(direct_is_fixed());
        }
        let members = self.member_view(conv, user).await?;
        let admin = members
            .iter()
            .any(|m| m.user == *user && m.role == Role::Admin);
        if !admin {
            return Err(ChatError::Forbidden("only group admins manage members"));
        }
        Ok(members)
    }
}

fn direct_is_fixed() -> ChatError {
    ChatError::invalid("direct conversations have exactly their two members")
}
