//! switchboard-client
