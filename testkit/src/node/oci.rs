//! OCI image archives made from local files, without a registry or a base
//! image: one uncompressed layer holding the given entries (files, inline
//! data, directories, symlinks), a config (entrypoint, command, env, user,
//! working directory), and an `index.json` carrying the image's name in the
//! annotation `ctr images import` names the image by
//! (`io.containerd.image.name`).
//!
//! Deterministic: every entry is owned by root with mtime 0 and the entries
//! are written in path order, so the same files always give the same
//! digests. The layer is streamed through a temp file next to the archive
//! (images with debug binaries are hundreds of MB).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read as _, Seek as _, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{TestkitError, io};

/// One file of the image (see [`write_image_archive`]).
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Absolute path inside the image, e.g. `/netcheck`.
    pub path: String,
    /// The file to copy there.
    pub source: PathBuf,
    /// Unix mode, e.g. `0o755`.
    pub mode: u32,
}

/// What one path of an image's layer holds (see [`write_image`]). Paths are
/// absolute inside the image; their parent directories are added (mode
/// 0755) unless listed, and must not go through a symlink of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry {
    /// A copy of a file on this machine.
    File {
        path: String,
        source: PathBuf,
        mode: u32,
    },
    /// A file with the given bytes.
    Data {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A directory (e.g. a mount point with its own mode).
    Dir { path: String, mode: u32 },
    /// A symbolic link to `target` (relative or absolute, as on disk).
    Symlink { path: String, target: String },
}

impl LayerEntry {
    /// The entry's absolute path inside the image.
    pub fn path(&self) -> &str {
        match self {
            LayerEntry::File { path, .. }
            | LayerEntry::Data { path, .. }
            | LayerEntry::Dir { path, .. }
            | LayerEntry::Symlink { path, .. } => path,
        }
    }
}

