//! The bundled datasets, compiled into the binary (build.rs embeds
//! `datasets/<slug>/data.csv` and `meta.json`), so that an installed
//! `csv-agent` with no source tree next to it still has a registry.
//!
//! The zygote opens a dataset by path, so the embedded registry is written
//! out once into `<cache>/datasets/<key>/`, where the key hashes every
//! embedded byte: the same binary always finds its own copy, a new binary
//! with other data gets another folder, and a file never changes under a
//! running jail. The bytes are exactly those of the checkout, so the dataset
//! hashes (and with them question and episode ids) are the same as a run
//! from the checkout.
//!
//! This module never touches a registry the user chose.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{DatasetError, DATA_FILE, META_FILE};

include!(concat!(env!("OUT_DIR"), "/datasets.rs"));

/// Marks a fully written copy; a folder without it is from a crashed writer.
const COMPLETE: &str = ".complete";

/// The slugs of the bundled datasets, in name order.
pub fn slugs() -> Vec<&'static str> {
    BUNDLED_DATASETS.iter().map(|(slug, _, _)| *slug).collect()
}

/// First 16 hex digits of sha256 over every slug, data file and meta file.
pub fn key() -> String {
    let mut hasher = Sha256::new();
    for (slug, data, meta) in BUNDLED_DATASETS {
        for part in [slug.as_bytes(), data, meta] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    let mut key = hex::encode(hasher.finalize().as_slice());
    key.truncate(16);
    key
}

/// The embedded registry under `cache_dir`, written there on first use.
/// Safe against concurrent callers: each writes a private folder and renames
/// it into place; the loser of the race removes its own copy.
pub fn materialize(cache_dir: &Path) -> Result<PathBuf, DatasetError> {
    let parent = cache_dir.join("datasets");
    let root = parent.join(key());
    if root.join(COMPLETE).is_file() {
        return Ok(root);
    }
    fs::create_dir_all(&parent).map_err(super::io("creating", &parent))?;
    let staging = parent.join(format!(".writing-{}-{}", key(), std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let written = write_all(&staging);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    match fs::rename(&staging, &root) {
        Ok(()) => {}
        // Another process finished first: its copy holds the same bytes.
        Err(_) if root.join(COMPLETE).is_file() => {
            let _ = fs::remove_dir_all(&staging);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            // A leftover without the marker (a writer killed between
            // rename and marker cannot happen: the marker is written
            // before the rename), so anything else is a real error.
            return Err(super::io("moving into place", &root)(e));
        }
    }
    Ok(root)
}

fn write_all(staging: &Path) -> Result<(), DatasetError> {
    fs::create_dir_all(staging).map_err(super::io("creating", staging))?;
    super::set_mode(staging, 0o755)?;
    for (slug, data, meta) in BUNDLED_DATASETS {
        let dir = staging.join(slug);
        fs::create_dir_all(&dir).map_err(super::io("creating", &dir))?;
        super::set_mode(&dir, 0o755)?;
        let csv = dir.join(DATA_FILE);
        fs::write(&csv, data).map_err(super::io("writing", &csv))?;
        // The jail user (65534 under a root supervisor) reads it by mode bits.
        super::set_mode(&csv, 0o644)?;
        if !meta.is_empty() {
            let path = dir.join(META_FILE);
            fs::write(&path, meta).map_err(super::io("writing", &path))?;
            super::set_mode(&path, 0o644)?;
        }
    }
    let marker = staging.join(COMPLETE);
    fs::write(&marker, key()).map_err(super::io("writing", &marker))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_bytes_are_the_checkouts() {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
        assert!(!BUNDLED_DATASETS.is_empty());
        for (slug, data, meta) in BUNDLED_DATASETS {
            let on_disk = fs::read(checkout.join(slug).join(DATA_FILE)).expect("read");
            assert_eq!(&on_disk[..], *data, "{slug}");
            let on_disk = fs::read(checkout.join(slug).join(META_FILE)).expect("read");
            assert_eq!(&on_disk[..], *meta, "{slug}");
        }
    }

    #[test]
    fn materialized_once_and_complete() {
        let cache = tempfile::tempdir().expect("tempdir");
        let root = materialize(cache.path()).expect("materialize");
        assert!(root.join(COMPLETE).is_file());
        let again = materialize(cache.path()).expect("again");
        assert_eq!(root, again);
        let registry = super::super::Registry::open(&root).expect("open");
        let listed: Vec<String> = registry
            .list()
            .expect("list")
            .into_iter()
            .map(|d| d.slug)
            .collect();
        assert_eq!(listed, slugs());
        // Nothing left from the writer.
        let names: Vec<_> = fs::read_dir(cache.path().join("datasets"))
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
