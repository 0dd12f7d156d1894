//! The images the operator's pods need, built on this machine (no registry,
//! no base image, no Docker): the data plane (`switchboard`,
//! `switchboard-gateway`, `switchboard-worker`) and the operator from a
//! directory of workspace binaries, and Redis and PostgreSQL from this
//! machine's Debian packages.
//!
//! Like the repository's `Dockerfile`: binaries in `/usr/local/bin`, user
//! 65532 (numeric `User`, so `runAsNonRoot` can check it), the CA bundle
//! when the machine has one, an `/etc/passwd` and `/etc/group` naming the
//! image's user (65532 `switchboard`; 999 `redis` / `postgres`, the uid the
//! operator runs those pods as). Each image holds the dynamic closure of
//! every ELF file in it (`ldd`: the loader at its `PT_INTERP` path, the
//! libraries where the loader finds them) and mirrors the machine's paths,
//! symlinks included (`/lib` → `usr/lib` on a merged-/usr Debian), so
//! compiled-in paths (PostgreSQL's share dir, its `pkglibdir`, the time
//! zone data) work unchanged. Nothing in them writes outside mounted
//! volumes: the operator's pods run with a read-only root filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::oci::{ImageConfig, LayerEntry, write_image};
pub use crate::image_names::{
    OPERATOR_IMAGE_REPO, SWITCHBOARD_IMAGE_REPO, operator_image_name, switchboard_image_name,
};
use crate::{TestkitError, io};

/// An image archive written by this module, for [`super::Node::import_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// The image's name, e.g. `switchboard.local/redis:7.0.15-debian`.
    pub name: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

/// Env var naming the directory with the workspace's binaries
/// (`switchboard`, `switchboard-gateway`, `switchboard-worker`,
/// `switchboard-operator`); default: the workspace's `target/debug`.
pub const E2E_BIN_DIR_ENV: &str = "SWITCHBOARD_E2E_BIN_DIR";
/// The data-plane binaries, in `/usr/local/bin` of [`switchboard_image`].
pub const SWITCHBOARD_BINARIES: [&str; 3] =
    ["switchboard", "switchboard-gateway", "switchboard-worker"];
/// uid and gid of the data-plane and operator images (the Dockerfile's).
pub const SWITCHBOARD_UID: u32 = 65532;
/// uid and gid the operator runs Redis and PostgreSQL pods as (the official
/// images' `redis` and `postgres` users).
pub const SERVICE_UID: u32 = 999;
/// The PostgreSQL image's entrypoint (`e2e/images/postgres-entrypoint.sh`):
/// the official image's env contract (`POSTGRES_USER`, `POSTGRES_DB`,
/// `POSTGRES_PASSWORD`, `PGDATA`) on a read-only root filesystem.
pub const POSTGRES_ENTRYPOINT: &str = include_str!("../../../e2e/images/postgres-entrypoint.sh");
/// Where [`POSTGRES_ENTRYPOINT`] is in the PostgreSQL image.
const POSTGRES_ENTRYPOINT_PATH: &str = "/usr/local/bin/postgres-entrypoint.sh";
/// The host's CA bundle (Debian's `ca-certificates`), copied when present.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Symlinks followed while mirroring one path, at most (like the kernel's
/// 40).
const MAX_SYMLINKS: usize = 40;

/// The workspace binaries' directory: [`E2E_BIN_DIR_ENV`], else
/// `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`.
pub fn workspace_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(E2E_BIN_DIR_ENV) {
        return PathBuf::from(d);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => crate::workspace_file("").join(t).join("debug"),
        None => crate::workspace_file("target/debug"),
    }
}

/// The four images a ChatCluster's pods and the operator run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodImages {
    /// [`switchboard_image`] as [`switchboard_image_name`].
    pub switchboard: LocalImage,
    /// [`operator_image`] as [`operator_image_name`].
    pub operator: LocalImage,
    /// [`redis_image`]: a ChatCluster names it in `spec.redis.managed.image`.
    pub redis: LocalImage,
    /// [`postgres_image`]: `spec.postgres.managed.image`.
    pub postgres: LocalImage,
}

impl PodImages {
    /// All four.
    pub fn all(&self) -> [&LocalImage; 4] {
        [
            &self.switchboard,
            &self.operator,
            &self.redis,
            &self.postgres,
        ]
    }
}

