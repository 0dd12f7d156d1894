//! Component processes of a control plane or node.
//!
//! Each component runs in its own process group, so stopping it also stops
//! anything it started, and a Ctrl-C meant for `cargo test` does not reach it
//! half-way; the control plane's [`Reaper`] kills every group when the
//! test process is done with them or dies.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) use crate::reaper::Reaper;
use crate::{TestkitError, io};

/// One running component with its combined stdout/stderr log.
pub(crate) struct Component {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Component {
    pub(crate) fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
        reaper: &mut Reaper,
    ) -> Result<Component, TestkitError> {
        let out = File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("open {}", log.display())))?;
        let child = Command::new(bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io(format!("spawn {}", bin.display())))?;
        let mut component = Component { name, child, log };
        if let Err(e) = reaper.watch(component.child.id()) {
            component.kill();
            return Err(e);
        }
        Ok(component)
    }

    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL the whole process group, then reap the leader.
    pub(crate) fn kill(&mut self) {
        if !self.has_exited() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
