//! The image cache: the `ready.json` marker of a finished image, the build
//! lock, and the removal of partial builds left by a crash.

use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct Ready {
    pub(super) key: String,
    pub(super) python_version: String,
    pub(super) created_at: u64,
    requirements_sha256: String,
    pub(super) interpreter: String,
    /// Whether the interpreter needs `LD_LIBRARY_PATH=<root>/python/lib`.
    /// Kept as a flag, not a path, so a relocated copy stays correct.
    #[serde(default)]
    pub(super) library_path: bool,
}

pub(super) fn write_ready(image: &Image, interpreter: &Interpreter) -> Result<(), ImageError> {
    let ready = Ready {
        key: image.key.clone(),
        python_version: image.python_version.clone(),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        requirements_sha256: hex::encode(Sha256::digest(REQUIREMENTS.as_bytes()).as_slice()),
        interpreter: interpreter.executable.display().to_string(),
        library_path: !image.env.is_empty(),
    };
    let path = image.root.join(READY_FILE);
    let tmp = image.root.join(format!("{READY_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(&ready).map_err(|err| ImageError::Io {
        action: "serialise",
        path: path.clone(),
        source: io::Error::other(err),
    })?;
    fs::write(&tmp, json).map_err(ImageError::io("write", &tmp))?;
    set_mode(&tmp, 0o644)?;
    // Rename so a reader never sees a half-written ready.json.
    fs::rename(&tmp, &path).map_err(ImageError::io("write", &path))
}

/// The image at `root` if its `ready.json` is there and names `key`. An
/// unreadable or foreign `ready.json` counts as "not ready": the next build
/// replaces the directory.
/// A pre-built image named by `CSV_AGENT_IMAGE`: it must be ready and built
/// from the requirements this binary embeds.
pub(super) fn read_prebuilt(dir: &Path) -> Result<Image, ImageError> {
    let fail = |reason: String| ImageError::Prebuilt {
        path: dir.to_path_buf(),
        reason,
    };
    let bytes = fs::read(dir.join(READY_FILE))
        .map_err(|e| fail(format!("no readable {READY_FILE} ({e}): point it at a folder that `csv-agent image path` printed")))?;
    let ready: Ready = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("{READY_FILE} is not valid: {e}")))?;
    let wanted = hex::encode(Sha256::digest(REQUIREMENTS.as_bytes()).as_slice());
    if ready.requirements_sha256 != wanted {
        return Err(fail(
            "it was built from other requirements than this csv-agent embeds; rebuild it with this version".to_string(),
        ));
    }
    read_ready(dir, &ready.key).ok_or_else(|| fail("its interpreter is missing".to_string()))
}

pub(super) fn read_ready(root: &Path, key: &str) -> Option<Image> {
    let bytes = fs::read(root.join(READY_FILE)).ok()?;
    let ready: Ready = serde_json::from_slice(&bytes).ok()?;
    let python = root.join("venv").join("bin").join("python");
    if ready.key != key || !python.exists() {
        return None;
    }
    Some(Image {
        key: ready.key,
        root: root.to_path_buf(),
        python,
        env: image_env(root, ready.library_path),
        python_version: ready.python_version,
    })
}

pub(super) fn lock_file(path: &Path) -> Result<File, ImageError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ImageError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
    fs2::FileExt::lock_exclusive(&file).map_err(|source| ImageError::Lock {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}

/// Remove partial directories left by killed builds: those of our own key
/// (we hold its lock, so no live build owns them) and those of other keys
/// whose lock is free. Best effort: a leftover only costs disk space.
pub(super) fn remove_stale_partials(images: &Path, own_key: &str) {
    let Ok(entries) = fs::read_dir(images) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((key, _)) = name.split_once(".partial-") else {
            continue;
        };
        if key == own_key {
            let _ = fs::remove_dir_all(entry.path());
            continue;
        }
        let Ok(lock) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(images.join(format!("{key}.lock")))
        else {
            continue;
        };
        if fs2::FileExt::try_lock_exclusive(&lock).is_ok() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