/// Builds the four images into `out_dir`, the workspace binaries from
/// `bin_dir` (see [`workspace_bin_dir`]), under the operator's and the
/// chart's default names.
pub fn build_all(bin_dir: &Path, out_dir: &Path) -> Result<PodImages, TestkitError> {
    Ok(PodImages {
        switchboard: switchboard_image(bin_dir, out_dir, &switchboard_image_name())?,
        operator: operator_image(bin_dir, out_dir, &operator_image_name())?,
        redis: redis_image(out_dir)?,
        postgres: postgres_image(out_dir)?,
    })
}

/// The data-plane image `name` (for the operator's default,
/// [`switchboard_image_name`]): [`SWITCHBOARD_BINARIES`] from `bin_dir`
/// (e.g. `target/debug` or `target/release`) in `/usr/local/bin`, user
/// 65532, entrypoint `switchboard-gateway` (the Dockerfile's `switchboard`
/// target). Written to `out_dir`.
pub fn switchboard_image(
    bin_dir: &Path,
    out_dir: &Path,
    name: &str,
) -> Result<LocalImage, TestkitError> {
    let mut root = Rootfs::new(name);
    root.base(&[("switchboard", SWITCHBOARD_UID)])?;
    for bin in SWITCHBOARD_BINARIES {
        root.workspace_binary(bin_dir, bin)?;
    }
    // The Dockerfile's base (Debian slim) has coreutils; a client pod of the
    // e2e suite idles in `sleep` while the CLI runs in it through exec.
    root.host(Path::new("/bin/sleep"))?;
    root.finish(
        out_dir,
        "switchboard",
        ImageConfig {
            entrypoint: vec!["switchboard-gateway".into()],
            user: Some(format!("{SWITCHBOARD_UID}:{SWITCHBOARD_UID}")),
            ..ImageConfig::default()
        },
    )
}

/// The operator image `name` (for the chart's default,
/// [`operator_image_name`]): `switchboard-operator` from `bin_dir`, user
/// 65532, entrypoint `switchboard-operator`, command `run` (the
/// Dockerfile's `operator` target). Written to `out_dir`.
pub fn operator_image(
    bin_dir: &Path,
    out_dir: &Path,
    name: &str,
) -> Result<LocalImage, TestkitError> {
    let mut root = Rootfs::new(name);
    root.base(&[("switchboard", SWITCHBOARD_UID)])?;
    root.workspace_binary(bin_dir, "switchboard-operator")?;
    root.finish(
        out_dir,
        "switchboard-operator",
        ImageConfig {
            entrypoint: vec!["switchboard-operator".into()],
            cmd: vec!["run".into()],
            user: Some(format!("{SWITCHBOARD_UID}:{SWITCHBOARD_UID}")),
            ..ImageConfig::default()
        },
    )
}

/// Redis from this machine's packages (`redis-server`, `redis-cli` on
/// PATH), named `switchboard.local/redis:<version>-debian`: user 999
/// (`redis`), entrypoint `redis-server`, working dir `/data`. The operator's
/// pods name their command (`redis-server /etc/redis/redis.conf`) and
/// probe with `redis-cli ping`. Written to `out_dir`.
pub fn redis_image(out_dir: &Path) -> Result<LocalImage, TestkitError> {
    const HINT: &str = "apt-get install redis-server redis-tools";
    let server = crate::find_binary("redis-server", "REDIS_SERVER_BIN", HINT)?;
    let cli = crate::find_binary("redis-cli", "REDIS_CLI_BIN", HINT)?;
    let out = run(Command::new(&server).arg("--version"))?;
    // "Redis server v=7.0.15 sha=… malloc=…"
    let version = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .filter(|v| is_version(v))
        .ok_or_else(|| {
            TestkitError::Other(format!(
                "{} --version: no version in {out:?}",
                server.display()
            ))
        })?;
    let name = format!("switchboard.local/redis:{version}-debian");
    let mut root = Rootfs::new(&name);
    root.base(&[("redis", SERVICE_UID)])?;
    // Under /usr/bin, on the image's PATH, whatever PATH found them under.
    for (bin, host) in [("redis-server", &server), ("redis-cli", &cli)] {
        root.host_as(host, &format!("/usr/bin/{bin}"))?;
    }
    root.dir("/data", 0o755)?;
    root.finish(
        out_dir,
        "redis",
        ImageConfig {
            entrypoint: vec!["redis-server".into()],
            user: Some(format!("{SERVICE_UID}:{SERVICE_UID}")),
            working_dir: Some("/data".into()),
            ..ImageConfig::default()
        },
    )
}

