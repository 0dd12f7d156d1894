//! Wallet authentication (filled in by the auth work).
