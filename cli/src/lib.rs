//! The `switchboard` command. Each subcommand is a
//! function in its module; the binaries only parse arguments and call them.

pub mod dev;
pub mod store;
pub mod talk;
pub mod web;
