//! The clean-up of a test server's processes, whatever way the test ends.
//!
//! A test server (a control plane, a node, PostgreSQL, Redis) runs its
//! processes in process groups of their own, so stopping one also stops
//! anything it started, and a Ctrl-C meant for `cargo test` does not reach
//! it half-way. A small `sh` *reaper* per server reads the group ids on its
//! stdin; when that pipe closes (on drop, or because the test process died
//! in any way, including a shared instance in a `static` that is never
//! dropped) it kills every group and removes the server's temp dir. No
//! `unsafe` needed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::{TestkitError, io};

const REAPER: &str = r#"
trap '' INT TERM HUP
groups=
while read -r pg; do groups="$groups $pg"; done
for pg in $groups; do kill -s KILL -- "-$pg" 2>/dev/null; done
i=0
while [ -e "$1" ] && [ "$i" -lt 50 ]; do rm -rf -- "$1" 2>/dev/null || sleep 0.1; i=$((i + 1)); done
"#;

pub(crate) struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper; it will remove `dir` when it finishes.
    pub(crate) fn spawn(dir: &Path) -> Result<Reaper, TestkitError> {
        Self::spawn_script(REAPER, "switchboard-testkit-reaper", &[dir.as_os_str()])
    }

    /// A reaper running `script` (`sh -c`, `$0` = `name`, then `args`): it
    /// reads process group ids on stdin and does its clean-up at EOF.
    pub(crate) fn spawn_script(
        script: &str,
        name: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Reaper, TestkitError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io(format!("spawn the clean-up process {name} (sh)")))?;
        let stdin = child.stdin.take();
        Ok(Reaper { child, stdin })
    }

    /// Kill process group `pgid` when this reaper finishes.
    pub(crate) fn watch(&mut self, pgid: u32) -> Result<(), TestkitError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| TestkitError::Other("reaper already finished".into()))?;
        writeln!(stdin, "{pgid}")
            .and_then(|()| stdin.flush())
            .map_err(io("hand a process group to the reaper"))
    }

    /// Close the pipe: the reaper kills every group and removes the dir.
    pub(crate) fn finish(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}
