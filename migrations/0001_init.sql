-- Switchboard's durable store. PostgreSQL is the source of truth for
-- conversations and members; Redis holds the hot path (seq counters, recent
-- logs, the membership cache) and the worker copies messages and watermarks
-- here from the shards' persistence streams.

-- Timestamps travel as Unix milliseconds (the wire format); these two convert
-- exactly, without a float round trip.
CREATE FUNCTION to_ms_ts(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT timestamptz 'epoch' + ms * interval '1 millisecond' $$;

CREATE FUNCTION from_ts_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;

CREATE TABLE users (
    address    text PRIMARY KEY CHECK (address ~ '^0x[0-9a-f]{40}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id              text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('direct', 'group', 'channel')),
    title           text,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Highest seq stored so far (moved with GREATEST by the worker).
    last_seq        bigint NOT NULL DEFAULT 0,
    last_message_at timestamptz,
    -- Redis epoch the seqs were assigned under; see docs/architecture.md.
    epoch           bigint NOT NULL DEFAULT 0
);

-- Newest-first listing of a user's conversations joins members to this.
CREATE INDEX conversations_last_message_at ON conversations (last_message_at DESC NULLS LAST);

CREATE TABLE members (
    conv_id       text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_address  text NOT NULL,
    role          text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    joined_at     timestamptz NOT NULL DEFAULT now(),
    -- High-water marks, only ever raised (GREATEST), read_seq <= delivered_seq.
    delivered_seq bigint NOT NULL DEFAULT 0,
    read_seq      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conv_id, user_address)
);

CREATE INDEX members_by_user ON members (user_address);

-- Range-partitioned by the time Redis assigned the seq. The primary key must
-- contain the partition key; (conv_id, seq, sent_at) is also exactly what a
-- redelivered stream entry repeats, so a retried insert is a no-op
-- (ON CONFLICT DO NOTHING) and history reads walk the index in seq order.
CREATE TABLE messages (
    conv_id text        NOT NULL,
    seq     bigint      NOT NULL CHECK (seq > 0),
    msg_id  text        NOT NULL,
    sender  text        NOT NULL,
    -- json, not jsonb: the text is kept byte for byte, so history returns
    -- exactly what the live path delivered (jsonb would reorder keys).
    body    json        NOT NULL,
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (conv_id, seq, sent_at)
) PARTITION BY RANGE (sent_at);

-- Catches rows no partition covers, so an insert never fails for lack of a
-- partition; partition maintenance moves them out and keeps it empty.
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