/// The runtime part of an image's config (the OCI config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`; at least one element.
    pub entrypoint: Vec<String>,
    /// `Cmd`: default arguments (a pod's `args` replace them).
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`; without a `PATH=` entry, [`DEFAULT_PATH`] is
    /// added.
    pub env: Vec<String>,
    /// `User`, e.g. `65532:65532`: numeric, so kubelet can check
    /// `runAsNonRoot` without a `runAsUser`.
    pub user: Option<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
}

/// `PATH` of an image whose config sets none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/";

/// The OCI `architecture` of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn tar_err(what: &'static str) -> impl FnOnce(std::io::Error) -> TestkitError {
    io(format!("build an image archive: {what}"))
}

/// A GNU tar header (long paths get a GNU long-name entry), owned by root,
/// mtime 0.
fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h
}

fn append<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> Result<(), TestkitError> {
    let mut h = header(data.len() as u64, 0o644, tar::EntryType::Regular);
    b.append_data(&mut h, path, data).map_err(tar_err("append"))
}

/// A writer that hashes (SHA-256) and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `path` without its leading `/`, checked: no empty, `.` or `..` parts.
fn relative<'a>(name: &str, path: &'a str) -> Result<&'a str, TestkitError> {
    let rel = path.strip_prefix('/').ok_or_else(|| {
        TestkitError::Other(format!(
            "image {name}: path in image '{path}' is not absolute"
        ))
    })?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(TestkitError::Other(format!(
            "image {name}: bad path in image '{path}'"
        )));
    }
    Ok(rel)
}

/// Writes an OCI image layout archive (what `ctr images import` reads) to
/// `out`: image `name` (e.g. `registry.k8s.io/pause:3.10.1`) for this
/// machine's architecture, made of `files`, running `entrypoint`.
pub fn write_image_archive(
    out: &Path,
    name: &str,
    files: &[ImageFile],
    entrypoint: &[&str],
) -> Result<(), TestkitError> {
    if files.is_empty() {
        return Err(TestkitError::Other(format!(
            "image {name}: needs at least one file"
        )));
    }
    let entries: Vec<LayerEntry> = files
        .iter()
        .map(|f| LayerEntry::File {
            path: f.path.clone(),
            source: f.source.clone(),
            mode: f.mode,
        })
        .collect();
    let config = ImageConfig {
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        ..ImageConfig::default()
    };
    write_image(out, name, &entries, &config)
}

/// Writes an OCI image layout archive to `out`: image `name` for this
/// machine's architecture, one layer of `entries` (in path order; the same
/// path twice must be the same entry), run as `config` says.
pub fn write_image(
    out: &Path,
    name: &str,
    entries: &[LayerEntry],
    config: &ImageConfig,
) -> Result<(), TestkitError> {
    if entries.is_empty() || config.entrypoint.is_empty() {
        return Err(TestkitError::Other(format!(
            "image {name}: needs at least one entry and an entrypoint"
        )));
    }
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");

    let mut by_path: BTreeMap<&str, &LayerEntry> = BTreeMap::new();
    for e in entries {
        let rel = relative(name, e.path())?;
        if let Some(prev) = by_path.insert(rel, e)
            && prev != e
        {
            return Err(TestkitError::Other(format!(
                "image {name}: two different entries for {}",
                e.path()
            )));
        }
    }
    for rel in by_path.keys() {
        let mut parent = *rel;
        while let Some((p, _)) = parent.rsplit_once('/') {
            if let Some(LayerEntry::Symlink { .. }) = by_path.get(p) {
                return Err(TestkitError::Other(format!(
                    "image {name}: /{rel} goes through the symlink /{p}; list it under the link's target"
                )));
            }
            parent = p;
        }
    }

    // The layer, streamed to a temp file while hashing it.
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(io(format!("create a temp file in {}", dir.display())))?;
    let mut layer = tar::Builder::new(Hashing {
        inner: BufWriter::new(tmp.reopen().map_err(io("reopen the layer file"))?),
        hash: Sha256::new(),
        len: 0,
    });
    let mut dirs: Vec<String> = vec![];
    let mut add_dir = |layer: &mut tar::Builder<_>, d: &str, mode: u32| {
        if dirs.iter().any(|x| x == d) {
            return Ok(());
        }
        dirs.push(d.to_string());
        let mut h = header(0, mode, tar::EntryType::Directory);
        layer
            .append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(tar_err("append directory"))
    };
    for (rel, e) in &by_path {
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            let mode = match by_path.get(d.as_str()) {
                Some(LayerEntry::Dir { mode, .. }) => *mode,
                Some(_) => {
                    return Err(TestkitError::Other(format!(
                        "image {name}: /{d} is a parent of /{rel} but not a directory"
                    )));
                }
                None => 0o755,
            };
            add_dir(&mut layer, &d, mode)?;
        }
        match e {
            LayerEntry::Dir { mode, .. } => add_dir(&mut layer, rel, *mode)?,
            LayerEntry::Data { data, mode, .. } => {
                let mut h = header(data.len() as u64, *mode, tar::EntryType::Regular);
                layer
                    .append_data(&mut h, rel, data.as_slice())
                    .map_err(tar_err("append data"))?;
            }
            LayerEntry::File { source, mode, .. } => {
                let f = File::open(source).map_err(io(format!("open {}", source.display())))?;
                let len = f
                    .metadata()
                    .map_err(io(format!("stat {}", source.display())))?
                    .len();
                let mut h = header(len, *mode, tar::EntryType::Regular);
                layer
                    .append_data(&mut h, rel, f.take(len))
                    .map_err(io(format!("add {} to the layer", source.display())))?;
            }
            LayerEntry::Symlink { target, .. } => {
                let mut h = header(0, 0o777, tar::EntryType::Symlink);
                layer
                    .append_link(&mut h, rel, target)
                    .map_err(tar_err("append symlink"))?;
            }
        }
    }
    let mut hashing = layer.into_inner().map_err(tar_err("finish the layer"))?;
    hashing.flush().map_err(tar_err("flush the layer"))?;
    let layer_digest = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
    let layer_len = hashing.len;
    drop(hashing.inner);

    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let mut runtime = json!({ "Entrypoint": config.entrypoint, "Env": env });
    if !config.cmd.is_empty() {
        runtime["Cmd"] = json!(config.cmd);
    }
    if let Some(user) = &config.user {
        runtime["User"] = json!(user);
    }
    if let Some(wd) = &config.working_dir {
        runtime["WorkingDir"] = json!(wd);
    }
    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": runtime,
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .map_err(|e| TestkitError::Other(format!("image config JSON: {e}")))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_len,
        }],
    }))
    .map_err(|e| TestkitError::Other(format!("image manifest JSON: {e}")))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .map_err(|e| TestkitError::Other(format!("image index JSON: {e}")))?;

    let file = File::create(out).map_err(io(format!("create {}", out.display())))?;
    let mut archive = tar::Builder::new(BufWriter::new(file));
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append(&mut archive, "index.json", &index)?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut layer_file = tmp.reopen().map_err(io("reopen the layer file"))?;
    layer_file.rewind().map_err(io("rewind the layer file"))?;
    let mut h = header(layer_len, 0o644, tar::EntryType::Regular);
    archive
        .append_data(&mut h, blob(&layer_digest), layer_file.take(layer_len))
        .map_err(tar_err("append the layer"))?;
    append(&mut archive, &blob(&config_digest), &config)?;
    append(&mut archive, &blob(&manifest_digest), &manifest)?;
    archive
        .into_inner()
        .map_err(tar_err("finish the archive"))?
        .flush()
        .map_err(io(format!("write {}", out.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/x".into()],
            ..ImageConfig::default()
        }
    }

    fn data(path: &str, bytes: &[u8]) -> LayerEntry {
        LayerEntry::Data {
            path: path.into(),
            data: bytes.to_vec(),
            mode: 0o644,
        }
    }

    fn refused(entries: &[LayerEntry], want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let err = write_image(&dir.path().join("i.tar"), "t:1", entries, &config())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }

    #[test]
    fn bad_layers_are_refused_with_the_reason() {
        refused(&[data("etc/x", b"")], "not absolute");
        refused(&[data("/etc/../x", b"")], "bad path");
        refused(&[data("/etc//x", b"")], "bad path");
        refused(
            &[data("/etc/x", b"a"), data("/etc/x", b"b")],
            "two different entries",
        );
        let link = LayerEntry::Symlink {
            path: "/lib".into(),
            target: "usr/lib".into(),
        };
        refused(
            &[link, data("/lib/x", b"")],
            "goes through the symlink /lib",
        );
        refused(&[data("/a", b""), data("/a/b", b"")], "not a directory");
        refused(&[], "at least one entry");
    }

    /// The same entries give the same bytes; the layer holds them (parents
    /// first, symlinks as symlinks, modes as given) and the config what
    /// was asked.
    #[test]
    fn an_image_is_deterministic_and_holds_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        // Longer than a ustar header's 100 bytes: a GNU long name.
        let deep = format!("usr/share/{}", "long/".repeat(30));
        let deep = deep.trim_end_matches('/');
        let entries = [
            data(&format!("/{deep}"), b"deep"),
            LayerEntry::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into(),
            },
            LayerEntry::Dir {
                path: "/tmp".into(),
                mode: 0o1777,
            },
            LayerEntry::Data {
                path: "/usr/bin/x".into(),
                data: b"#!/bin/sh\n".to_vec(),
                mode: 0o755,
            },
        ];
        let cfg = ImageConfig {
            entrypoint: vec!["x".into()],
            cmd: vec!["run".into()],
            env: vec!["A=b".into()],
            user: Some("65532:65532".into()),
            working_dir: Some("/tmp".into()),
        };
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        write_image(&a, "t:1", &entries, &cfg).unwrap();
        write_image(&b, "t:1", &entries, &cfg).unwrap();
        let bytes = fs_read(&a);
        assert!(bytes == fs_read(&b), "two writes differ");

        let mut blobs = BTreeMap::new();
        for e in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut content = vec![];
            std::io::Read::read_to_end(&mut e, &mut content).unwrap();
            blobs.insert(path, content);
        }
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let blob = |d: &serde_json::Value| {
            blobs[&format!(
                "blobs/sha256/{}",
                d.as_str().unwrap().trim_start_matches("sha256:")
            )]
                .clone()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(
            config["config"],
            json!({
                "Entrypoint": ["x"],
                "Cmd": ["run"],
                "Env": [format!("PATH={DEFAULT_PATH}"), "A=b"],
                "User": "65532:65532",
                "WorkingDir": "/tmp",
            })
        );
        let layer = blob(&manifest["layers"][0]["digest"]);
        let mut seen = vec![];
        for e in tar::Archive::new(layer.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                link,
            ));
        }
        assert!(seen.iter().all(|(_, _, mtime, _)| *mtime == 0));
        let find = |p: &str| seen.iter().find(|s| s.0 == p).cloned();
        assert_eq!(find("bin").unwrap().3.as_deref(), Some("usr/bin"));
        assert_eq!(find("tmp/").unwrap().1, 0o1777);
        assert_eq!(find("usr/bin/x").unwrap().1, 0o755);
        assert!(find(deep).is_some(), "{seen:?}");
        let pos = |p: &str| seen.iter().position(|s| s.0 == p).unwrap();
        assert!(pos("usr/") < pos("usr/bin/") && pos("usr/bin/") < pos("usr/bin/x"));
    }

    fn fs_read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }
}
