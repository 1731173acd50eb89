//! Copying the base interpreter into an image: the executable, libpython and
//! the standard library (without its tests and site-packages), world-readable.

use super::*;

/// Copy the interpreter executable, its libpython (when dynamically linked)
/// and its standard library into `dest`, laid out so CPython's getpath finds
/// the standard library by location (`<dest>/<platlibdir>/pythonX.Y/os.py`).
pub(super) fn copy_interpreter(interpreter: &Interpreter, dest: &Path) -> Result<(), ImageError> {
    let bin = dest.join("bin");
    fs::create_dir_all(&bin).map_err(ImageError::io("create", &bin))?;
    copy_file(
        &interpreter.executable,
        &bin.join(interpreter.binary_name()),
    )?;

    if let Some(libpython) = &interpreter.libpython {
        let lib = dest.join("lib");
        fs::create_dir_all(&lib).map_err(ImageError::io("create", &lib))?;
        copy_file(libpython, &lib.join(interpreter.libpython_name(libpython)))?;
    }

    let stdlib = interpreter.stdlib_dest(dest);
    copy_tree(&interpreter.stdlib, &stdlib, true)?;
    let dynload = stdlib.join("lib-dynload");
    if !dynload.exists() {
        if let Some(source) = &interpreter.dynload {
            copy_tree(source, &dynload, false)?;
        }
    }
    if !stdlib.join("os.py").is_file() {
        return Err(ImageError::UnsupportedInterpreter {
            python: interpreter.requested.clone(),
            reason: format!(
                "its standard library {} has no os.py",
                interpreter.stdlib.display()
            ),
        });
    }
    Ok(())
}

/// Recursive copy that follows symlinks (the image must not point back into
/// the host) and skips dangling ones. At the top of a standard library it
/// leaves out installed packages, the test suite and the static build files.
pub(super) fn copy_tree(from: &Path, to: &Path, stdlib_top: bool) -> Result<(), ImageError> {
    fs::create_dir_all(to).map_err(ImageError::io("create", to))?;
    for entry in fs::read_dir(from).map_err(ImageError::io("read", from))? {
        let entry = entry.map_err(ImageError::io("read", from))?;
        let name = entry.file_name();
        if stdlib_top && skip_in_stdlib(&name) {
            continue;
        }
        let source = entry.path();
        let Ok(meta) = fs::metadata(&source) else {
            continue; // dangling symlink, e.g. Debian's sitecustomize.py into /etc
        };
        let target = to.join(&name);
        if meta.is_dir() {
            copy_tree(&source, &target, false)?;
        } else if meta.is_file() {
            copy_file(&source, &target)?;
        }
    }
    Ok(())
}

pub(super) fn skip_in_stdlib(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    // site-packages/dist-packages: the base's own packages do not belong in the
    // jail; test: 100+ MB never imported; config-X.Y-*: libpython.a and the
    // Makefile, only needed to compile extensions, which an image never does.
    matches!(name.as_ref(), "site-packages" | "dist-packages" | "test")
        || name.starts_with("config-")
}

/// Copy a file's contents and keep its mtime: a copied `.pyc` stays valid only
/// while its source has the mtime recorded in it.
pub(super) fn copy_file(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::copy(from, to).map_err(ImageError::io("copy", from))?;
    let modified = fs::metadata(from)
        .and_then(|meta| meta.modified())
        .map_err(ImageError::io("inspect", from))?;
    File::options()
        .write(true)
        .open(to)
        .and_then(|file| file.set_modified(modified))
        .map_err(ImageError::io("set mtime of", to))?;
    Ok(())
}

/// Directories 0755, executables 0755, other files 0644: the jail reads the
/// image as uid 65534. Symlinks have no mode of their own.
pub(super) fn make_world_readable(dir: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(dir).map_err(ImageError::io("inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        set_mode(dir, 0o755)?;
        for entry in fs::read_dir(dir).map_err(ImageError::io("read", dir))? {
            let entry = entry.map_err(ImageError::io("read", dir))?;
            make_world_readable(&entry.path())?;
        }
    } else {
        let executable = meta.permissions().mode() & 0o111 != 0;
        set_mode(dir, if executable { 0o755 } else { 0o644 })?;
    }
    Ok(())
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("chmod", path))
}

/// `<python>/<platlibdir>/pythonX.Y`, whichever platlibdir the copy used.
pub(super) fn stdlib_dir_in(python_dir: &Path) -> Option<PathBuf> {
    for libdir in ["lib", "lib64"] {
        let Ok(entries) = fs::read_dir(python_dir.join(libdir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().join("os.py").is_file() {
                return Some(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdlib_copy_leaves_out_packages_and_tests() {
        for skipped in [
            "site-packages",
            "dist-packages",
            "test",
            "config-3.11-x86_64-linux-gnu",
        ] {
            assert!(skip_in_stdlib(OsStr::new(skipped)), "{skipped}");
        }
        for kept in ["os.py", "lib-dynload", "ensurepip", "encodings", "unittest"] {
            assert!(!skip_in_stdlib(OsStr::new(kept)), "{kept}");
        }
    }
}
