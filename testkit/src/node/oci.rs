//! OCI image archives made from local files, without a registry or a base
//! image: one uncompressed layer holding the given files, a config naming the
//! entrypoint, and an `index.json` carrying the image's name in the
//! annotation `ctr images import` names the image by
//! (`io.containerd.image.name`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{TestkitError, io};

/// One file of the image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Absolute path inside the image, e.g. `/netcheck`.
    pub path: String,
    /// The file to copy there.
    pub source: PathBuf,
    /// Unix mode, e.g. `0o755`.
    pub mode: u32,
}

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

/// A tar header for a regular file or directory, owned by root, mtime 0
/// (so the same files always give the same digests).
fn header(path: &str, size: u64, mode: u32, dir: bool) -> Result<tar::Header, TestkitError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).map_err(tar_err("entry path"))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    Ok(h)
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<(), TestkitError> {
    let h = header(path, data.len() as u64, 0o644, false)?;
    b.append(&h, data).map_err(tar_err("append"))
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
    if files.is_empty() || entrypoint.is_empty() {
        return Err(TestkitError::Other(format!(
            "image {name}: needs at least one file and an entrypoint"
        )));
    }
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");

    // The layer: parent directories, then the files.
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = vec![];
    for f in files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(TestkitError::Other(format!(
                "image {name}: bad path in image '{}'",
                f.path
            )));
        }
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            let d = format!("{}/", parts[..i].join("/"));
            if !dirs.contains(&d) {
                layer
                    .append(&header(&d, 0, 0o755, true)?, std::io::empty())
                    .map_err(tar_err("append directory"))?;
                dirs.push(d);
            }
        }
        let data = fs::read(&f.source).map_err(io(format!("read {}", f.source.display())))?;
        let h = header(rel, data.len() as u64, f.mode, false)?;
        layer
            .append(&h, data.as_slice())
            .map_err(tar_err("append file"))?;
    }
    let layer = layer.into_inner().map_err(tar_err("finish the layer"))?;
    let layer_digest = digest(&layer);

    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/"],
        },
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
            "size": layer.len(),
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

    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append(&mut archive, "index.json", &index)?;
    for blob in [&layer, &config, &manifest] {
        let hex = digest(blob);
        let hex = hex.trim_start_matches("sha256:");
        append(&mut archive, &format!("blobs/sha256/{hex}"), blob)?;
    }
    let archive = archive
        .into_inner()
        .map_err(tar_err("finish the archive"))?;
    fs::write(out, archive).map_err(io(format!("write {}", out.display())))
}
