//! Files the CLI keeps: the wallet key (hex, mode 0600) and, next to it, the
//! session (`<key-file>.session.json`, also 0600: the token is a credential).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use switchboard_client::Session;
use switchboard_gateway::launch::write_private;

/// `$XDG_CONFIG_HOME/switchboard/key`, else `~/.config/switchboard/key`.
pub fn default_key_file() -> anyhow::Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".config"))
            .ok_or_else(|| anyhow!("HOME is not set: pass --key-file"))?,
    };
    Ok(config.join("switchboard").join("key"))
}

pub fn key_file(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(p) => Ok(p),
        None => default_key_file(),
    }
}

pub fn session_file(key_file: &Path) -> PathBuf {
    let mut name = OsString::from(key_file.as_os_str());
    name.push(".session.json");
    PathBuf::from(name)
}

/// Parse a hex private key (`0x` optional, surrounding whitespace ignored).
pub fn parse_key(text: &str) -> anyhow::Result<SigningKey> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.len() != 64 {
        bail!(
            "expected 64 hex digits (a 32-byte secp256k1 private key), found {} characters",
            t.len()
        );
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(t, &mut bytes).context("not hexadecimal")?;
    SigningKey::from_slice(&bytes).map_err(|_| anyhow!("not a valid secp256k1 private key"))
}

fn random_key() -> SigningKey {
    loop {
        let bytes: [u8; 32] = rand::random();
        // Fails only for zero or a value >= the curve order: practically never.
        if let Ok(k) = SigningKey::from_slice(&bytes) {
            return k;
        }
    }
}

/// Load the key file, or create it with a fresh key. Returns the key and
/// whether it was created.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(SigningKey, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            let key = parse_key(&text)
                .with_context(|| format!("key file {} is not usable", path.display()))?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key();
            let text = format!("{}\n", hex::encode(key.to_bytes()));
            write_private(path, text.as_bytes())
                .with_context(|| format!("cannot create key file {}", path.display()))?;
            Ok((key, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read key file {}", path.display())),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: key file {} is accessible by other users; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The session file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// The gateway the session was issued by.
    pub server: String,
    /// The private CA given at login (`--ca-file`), used again by later
    /// commands unless they name another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(flatten)]
    pub session: Session,
}

pub fn save_session(key_file: &Path, s: &StoredSession) -> anyhow::Result<PathBuf> {
    let path = session_file(key_file);
    let mut json = serde_json::to_vec_pretty(s).context("cannot encode the session")?;
    json.push(b'\n');
    write_private(&path, &json)
        .with_context(|| format!("cannot write session file {}", path.display()))?;
    Ok(path)
}

/// The stored session, with the messages a user needs when there is none.
pub fn load_session(key_file: &Path) -> anyhow::Result<StoredSession> {
    let path = session_file(key_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no session: run `switchboard login` first (looked for {})",
                path.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read session file {}", path.display()));
        }
    };
    let s: StoredSession = serde_json::from_str(&text).with_context(|| {
        format!(
            "session file {} is damaged; run `switchboard login` again",
            path.display()
        )
    })?;
    if s.session.expired(std::time::Duration::from_secs(5)) {
        bail!(
            "session expired at {}: run `switchboard login` again",
            rfc3339(s.session.expires_at)
        );
    }
    Ok(s)
}

/// A time as RFC 3339 text, for what the CLI prints and stores.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(parse_key(&format!("0x{}", hex::encode(k1.to_bytes()))).is_ok());
        for bad in ["", "zz", &"0".repeat(64), &"g".repeat(64), &"f".repeat(64)] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
        assert_eq!(
            session_file(&path),
            dir.path().join("nested").join("key.session.json")
        );
        let err = load_session(&path).unwrap_err().to_string();
        assert!(
            err.contains("no session: run `switchboard login` first"),
            "{err}"
        );
    }
}
