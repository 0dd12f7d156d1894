//! Runs the built `switchboard` binary: `dev`, `login`, `send`, `listen` and
//! `group create` end to end (also over TLS with a private CA, through a
//! TLS-terminating proxy), and the errors a user sees on bad input.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use switchboard_proto::ids::{Address, ConvId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const WAIT: Duration = Duration::from_secs(15);

fn cmd(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("HOME", home)
        .env_remove("SWITCHBOARD_KEY_FILE")
        .env_remove("SWITCHBOARD_SERVER")
        .env_remove("SWITCHBOARD_CA_FILE")
        .env_remove("SWITCHBOARD_CORS_ORIGINS")
        .env_remove("SWITCHBOARD_TOKEN_SECRET")
        .env_remove("SWITCHBOARD_REDIS_URL")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("SWITCHBOARD_CLUSTER")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn run(home: &Path, args: &[&str]) -> Output {
    timeout(WAIT, cmd(home).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("switchboard {args:?} did not finish"))
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run and require success; returns stdout.
async fn ok(home: &Path, args: &[&str]) -> String {
    let o = run(home, args).await;
    assert!(
        o.status.success(),
        "switchboard {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    stdout(&o)
}

/// Run and require a failure with `needle` in stderr.
async fn fails(home: &Path, args: &[&str], needle: &str) {
    let o = run(home, args).await;
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "switchboard {args:?} succeeded: {}",
        stdout(&o)
    );
    assert!(
        err.contains(needle),
        "switchboard {args:?}: {err:?} does not mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_healthy(server: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("{server}/healthz")).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `listen` in the background; returns once it is connected.
async fn start_listen(home: &Path, args: &[&str]) -> Child {
    let mut child = cmd(home)
        .arg("listen")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    timeout(WAIT, async {
        while let Some(line) = err.next_line().await.unwrap() {
            if line.starts_with("listening as ") {
                return;
            }
        }
        panic!("listen exited before connecting");
    })
    .await
    .unwrap();
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
    child
}

async fn finish(child: Child) -> String {
    let out = timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "listen failed: {}", stdout(&out));
    stdout(&out)
}

fn logged_in_address(out: &str) -> Address {
    let rest = out
        .trim()
        .strip_prefix("logged in as ")
        .unwrap_or_else(|| panic!("{out}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// `switchboard dev` on a free port with `extra` arguments; returns the
/// process, its URL and its banner line once it serves /healthz.
async fn start_dev(home: &Path, extra: &[&str]) -> (Child, String, String) {
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut dev = cmd(home)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = BufReader::new(dev.stdout.take().unwrap()).lines();
    let line = timeout(WAIT, banner.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains(&server), "{line}");
    wait_healthy(&server).await;
    (dev, server, line)
}

#[tokio::test]
async fn dev_login_send_listen_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let secret = home.join("secret");
    let (mut dev, server, banner) =
        start_dev(home, &["--token-secret-file", secret.to_str().unwrap()]).await;
    assert!(banner.contains("broker memory"), "{banner}");
    assert_eq!(std::fs::read(&secret).unwrap().len(), 32);

    let (ka, kb) = (home.join("a").join("key"), home.join("b").join("key"));
    let (ka, kb) = (ka.to_str().unwrap(), kb.to_str().unwrap());
    let out = ok(home, &["login", "--server", &server, "--key-file", ka]).await;
    let a = logged_in_address(&out);
    assert_eq!(
        out.split_whitespace().nth(3),
        Some(a.to_string().as_str()),
        "EIP-55: {out}"
    );
    let b = logged_in_address(&ok(home, &["login", "--server", &server, "--key-file", kb]).await);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(ka), 0o600);
        assert_eq!(mode(&format!("{ka}.session.json")), 0o600);
    }
    // Logging in again reuses the key.
    assert_eq!(
        logged_in_address(&ok(home, &["login", "--server", &server, "--key-file", ka]).await),
        a
    );

    // B listens; A sends to B's address (the direct conversation).
    let listen = start_listen(home, &["--key-file", kb, "--count", "1"]).await;
    let dm = ConvId::direct(&a, &b).unwrap();
    let out = ok(
        home,
        &[
            "send",
            "--key-file",
            ka,
            "--to",
            &b.to_string(),
            "hello",
            "world",
        ],
    )
    .await;
    assert_eq!(out.trim(), format!("sent seq=1 conv={dm}"));
    let shown = finish(listen).await;
    assert!(
        shown.contains(&format!("[{dm}] 1 {a}: hello world")),
        "{shown}"
    );

    // A later listener following the conversation gets the history by sync;
    // the lowercase address and the conv id name the same conversation.
    let out = ok(
        home,
        &["send", "--key-file", ka, "--to", dm.as_str(), "again"],
    )
    .await;
    assert_eq!(out.trim(), format!("sent seq=2 conv={dm}"));
    let listen = start_listen(
        home,
        &["--key-file", kb, "--conv", &a.lower(), "--count", "2"],
    )
    .await;
    let shown = finish(listen).await;
    assert!(
        shown.contains(&format!("[{dm}] 1 {a}: hello world")),
        "{shown}"
    );
    assert!(shown.contains(&format!("[{dm}] 2 {a}: again")), "{shown}");

    // Groups.
    let out = ok(
        home,
        &[
            "group",
            "create",
            "--key-file",
            ka,
            "--member",
            &b.to_string(),
            "--title",
            "T",
        ],
    )
    .await;
    let g: ConvId = out.trim().parse().unwrap();
    let out = ok(
        home,
        &["send", "--key-file", kb, "--to", g.as_str(), "hi", "group"],
    )
    .await;
    assert_eq!(out.trim(), format!("sent seq=1 conv={g}"));

    // Bad input with a session: clear errors, no panics.
    fails(
        home,
        &["send", "--key-file", ka, "--to", "bob", "x"],
        "neither a wallet address",
    )
    .await;
    fails(
        home,
        &["send", "--key-file", ka, "--to", "0x1234", "x"],
        "not a wallet address",
    )
    .await;
    fails(
        home,
        &["send", "--key-file", ka, "--to", &a.to_string(), "x"],
        "your own address",
    )
    .await;
    fails(
        home,
        &["group", "create", "--key-file", ka, "--member", "nope"],
        "not a wallet address",
    )
    .await;
    fails(
        home,
        &[
            "send",
            "--key-file",
            ka,
            "--to",
            "g:00000000000000000000000000000000",
            "x",
        ],
        "forbidden",
    )
    .await;

    // SIGTERM drains and exits cleanly.
    let pid = dev.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = timeout(WAIT, dev.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn dev_on_redis_and_sessions_across_restarts() {
    let redis = switchboard_testkit::RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let secret = home.join("secret");
    let secret = secret.to_str().unwrap();
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--token-secret-file", secret];
    let (mut dev, server, banner) = start_dev(home, &args).await;
    assert!(banner.contains("broker redis"), "{banner}");
    let ready = reqwest::get(format!("{server}/readyz")).await.unwrap();
    assert!(ready.status().is_success());

    let (ka, kb) = (home.join("a"), home.join("b"));
    let (ka, kb) = (ka.to_str().unwrap(), kb.to_str().unwrap());
    ok(home, &["login", "--server", &server, "--key-file", ka]).await;
    let b = logged_in_address(&ok(home, &["login", "--server", &server, "--key-file", kb]).await);
    let out = ok(
        home,
        &["send", "--key-file", ka, "--to", &b.to_string(), "one"],
    )
    .await;
    assert!(out.starts_with("sent seq=1 "), "{out}");

    // Restart on the same secret file and Redis: the stored session still
    // works and the conversation continues where it was.
    dev.start_kill().unwrap();
    dev.wait().await.unwrap();
    let (_dev, server2, _) = start_dev(home, &args).await;
    let out = ok(
        home,
        &[
            "send",
            "--key-file",
            ka,
            "--server",
            &server2,
            "--to",
            &b.to_string(),
            "two",
        ],
    )
    .await;
    assert!(out.starts_with("sent seq=2 "), "{out}");
}

#[tokio::test]
async fn helpful_errors_without_a_session_or_server() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = home.join("key");
    let key = key.to_str().unwrap();
    let peer = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
    let no_session = "no session: run `switchboard login` first";
    fails(
        home,
        &["send", "--key-file", key, "--to", peer, "hi"],
        no_session,
    )
    .await;
    fails(home, &["listen", "--key-file", key], no_session).await;
    fails(
        home,
        &["group", "create", "--key-file", key, "--member", peer],
        no_session,
    )
    .await;
    // The default key file lives under $HOME.
    fails(home, &["send", "--to", peer, "hi"], no_session).await;

    let dead = format!("http://127.0.0.1:{}", free_port());
    fails(
        home,
        &["login", "--server", &dead, "--key-file", key],
        "cannot reach the gateway",
    )
    .await;
    fails(
        home,
        &["login", "--server", "localhost:8080", "--key-file", key],
        "invalid server URL",
    )
    .await;

    std::fs::write(home.join("bad"), "not a key\n").unwrap();
    let bad = home.join("bad");
    fails(
        home,
        &[
            "login",
            "--server",
            &dead,
            "--key-file",
            bad.to_str().unwrap(),
        ],
        "is not usable",
    )
    .await;
    std::fs::write(format!("{key}.session.json"), "{").unwrap();
    fails(
        home,
        &["send", "--key-file", key, "--to", peer, "hi"],
        "damaged",
    )
    .await;

    fails(
        home,
        &["dev", "--redis-url", "http://x"],
        "must start with redis://",
    )
    .await;
    fails(
        home,
        &["dev", "--listen", "nonsense"],
        "cannot listen on nonsense",
    )
    .await;

    // Usage errors come from clap with exit code 2.
    let o = run(home, &["send", "hi"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--to"), "{}", stderr(&o));
}

/// `switchboard dev --redis-url --database-url`: migrations, the embedded
/// worker and the gateway in one process; what the CLI sent ends up in
/// PostgreSQL. Without Redis, a database URL is refused with a clear reason.
#[tokio::test]
async fn dev_with_postgres_stores_messages() {
    let redis = switchboard_testkit::RedisServer::start().expect("redis-server");
    let pg = switchboard_testkit::Postgres::start().expect("postgres");
    let db = pg.create_database("dev").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    fails(
        home,
        &["dev", "--database-url", &db],
        "--database-url needs --redis-url",
    )
    .await;
    let url = redis.url();
    let (mut dev, server, banner) =
        start_dev(home, &["--redis-url", &url, "--database-url", &db]).await;
    assert!(
        banner.contains("store postgres, embedded worker"),
        "{banner}"
    );
    let (ka, kb) = (home.join("a"), home.join("b"));
    let (ka, kb) = (ka.to_str().unwrap(), kb.to_str().unwrap());
    ok(home, &["login", "--key-file", ka, "--server", &server]).await;
    let b = logged_in_address(&ok(home, &["login", "--key-file", kb, "--server", &server]).await)
        .to_string();
    for text in ["one", "two"] {
        ok(
            home,
            &[
                "send",
                "--key-file",
                ka,
                "--server",
                &server,
                "--to",
                &b,
                text,
            ],
        )
        .await;
    }
    let mut stored = String::new();
    for _ in 0..100 {
        stored = pg
            .psql(
                "dev",
                "SELECT string_agg(body::text, ',' ORDER BY seq) FROM messages",
            )
            .unwrap();
        if stored.contains("two") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored.contains("one") && stored.contains("two"),
        "{stored:?}"
    );
    dev.start_kill().unwrap();
    dev.wait().await.unwrap();
}

/// `switchboard dev` (with `--cors-origin`) behind a TLS-terminating proxy
/// with a test CA's certificate: `login --ca-file` over https://, then
/// `listen`, `send` and `group create` with the CA remembered from login.
/// Without the CA, or with a file that is no CA, the user is told why.
#[tokio::test]
async fn the_client_commands_work_over_tls_with_a_private_ca() {
    use switchboard_testkit::tls::{TestCa, TlsProxy};

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (mut dev, server, _) = start_dev(home, &["--cors-origin", "https://app.example"]).await;
    // `dev` takes the gateway's CORS flag.
    let r = reqwest::Client::new()
        .get(format!("{server}/v1/auth/nonce"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );

    let ca = TestCa::generate().unwrap();
    let upstream = server.trim_start_matches("http://").parse().unwrap();
    let proxy = TlsProxy::start(&ca, upstream).await.unwrap();
    let https = proxy.https_url();
    let ca_file = ca.write_ca(home).unwrap();
    let ca_file = ca_file.to_str().unwrap();

    let (ka, kb) = (home.join("a").join("key"), home.join("b").join("key"));
    let (ka, kb) = (ka.to_str().unwrap(), kb.to_str().unwrap());
    let a = logged_in_address(
        &ok(
            home,
            &[
                "login",
                "--server",
                &https,
                "--ca-file",
                ca_file,
                "--key-file",
                ka,
            ],
        )
        .await,
    );
    let b = logged_in_address(
        &ok(
            home,
            &[
                "login",
                "--server",
                &https,
                "--ca-file",
                ca_file,
                "--key-file",
                kb,
            ],
        )
        .await,
    );
    // Later commands find the server and the CA in the session file.
    let listener = start_listen(home, &["--key-file", kb, "--count", "1"]).await;
    let sent = ok(
        home,
        &[
            "send",
            "--key-file",
            ka,
            "--to",
            &b.to_string(),
            "hello over tls",
        ],
    )
    .await;
    assert!(sent.starts_with("sent seq=1 "), "{sent}");
    let heard = finish(listener).await;
    assert!(heard.contains(&format!("1 {a}: hello over tls")), "{heard}");
    let group = ok(
        home,
        &[
            "group",
            "create",
            "--key-file",
            ka,
            "--member",
            &b.to_string(),
        ],
    )
    .await;
    assert!(group.trim().starts_with("g:"), "{group}");

    // Without the CA: a certificate error and the way out, at once.
    let kc = home.join("c").join("key");
    let kc = kc.to_str().unwrap();
    let started = std::time::Instant::now();
    fails(
        home,
        &["login", "--server", &https, "--key-file", kc],
        "certificate is not trusted",
    )
    .await;
    fails(
        home,
        &["login", "--server", &https, "--key-file", kc],
        "--ca-file",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A file that is no CA certificate, and one that is missing.
    let not_ca = home.join("not-ca.pem");
    std::fs::write(&not_ca, "hello").unwrap();
    fails(
        home,
        &[
            "login",
            "--server",
            &https,
            "--ca-file",
            not_ca.to_str().unwrap(),
            "--key-file",
            kc,
        ],
        "no -----BEGIN CERTIFICATE----- block",
    )
    .await;
    fails(
        home,
        &[
            "send",
            "--key-file",
            ka,
            "--ca-file",
            "/nonexistent/ca.pem",
            "--to",
            &b.to_string(),
            "x",
        ],
        "CA file /nonexistent/ca.pem: cannot read it",
    )
    .await;
    dev.kill().await.unwrap();
}

/// `switchboard dev` serves the browser chat (examples/web, built and
/// checked in) at /demo and /demo/ on its own origin, as the file is: the
/// page's own test drives it in Chromium (examples/web/test).
#[tokio::test]
async fn dev_serves_the_browser_chat_at_demo() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let secret = home.join("secret");
    let (mut dev, server, _) =
        start_dev(home, &["--token-secret-file", secret.to_str().unwrap()]).await;
    let page = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/web/dist/index.html"
    ))
    .unwrap();
    for path in ["/demo", "/demo/"] {
        let r = reqwest::get(format!("{server}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/html; charset=utf-8"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(
            r.bytes().await.unwrap() == page,
            "{path}: not dist/index.html"
        );
    }
    // Nothing else is served from files: the API's 404 stays.
    let r = reqwest::get(format!("{server}/demo/app.js")).await.unwrap();
    assert_eq!(r.status(), 404);
    dev.start_kill().unwrap();
    dev.wait().await.unwrap();
}
