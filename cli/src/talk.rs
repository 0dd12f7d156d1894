//! The client subcommands: `login`, `send`, `listen`, `group create`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use switchboard_client::{
    Client, ClientError, ClientOptions, Event, Message, PresenceStatus, SignInOptions, Tls,
    create_group, sign_in,
};
use switchboard_proto::ids::{Address, ConvId};

use crate::store::{self, StoredSession};

/// Gateway used by `login` when none is given.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How long `send` waits for the server's `sent`.
const SEND_WAIT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct Common {
    /// Wallet key file (hex private key); the session is kept in <key-file>.session.json
    /// [default: ~/.config/switchboard/key]
    #[arg(long, env = "SWITCHBOARD_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Gateway URL [default: the one used at login; for login http://127.0.0.1:8080]
    #[arg(long, env = "SWITCHBOARD_SERVER")]
    server: Option<String>,
    /// PEM file of a private CA to trust for an https:// gateway, besides the
    /// system's [default: the one given at login]
    #[arg(long, env = "SWITCHBOARD_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// The trust for https:// / wss://: the system's, plus the CA file.
fn tls(ca_file: Option<&Path>) -> anyhow::Result<Tls> {
    match ca_file {
        None => Ok(Tls::default()),
        Some(path) => Ok(Tls::default().with_ca_file(path)?),
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    common: Common,
    /// EIP-4361 domain; must match the gateway's --domain
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Chain id to sign for; must be one the gateway accepts
    #[arg(long, default_value_t = 1)]
    chain_id: u64,
    /// Hours the signed message (and so the session, at most the gateway's
    /// session lifetime) stays valid
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=24 * 365))]
    valid_hours: u64,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    common: Common,
    /// Recipient: a wallet address (the direct conversation with it) or a conversation id
    #[arg(long)]
    to: String,
    /// The message text (several words are joined with spaces)
    #[arg(required = true, num_args = 1..)]
    text: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListenArgs {
    #[command(flatten)]
    common: Common,
    /// Also replay the retained history of this conversation (address or id; repeatable)
    #[arg(long)]
    conv: Vec<String>,
    /// Exit after printing this many messages
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Args, Debug)]
pub struct GroupCreateArgs {
    #[command(flatten)]
    common: Common,
    /// A member's wallet address (repeatable); you are always a member
    #[arg(long = "member")]
    members: Vec<String>,
    /// Group title
    #[arg(long)]
    title: Option<String>,
}

pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let key_file = store::key_file(a.common.key_file)?;
    let server = a.common.server.unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let (key, created) = store::load_or_create_key(&key_file)?;
    if created {
        eprintln!("created a new wallet key in {}", key_file.display());
    }
    let ca_file = a.common.ca_file;
    let opts = SignInOptions {
        domain: a.domain,
        chain_id: a.chain_id,
        expires_in: Duration::from_secs(a.valid_hours * 3600),
        tls: tls(ca_file.as_deref())?,
        ..SignInOptions::default()
    };
    let session = sign_in(&server, &key, &opts)
        .await
        .map_err(|e| explain(e, &server))
        .context("sign-in failed")?;
    let stored = StoredSession {
        server,
        ca_file,
        session: session.clone(),
    };
    store::save_session(&key_file, &stored)?;
    println!(
        "logged in as {} until {}",
        session.address,
        store::rfc3339(session.expires_at)
    );
    Ok(())
}

/// The stored session, the server to use and the trust for it.
fn session(common: Common) -> anyhow::Result<(StoredSession, Tls)> {
    let key_file = store::key_file(common.key_file)?;
    let mut s = store::load_session(&key_file)?;
    if let Some(server) = common.server {
        s.server = server;
    }
    if let Some(ca) = common.ca_file {
        s.ca_file = Some(ca);
    }
    let tls = tls(s.ca_file.as_deref())?;
    Ok((s, tls))
}

/// `--to` / `--conv`: a wallet address means the direct conversation with it.
pub fn resolve_target(me: &Address, target: &str) -> anyhow::Result<ConvId> {
    let t = target.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        let peer: Address = t
            .parse()
            .map_err(|e| anyhow!("{target:?} is not a wallet address: {e}"))?;
        return ConvId::direct(me, &peer)
            .map_err(|_| anyhow!("that is your own address: pick another wallet"));
    }
    t.parse().map_err(|e| {
        anyhow!(
            "{target:?} is neither a wallet address (0x + 40 hex digits) nor a conversation id: {e}"
        )
    })
}

/// Add the next step to errors a user can fix.
fn explain(e: ClientError, server: &str) -> anyhow::Error {
    match &e {
        ClientError::Unauthorized(_) => {
            anyhow!(e).context("the gateway refused the session: run `switchboard login` again")
        }
        ClientError::Tls(_) => anyhow!(e).context(format!(
            "cannot talk to the gateway at {server} over TLS (--ca-file PATH trusts a private CA)"
        )),
        ClientError::Http(_) | ClientError::WebSocket(_) => anyhow!(e).context(format!(
            "cannot reach the gateway at {server} (is `switchboard dev` running?)"
        )),
        _ => anyhow!(e),
    }
}