/// PostgreSQL from this machine's packages (the server found like
/// [`crate::Postgres`] finds it), named
/// `switchboard.local/postgres:<major>-debian`: `postgres`, `initdb`,
/// `pg_ctl`, `pg_isready` and `psql` at Debian's paths (their directory on
/// the image's PATH), the `pkglibdir` modules PostgreSQL loads (plpgsql,
/// encodings, contrib; not the LLVM JIT provider), the share dir and the
/// time zone data (no `/etc/localtime`: the server runs in UTC); `/bin/sh`
/// (dash) and `rm` for the entrypoint [`POSTGRES_ENTRYPOINT`], `locale`
/// and the C.UTF-8 locale for initdb. User 999
/// (`postgres`). Written to `out_dir`.
pub fn postgres_image(out_dir: &Path) -> Result<LocalImage, TestkitError> {
    let bin = crate::postgres::find_bin_dir()?;
    let bin = fs::canonicalize(&bin).map_err(io(format!("resolve {}", bin.display())))?;
    let pg_config = |flag: &str| -> Result<PathBuf, TestkitError> {
        let out = run(Command::new(bin.join("pg_config")).arg(flag))?;
        Ok(PathBuf::from(out.trim()))
    };
    let (share, pkglib) = (pg_config("--sharedir")?, pg_config("--pkglibdir")?);
    let out = run(Command::new(bin.join("postgres")).arg("--version"))?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let major = out
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| TestkitError::Other(format!("postgres --version: unexpected {out:?}")))?;
    let name = format!("switchboard.local/postgres:{major}-debian");

    let mut root = Rootfs::new(&name);
    root.base(&[("postgres", SERVICE_UID)])?;
    for b in ["postgres", "initdb", "pg_ctl", "pg_isready", "psql"] {
        root.host(&bin.join(b))?;
    }
    let modules = fs::read_dir(&pkglib).map_err(io(format!("read {}", pkglib.display())))?;
    let mut modules: Vec<PathBuf> = modules
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "so"))
        // The JIT provider: it alone would pull in LLVM (over 100 MB);
        // without it PostgreSQL runs with JIT unavailable.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llvmjit"))
        })
        .collect();
    modules.sort();
    for m in &modules {
        root.host(m)?;
    }
    root.host_tree(&share, &|_| false)?;
    // Debian builds with --with-system-tzdata. Not `localtime` (a link to
    // this machine's /etc/localtime): the image's time zone is UTC.
    let zoneinfo = Path::new("/usr/share/zoneinfo");
    if zoneinfo.is_dir() {
        root.host_tree(zoneinfo, &|p| p == zoneinfo.join("localtime"))?;
    }
    for tool in ["/bin/sh", "/bin/rm"] {
        root.host(Path::new(tool))?;
    }
    // initdb runs `locale -a` to import the system's collations: C.UTF-8
    // (the only locale the image has) where this machine has it.
    let (locale, c_utf8) = (
        Path::new("/usr/bin/locale"),
        Path::new("/usr/lib/locale/C.utf8"),
    );
    if locale.is_file() && c_utf8.is_dir() {
        root.host(locale)?;
        root.host_tree(c_utf8, &|_| false)?;
    }
    root.data(
        POSTGRES_ENTRYPOINT_PATH,
        POSTGRES_ENTRYPOINT.as_bytes().to_vec(),
        0o755,
    )?;
    for d in [
        "/var/lib/postgresql",
        "/var/lib/postgresql/data",
        "/var/run",
        "/var/run/postgresql",
    ] {
        root.dir(d, 0o755)?;
    }
    root.finish(
        out_dir,
        "postgres",
        ImageConfig {
            entrypoint: vec![POSTGRES_ENTRYPOINT_PATH.into()],
            cmd: vec!["postgres".into()],
            env: vec![
                format!("PATH={}:/usr/local/bin:/usr/bin:/bin", bin.display()),
                "PGDATA=/var/lib/postgresql/data".into(),
            ],
            user: Some(format!("{SERVICE_UID}:{SERVICE_UID}")),
            ..ImageConfig::default()
        },
    )
}

