//! Broker engines.
