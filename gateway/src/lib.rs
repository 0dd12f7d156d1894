//! switchboard-gateway
