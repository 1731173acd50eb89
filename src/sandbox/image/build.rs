//! Building an image: copy the interpreter, create the virtual environment,
//! install the pinned requirements, verify the result, mark it ready.

use super::*;

/// Build the image for `spec` (unless it exists and `force` is false), holding
/// the key's lock for the whole build.
pub fn build(
    spec: &ImageSpec,
    progress: &dyn ImageProgress,
    force: bool,
) -> Result<Image, ImageError> {
    if let Some(dir) = &spec.prebuilt {
        return Err(ImageError::Prebuilt {
            path: dir.clone(),
            reason: "it is used as is and never built; unset CSV_AGENT_IMAGE to build an image"
                .to_string(),
        });
    }
    let interpreter = describe_interpreter(&spec.python)?;
    let key = image_key(REQUIREMENTS, &interpreter.key_material());
    let images = spec.images_dir();
    fs::create_dir_all(&images).map_err(ImageError::io("create", &images))?;
    let root = images.join(&key);

    let lock_path = images.join(format!("{key}.lock"));
    let lock = lock_file(&lock_path)?;
    if !force {
        if let Some(image) = read_ready(&root, &key) {
            // Another process built it while we waited for the lock.
            return Ok(image);
        }
    }
    remove_stale_partials(&images, &key);
    progress.step(&format!(
        "building sandbox image {key} from {} (Python {})",
        interpreter.executable.display(),
        interpreter.python_version
    ));

    let partial = images.join(format!("{key}.partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(ImageError::io("remove", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(ImageError::io("create", &partial))?;
    let built = build_into(&interpreter, &partial, &root, progress);
    if let Err(err) = built {
        // A failed build leaves nothing that could be mistaken for an image.
        let _ = fs::remove_dir_all(&partial);
        return Err(err);
    }

    if root.exists() {
        // Forced rebuild, or the remains of a build killed after its rename.
        // Move it aside first so the swap below is a single rename.
        let old = images.join(format!("{key}.partial-{}-old", std::process::id()));
        fs::rename(&root, &old).map_err(ImageError::io("move aside", &root))?;
        let _ = fs::remove_dir_all(&old);
    }
    fs::rename(&partial, &root).map_err(ImageError::io("rename into place", &partial))?;

    let image = Image {
        key: key.clone(),
        root: root.clone(),
        python: root.join("venv").join("bin").join("python"),
        env: interpreter.image_env(&root),
        python_version: interpreter.python_version.clone(),
    };
    // Verify at the final path: that is the path the jail uses.
    if let Err(err) = verify(&image, progress) {
        let _ = fs::remove_dir_all(&root);
        return Err(err);
    }
    write_ready(&image, &interpreter)?;
    progress.step(&format!("sandbox image ready at {}", root.display()));
    drop(lock);
    Ok(image)
}

/// The steps of a build, into `partial`, of the image that will live at `root`.
pub(super) fn build_into(
    interpreter: &Interpreter,
    partial: &Path,
    root: &Path,
    progress: &dyn ImageProgress,
) -> Result<(), ImageError> {
    progress.step("copying the interpreter");
    copy_interpreter(interpreter, &partial.join("python"))?;
    let env = build_env(&interpreter.image_env(partial));
    let python = partial
        .join("python")
        .join("bin")
        .join(interpreter.binary_name());

    // Precompile what the base did not ship compiled: inside the jail the image
    // is read-only, so a missing .pyc would be recompiled by every zygote.
    // Best effort (a stray unparsable file in the stdlib must not fail the build).
    progress.step("compiling the standard library");
    let stdlib = interpreter.stdlib_dest(&partial.join("python"));
    let mut compile = Command::new(&python);
    compile
        // `-W ignore`: the stdlib's own test data warns about odd syntax.
        .args(["-I", "-W", "ignore", "-m", "compileall", "-qq", "-j0"])
        .arg(&stdlib);
    let _ = run_streaming(&mut compile, &env, progress);

    progress.step("creating virtual environment");
    let venv = partial.join("venv");
    let mut create = Command::new(&python);
    create.args(["-I", "-m", "venv"]).arg(&venv);
    run_checked(
        "creating the virtual environment",
        &mut create,
        &env,
        root,
        progress,
    )?;

    let requirements = partial.join("requirements.txt");
    fs::write(&requirements, REQUIREMENTS).map_err(ImageError::io("write", &requirements))?;
    progress.step("installing packages");
    let venv_python = venv.join("bin").join("python");
    let mut install = Command::new(&venv_python);
    install
        .args(["-I", "-m", "pip", "install"])
        // Wheels only: an image build never compiles, so it cannot half-work
        // depending on which compilers and headers a host has. `--no-deps`
        // makes requirements.txt the whole truth: nothing unpinned slips in.
        .args([
            "--only-binary=:all:",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(&requirements);
    run_checked("pip install", &mut install, &env, root, progress)?;

    progress.step("checking package dependencies");
    let mut check = Command::new(&venv_python);
    check.args(["-I", "-m", "pip", "check", "--disable-pip-version-check"]);
    run_checked(
        "pip check (is a dependency missing from sandbox-image/requirements.txt?)",
        &mut check,
        &env,
        root,
        progress,
    )?;

    progress.step("relocating the virtual environment");
    relocate(partial, partial, root)?;
    progress.step("making the image world-readable");
    make_world_readable(partial)?;
    Ok(())
}

/// Check the image at its final path: the data stack imports with an empty
/// environment, nothing on `sys.path` or among the loaded libraries lies
/// outside the image and the system library directories, and the venv's
/// `home` is the image's own interpreter.
pub(super) fn verify(image: &Image, progress: &dyn ImageProgress) -> Result<(), ImageError> {
    progress.step("verifying the image");
    let fail = |reason: String| ImageError::Verification {
        root: image.root.clone(),
        reason,
    };

    let home = venv_home(&image.root).map_err(&fail)?;
    let own_bin = image.root.join("python").join("bin");
    if home != own_bin {
        return Err(fail(format!(
            "pyvenv.cfg home is {} instead of {}",
            home.display(),
            own_bin.display()
        )));
    }

    let script = format!(
        "import json, sys\nimport {VERIFY_IMPORTS}\n\
         print(json.dumps({{'versions': {{m.__name__: m.__version__ for m in (pandas, numpy, scipy, sklearn, statsmodels)}},\
         'prefix': sys.prefix, 'base_prefix': sys.base_prefix, 'path': sys.path}}))"
    );
    let output = Command::new(&image.python)
        .args(["-I", "-c", &script])
        .env_clear()
        .envs(image.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&image.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            command: format!("{} -I -c <verify>", image.python.display()),
            source,
        })?;
    if !output.status.success() {
        return Err(fail(format!(
            "`import {VERIFY_IMPORTS}` failed ({}): {}",
            describe_status(output.status),
            last_lines(&String::from_utf8_lossy(&output.stderr), TAIL_LINES)
        )));
    }
    let report: VerifyReport = serde_json::from_slice(&output.stdout).map_err(|err| {
        fail(format!(
            "unexpected output of the import check ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        ))
    })?;
    let mut versions: Vec<_> = report.versions.iter().collect();
    versions.sort();
    for (name, version) in versions {
        progress.line(&format!("{name} {version}"));
    }
    for entry in std::iter::once(&report.prefix)
        .chain(std::iter::once(&report.base_prefix))
        .chain(report.path.iter())
    {
        if !Path::new(entry).starts_with(&image.root) {
            return Err(fail(format!(
                "the interpreter reads `{entry}`, which is outside the image"
            )));
        }
    }

    let mut binaries = vec![image
        .root
        .join("python")
        .join("bin")
        .join(python_binary(&image.python_version))];
    let dynload = stdlib_dir_in(&image.root.join("python")).map(|dir| dir.join("lib-dynload"));
    if let Some(dynload) = dynload.filter(|dir| dir.is_dir()) {
        let entries = fs::read_dir(&dynload).map_err(ImageError::io("read", &dynload))?;
        for entry in entries.flatten() {
            if entry.path().extension() == Some(OsStr::new("so")) {
                binaries.push(entry.path());
            }
        }
    }
    for binary in binaries {
        let output = match Command::new("ldd")
            .arg(&binary)
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) => output,
            // No ldd on this host: the import check above is the only check.
            Err(err) if err.kind() == io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(ImageError::Spawn {
                    command: format!("ldd {}", binary.display()),
                    source,
                })
            }
        };
        let listing = String::from_utf8_lossy(&output.stdout);
        if let Some(library) = foreign_libraries(&listing, &image.root).first() {
            return Err(fail(format!(
                "{} loads {library}, which the jail does not provide",
                binary.display()
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct VerifyReport {
    pub(super) versions: HashMap<String, String>,
    pub(super) prefix: String,
    pub(super) base_prefix: String,
    pub(super) path: Vec<String>,
}

/// Libraries in `ldd` output that resolve neither into the image nor into the
/// system library directories, or do not resolve at all.
pub(super) fn foreign_libraries(ldd_output: &str, root: &Path) -> Vec<String> {
    let mut foreign = Vec::new();
    for line in ldd_output.lines() {
        let line = line.trim();
        let resolved = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            // `/lib64/ld-linux-x86-64.so.2 (0x…)` or the vdso, which has no file.
            None => line,
        };
        if resolved.starts_with("not found") {
            foreign.push(line.to_string());
            continue;
        }
        let path = resolved.split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            continue; // linux-vdso.so.1, "statically linked"
        }
        let inside = Path::new(path).starts_with(root)
            || SYSTEM_LIBRARY_DIRS.iter().any(|dir| path.starts_with(dir));
        if !inside {
            foreign.push(path.to_string());
        }
    }
    foreign
}

/// The environment of every build subprocess: nothing of the caller's Python
/// set-up leaks in (`PYTHONPATH`, `VIRTUAL_ENV`, …), but pip keeps its
/// configuration (`PIP_*`, config files found through `HOME`/`XDG_CONFIG_HOME`,
/// certificates, proxies) so offline mirrors and find-links still work.
pub(super) fn build_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    const KEEP: &[&str] = &[
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        // Only so a pyenv shim given as the interpreter resolves as in the
        // caller's shell; Python itself ignores them.
        "PYENV_ROOT",
        "PYENV_VERSION",
    ];
    // These would redirect the install out of the venv.
    const DROP_PIP: &[&str] = &["PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"];
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| {
            KEEP.contains(&name.as_str())
                || (name.starts_with("PIP_") && !DROP_PIP.contains(&name.as_str()))
        })
        .collect();
    env.extend(extra.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_libraries_outside_the_jail_are_foreign() {
        let root = Path::new("/cache/images/abc");
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibpython3.11.so.1.0 => /cache/images/abc/python/lib/libpython3.11.so.1.0 (0x1)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x2)\n\
            \tlibssl.so.3 => /root/.pyenv/versions/3.11.7/lib/libssl.so.3 (0x3)\n\
            \tlibffi.so.8 => not found\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x4)\n";
        assert_eq!(
            foreign_libraries(ldd, root),
            vec![
                "/root/.pyenv/versions/3.11.7/lib/libssl.so.3".to_string(),
                "libffi.so.8 => not found".to_string()
            ]
        );
        assert!(foreign_libraries("\tstatically linked\n", root).is_empty());
    }
}
