//! Where the etcd, kube-apiserver and kube-controller-manager binaries come
//! from: `SWITCHBOARD_K8S_BIN_DIR`, else whatever `e2e/controlplane/build.sh`
//! prints (it builds them once and caches them; a warm run takes milliseconds).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{TestkitError, io};

/// Env var naming a directory that holds the three binaries.
pub const BIN_DIR_ENV: &str = "SWITCHBOARD_K8S_BIN_DIR";
pub(crate) const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// `e2e/controlplane/build.sh` in this workspace.
pub fn build_script() -> PathBuf {
    crate::workspace_file("e2e/controlplane/build.sh")
}

/// The directory holding the three binaries, checked to contain them.
/// The build script runs at most once per process.
pub fn bin_dir() -> Result<PathBuf, TestkitError> {
    static RESOLVED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut resolved = RESOLVED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = resolved.as_ref() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => run_build_script()?,
    };
    for name in BINARIES {
        if !dir.join(name).is_file() {
            return Err(TestkitError::MissingBinary {
                name: name.into(),
                hint: format!(
                    "expected in {} ({BIN_DIR_ENV} or the output of {}); \
                     build it with {}",
                    dir.display(),
                    build_script().display(),
                    build_script().display()
                ),
            });
        }
    }
    *resolved = Some(dir.clone());
    Ok(dir)
}

fn run_build_script() -> Result<PathBuf, TestkitError> {
    let script = build_script();
    if !script.is_file() {
        return Err(TestkitError::Other(format!(
            "{} not found: set {BIN_DIR_ENV} to a directory holding {}",
            script.display(),
            BINARIES.join(", ")
        )));
    }
    // Progress (and a cold build's ~10 minutes) shows on stderr.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(io(format!("run {}", script.display())))?;
    if !out.status.success() {
        return Err(TestkitError::Other(format!(
            "{} failed ({}); run it by hand to see why, or set {BIN_DIR_ENV} to a \
             directory holding {}",
            script.display(),
            out.status,
            BINARIES.join(", ")
        )));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        return Err(TestkitError::Other(format!(
            "{} printed no directory",
            script.display()
        )));
    }
    Ok(PathBuf::from(dir))
}