fn options(tls: Tls) -> ClientOptions {
    ClientOptions {
        backoff_cap: Duration::from_secs(5),
        tls,
        ..ClientOptions::default()
    }
}

pub async fn send(a: SendArgs) -> anyhow::Result<()> {
    let (s, tls) = session(a.common)?;
    let conv = resolve_target(&s.session.address, &a.to)?;
    let text = a.text.join(" ");
    let client = Client::connect(&s.server, &s.session, options(tls))
        .await
        .map_err(|e| explain(e, &s.server))?;
    let pending = client.send(&conv, serde_json::json!({ "text": text }));
    let sent = tokio::time::timeout(SEND_WAIT, pending).await;
    client.close().await;
    let sent = sent
        .map_err(|_| anyhow!("no answer from the gateway within {SEND_WAIT:?}"))?
        .map_err(|e| explain(e, &s.server))?;
    println!("sent seq={} conv={}", sent.seq, sent.conv);
    Ok(())
}

/// The text of a body, or the body itself when it has none.
fn body_text(m: &Message) -> String {
    match serde_json::from_str::<serde_json::Value>(m.body.get()) {
        Ok(serde_json::Value::Object(o)) => match o.get("text") {
            Some(serde_json::Value::String(t)) => t.clone(),
            _ => m.body.get().to_owned(),
        },
        _ => m.body.get().to_owned(),
    }
}

fn status_name(s: PresenceStatus) -> &'static str {
    match s {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

pub async fn listen(a: ListenArgs) -> anyhow::Result<()> {
    let (s, tls) = session(a.common)?;
    let me = s.session.address;
    let mut track = Vec::new();
    for c in &a.conv {
        track.push((resolve_target(&me, c)?, 0));
    }
    let opts = ClientOptions {
        track,
        ..options(tls)
    };
    let mut client = Client::connect(&s.server, &s.session, opts)
        .await
        .map_err(|e| explain(e, &s.server))?;
    eprintln!("listening as {me} on {} (Ctrl-C to stop)", s.server);
    let mut printed = 0u64;
    let outcome = loop {
        if a.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let ev = tokio::select! {
            ev = client.next_event() => ev,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let Some(ev) = ev else {
            break Err(anyhow!("the connection ended"));
        };
        match ev {
            Event::Message(m) => {
                println!("[{}] {} {}: {}", m.conv, m.seq, m.from, body_text(&m));
                printed += 1;
            }
            Event::Receipt {
                conv,
                user,
                delivered,
                read,
            } => println!("[{conv}] receipt {user} delivered={delivered} read={read}"),
            Event::Typing { conv, user } => println!("[{conv}] {user} is typing"),
            Event::Presence {
                user,
                status,
                last_seen,
            } => println!(
                "presence {user} {} last_seen={last_seen}",
                status_name(status)
            ),
            Event::Synced {
                conv, held, lost, ..
            } => {
                if lost > 0 {
                    eprintln!(
                        "[{conv}] synced to {held}; {lost} older messages are no longer available"
                    );
                }
            }
            Event::Connected { .. } => {}
            Event::Disconnected { code, reason } => match code {
                Some(4001) => {
                    break Err(anyhow!(
                        "the gateway refused the session ({reason}): run `switchboard login` again"
                    ));
                }
                _ => eprintln!(
                    "disconnected ({}): {reason}; reconnecting",
                    code.map_or("no code".into(), |c| c.to_string())
                ),
            },
            Event::Error { code, message, .. } => {
                eprintln!("server error {}: {message}", code.as_str())
            }
        }
    };
    client.close().await;
    outcome
}

pub async fn group_create(a: GroupCreateArgs) -> anyhow::Result<()> {
    let (s, tls) = session(a.common)?;
    let mut members = Vec::new();
    for m in &a.members {
        let addr: Address = m
            .parse()
            .map_err(|e| anyhow!("--member {m:?} is not a wallet address: {e}"))?;
        members.push(addr);
    }
    if members.is_empty() {
        bail!("give at least one --member 0x… (you are added automatically)");
    }
    let conv = create_group(
        &s.server,
        &s.session.token,
        &members,
        a.title.as_deref(),
        &tls,
    )
    .await
    .map_err(|e| explain(e, &s.server))?;
    println!("{}", conv.id);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let me: Address = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
            .parse()
            .unwrap();
        let peer = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
        let dm = resolve_target(&me, peer).unwrap();
        assert_eq!(dm, ConvId::direct(&me, &peer.parse().unwrap()).unwrap());
        assert_eq!(resolve_target(&me, dm.as_str()).unwrap(), dm);
        let g = ConvId::new_group();
        assert_eq!(resolve_target(&me, g.as_str()).unwrap(), g);
        assert!(resolve_target(&me, &me.to_string()).is_err());
        for bad in ["", "0x12", "bob", "g:xyz"] {
            assert!(resolve_target(&me, bad).is_err(), "{bad}");
        }
    }
}
