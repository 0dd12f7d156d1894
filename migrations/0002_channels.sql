-- Channels (conversations of kind 'channel'): who may post and who may read.
-- Kept apart from `members`, which holds the members of direct conversations
-- and groups with their watermarks: a channel tracks no reader.
CREATE TABLE channels (
    conv_id    text PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    visibility text NOT NULL CHECK (visibility IN ('public', 'members')),
    -- Lowercase addresses; the creator is always among the publishers.
    publishers text[] NOT NULL DEFAULT '{}',
    -- Readers of a members-only channel (besides its publishers).
    members    text[] NOT NULL DEFAULT '{}'
);
