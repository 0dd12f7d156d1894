//! `switchboard`: the embedded dev server and a small wallet chat client.
//! Parsing lives here; each subcommand is a function in its module.

use switchboard_cli::{dev, talk};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as in every shipped binary (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: real-time chat with Ethereum wallet sign-in"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: switchboard_core::telemetry::LogArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a complete chat server in this process (memory broker; or Redis with --redis-url, plus
    /// PostgreSQL and an embedded worker with --database-url)
    Dev(Box<dev::DevArgs>),
    /// Sign in with a wallet key (created if missing) and store the session next to it
    Login(talk::LoginArgs),
    /// Send a text message to a wallet address or a conversation
    Send(talk::SendArgs),
    /// Print incoming messages, receipts, typing and presence (acks automatically)
    Listen(talk::ListenArgs),
    /// Group conversations
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group; prints its id
    Create(talk::GroupCreateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.cmd, Cmd::Dev(_)) {
        "info"
    } else {
        "warn"
    };
    if let Err(e) = cli.log.init(default_log) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.cmd {
            Cmd::Dev(a) => dev::run(*a).await,
            Cmd::Login(a) => talk::login(a).await,
            Cmd::Send(a) => talk::send(a).await,
            Cmd::Listen(a) => talk::listen(a).await,
            Cmd::Group(GroupCmd::Create(a)) => talk::group_create(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
