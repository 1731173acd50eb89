//! Relocating an image: a prebuilt image moved to another path has its
//! virtual environment's absolute paths rewritten.

use super::*;

/// Rewrite the absolute paths a virtual environment records about itself
/// (`pyvenv.cfg`, the symlinks and scripts in `venv/bin`) from `from` to `to`,
/// for an image whose files currently sit in `dir`. Builds use it to move an
/// image from its partial directory to its final one; it also makes a copy of
/// an image usable at another path. Files are replaced, not edited in place,
/// so a hard-linked copy never changes the image it was linked from.
pub fn relocate(dir: &Path, from: &Path, to: &Path) -> Result<(), ImageError> {
    let from_s = from.to_string_lossy().into_owned();
    let to_s = to.to_string_lossy().into_owned();
    let venv = dir.join("venv");
    let mut files = vec![venv.join("pyvenv.cfg")];
    let bin = venv.join("bin");
    for entry in fs::read_dir(&bin).map_err(ImageError::io("read", &bin))? {
        let entry = entry.map_err(ImageError::io("read", &bin))?;
        files.push(entry.path());
    }
    for path in files {
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io("inspect", &path))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io("read link", &path))?;
            let target_s = target.to_string_lossy();
            if target_s.contains(from_s.as_str()) {
                let new_target = target_s.replace(from_s.as_str(), &to_s);
                fs::remove_file(&path).map_err(ImageError::io("replace link", &path))?;
                symlink(&new_target, &path).map_err(ImageError::io("create link", &path))?;
            }
        } else if meta.is_file() && meta.len() < (1 << 20) {
            let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
            // Only text files can hold a path we know how to rewrite.
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if !text.contains(from_s.as_str()) {
                continue;
            }
            let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
            tmp_name.push(".relocate-tmp");
            let tmp = path.with_file_name(tmp_name);
            fs::write(&tmp, text.replace(from_s.as_str(), &to_s))
                .map_err(ImageError::io("write", &tmp))?;
            fs::set_permissions(&tmp, meta.permissions()).map_err(ImageError::io("chmod", &tmp))?;
            fs::rename(&tmp, &path).map_err(ImageError::io("replace", &path))?;
        }
    }
    Ok(())
}

/// `home` from the image's `venv/pyvenv.cfg`.
pub(super) fn venv_home(root: &Path) -> Result<PathBuf, String> {
    let cfg_path = root.join("venv").join("pyvenv.cfg");
    let cfg = fs::read_to_string(&cfg_path)
        .map_err(|err| format!("cannot read {}: {err}", cfg_path.display()))?;
    cfg.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "home")
        .map(|(_, value)| PathBuf::from(value.trim()))
        .ok_or_else(|| format!("{} has no home", cfg_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocate_rewrites_venv_paths_without_touching_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("k.partial-1");
        let bin = image.join("venv").join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        let from = image.clone();
        let to = dir.path().join("k");
        let cfg = image.join("venv").join("pyvenv.cfg");
        fs::write(&cfg, format!("home = {}/python/bin\n", from.display())).expect("write");
        let script = bin.join("pip");
        fs::write(&script, format!("#!{}/venv/bin/python\n", from.display())).expect("write");
        let linked = dir.path().join("linked-pip");
        fs::hard_link(&script, &linked).expect("hard link");
        symlink(from.join("python/bin/python3.11"), bin.join("python3.11")).expect("symlink");
        fs::write(bin.join("blob"), [0xff, 0xfe, 0x00]).expect("write");

        relocate(&image, &from, &to).expect("relocate");

        let home = fs::read_to_string(&cfg).expect("read");
        assert_eq!(home, format!("home = {}/python/bin\n", to.display()));
        let pip = fs::read_to_string(&script).expect("read");
        assert!(pip.starts_with(&format!("#!{}/venv/bin/python", to.display())));
        let original = fs::read_to_string(&linked).expect("read");
        assert!(
            original.contains(&from.display().to_string()),
            "hard link was edited"
        );
        assert_eq!(
            fs::read_link(bin.join("python3.11")).expect("readlink"),
            to.join("python/bin/python3.11")
        );
        assert_eq!(
            fs::read(bin.join("blob")).expect("read"),
            vec![0xff, 0xfe, 0x00]
        );
    }
}
