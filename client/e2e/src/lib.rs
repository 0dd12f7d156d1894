//! No code: the Rust SDK's integration tests live in `tests/` here, where
//! they may start gateways on the in-process broker. In `client/` they would
//! make the engines (fred, sqlx) dev-dependencies of the SDK, and
//! `cargo tree -p switchboard-client` would list them.