fn is_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Runs `cmd` (stdin closed, C locale) and returns its stdout; a failure
/// names the command and its stderr.
fn run(cmd: &mut Command) -> Result<String, TestkitError> {
    let what = format!("{cmd:?}");
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {what}")))?;
    if !out.status.success() {
        return Err(TestkitError::Other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An image's root filesystem being collected.
struct Rootfs {
    image: String,
    entries: BTreeMap<String, LayerEntry>,
}

impl Rootfs {
    fn new(image: &str) -> Rootfs {
        Rootfs {
            image: image.to_string(),
            entries: BTreeMap::new(),
        }
    }

    fn insert(&mut self, e: LayerEntry) -> Result<(), TestkitError> {
        let path = e.path().to_string();
        match self.entries.get(&path) {
            Some(prev) if *prev != e => Err(TestkitError::Other(format!(
                "image {}: {path} would be both {prev:?} and {e:?}",
                self.image
            ))),
            Some(_) => Ok(()),
            None => {
                self.entries.insert(path, e);
                Ok(())
            }
        }
    }

    fn data(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), TestkitError> {
        self.insert(LayerEntry::Data {
            path: path.into(),
            data,
            mode,
        })
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<(), TestkitError> {
        self.insert(LayerEntry::Dir {
            path: path.into(),
            mode,
        })
    }

    /// What every image has: `/etc/passwd` and `/etc/group` with root and
    /// `users`, `/etc/nsswitch.conf`, the CA bundle if this machine has
    /// one, and `/tmp` (the operator mounts an emptyDir there where a
    /// process needs one).
    fn base(&mut self, users: &[(&str, u32)]) -> Result<(), TestkitError> {
        let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
        let mut group = String::from("root:x:0:\n");
        for (name, uid) in users {
            passwd.push_str(&format!(
                "{name}:x:{uid}:{uid}:{name}:/nonexistent:/usr/sbin/nologin\n"
            ));
            group.push_str(&format!("{name}:x:{uid}:\n"));
        }
        self.data("/etc/passwd", passwd.into_bytes(), 0o644)?;
        self.data("/etc/group", group.into_bytes(), 0o644)?;
        self.data(
            "/etc/nsswitch.conf",
            b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
            0o644,
        )?;
        if Path::new(CA_BUNDLE).is_file() {
            self.host(Path::new(CA_BUNDLE))?;
        }
        self.dir("/tmp", 0o1777)
    }

    /// `name` from `bin_dir` as `/usr/local/bin/<name>`.
    fn workspace_binary(&mut self, bin_dir: &Path, name: &str) -> Result<(), TestkitError> {
        let source = bin_dir.join(name);
        if !source.is_file() {
            return Err(TestkitError::Other(format!(
                "image {}: no {name} in {} ({E2E_BIN_DIR_ENV}, else the workspace's target/debug); \
                 build it first: cargo build --bin {name}",
                self.image,
                bin_dir.display()
            )));
        }
        self.insert(LayerEntry::File {
            path: format!("/usr/local/bin/{name}"),
            source,
            mode: 0o755,
        })
    }

    /// The host file `source` (symlinks resolved) at `path` in the image.
    fn host_as(&mut self, source: &Path, path: &str) -> Result<(), TestkitError> {
        let real = fs::canonicalize(source).map_err(io(format!("resolve {}", source.display())))?;
        let meta = fs::metadata(&real).map_err(io(format!("stat {}", real.display())))?;
        self.insert(LayerEntry::File {
            path: path.into(),
            source: real,
            mode: meta.permissions().mode() & 0o755,
        })
    }

    /// Mirrors the host path `path` (absolute) into the image: every
    /// symlink on the way becomes a symlink entry, the file (or directory)
    /// it ends at an entry at its real path. Returns that real path.
    fn host(&mut self, path: &Path) -> Result<PathBuf, TestkitError> {
        if !path.is_absolute() {
            return Err(TestkitError::Other(format!(
                "image {}: host path {} is not absolute",
                self.image,
                path.display()
            )));
        }
        let mut todo: Vec<OsString> = components(path);
        todo.reverse();
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let meta =
                fs::symlink_metadata(&next).map_err(io(format!("stat {}", next.display())))?;
            if !meta.file_type().is_symlink() {
                cur = next;
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(TestkitError::Other(format!(
                    "image {}: too many symlinks resolving {}",
                    self.image,
                    path.display()
                )));
            }
            let target = fs::read_link(&next).map_err(io(format!("read {}", next.display())))?;
            let target_str = target.to_str().ok_or_else(|| {
                TestkitError::Other(format!("{}: target is not UTF-8", next.display()))
            })?;
            self.insert(LayerEntry::Symlink {
                path: utf8(&next)?,
                target: target_str.to_string(),
            })?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            let mut rest = components(&target);
            rest.reverse();
            todo.extend(rest);
        }
        let meta = fs::metadata(&cur).map_err(io(format!("stat {}", cur.display())))?;
        let p = utf8(&cur)?;
        if meta.is_dir() {
            self.dir(&p, 0o755)?;
        } else if meta.is_file() {
            self.insert(LayerEntry::File {
                path: p,
                source: cur.clone(),
                mode: meta.permissions().mode() & 0o755,
            })?;
        } else {
            return Err(TestkitError::Other(format!(
                "image {}: {} is neither a file nor a directory",
                self.image,
                cur.display()
            )));
        }
        Ok(cur)
    }

    /// [`Self::host`] for a directory and everything under it but what
    /// `skip` says.
    fn host_tree(&mut self, dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<(), TestkitError> {
        let real = self.host(dir)?;
        let mut entries: Vec<PathBuf> = fs::read_dir(&real)
            .map_err(io(format!("read {}", real.display())))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(format!("read {}", real.display())))?;
        entries.sort();
        for e in entries {
            if skip(&e) {
                continue;
            }
            let meta = fs::symlink_metadata(&e).map_err(io(format!("stat {}", e.display())))?;
            if meta.is_dir() {
                self.host_tree(&e, skip)?;
            } else {
                self.host(&e)?;
            }
        }
        Ok(())
    }

    /// Adds the shared libraries (and the dynamic loader) every ELF file of
    /// the image needs, as `ldd` finds them on this machine.
    fn elf_closure(&mut self) -> Result<(), TestkitError> {
        let mut done: BTreeSet<PathBuf> = BTreeSet::new();
        loop {
            let todo: Vec<PathBuf> = self
                .entries
                .values()
                .filter_map(|e| match e {
                    LayerEntry::File { source, .. } if !done.contains(source) => {
                        Some(source.clone())
                    }
                    _ => None,
                })
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
            for source in todo {
                if is_elf(&source)? {
                    for lib in ldd(&source)? {
                        self.host(&lib)?;
                    }
                }
                done.insert(source);
            }
        }
    }

    /// Adds the libraries, writes `<out_dir>/<file>.oci.tar`.
    fn finish(
        mut self,
        out_dir: &Path,
        file: &str,
        config: ImageConfig,
    ) -> Result<LocalImage, TestkitError> {
        self.elf_closure()?;
        fs::create_dir_all(out_dir).map_err(io(format!("create {}", out_dir.display())))?;
        let archive = out_dir.join(format!("{file}.oci.tar"));
        let entries: Vec<LayerEntry> = self.entries.into_values().collect();
        write_image(&archive, &self.image, &entries, &config)?;
        Ok(LocalImage {
            name: self.image,
            archive,
        })
    }
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn utf8(p: &Path) -> Result<String, TestkitError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| TestkitError::Other(format!("{}: path is not UTF-8", p.display())))
}

fn is_elf(p: &Path) -> Result<bool, TestkitError> {
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(p).map_err(io(format!("open {}", p.display())))?;
    let n = f
        .read(&mut magic)
        .map_err(io(format!("read {}", p.display())))?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

/// The absolute paths `ldd` prints for `elf`: its libraries (transitively)
/// and its loader; nothing for a static one. A library ldd cannot find is
/// an error.
fn ldd(elf: &Path) -> Result<Vec<PathBuf>, TestkitError> {
    let out = Command::new("ldd")
        .arg(elf)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(io("run ldd (libc-bin) to find shared libraries"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if text.contains("statically linked") || err.contains("not a dynamic executable") {
            return Ok(vec![]);
        }
        return Err(TestkitError::Other(format!(
            "ldd {} failed ({}): {}",
            elf.display(),
            out.status,
            err.trim()
        )));
    }
    let mut libs = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(TestkitError::Other(format!(
                "{} needs {line}: install its package",
                elf.display()
            )));
        }
        // "libc.so.6 => /lib/…/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line.split_once("=> ").map_or(line, |(_, p)| p);
        if path.starts_with('/')
            && let Some(p) = path.split_whitespace().next()
        {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}
