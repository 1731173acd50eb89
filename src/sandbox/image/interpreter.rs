//! Interpreter discovery: which Python builds the image, its version,
//! prefix and shared library, and the environment it runs with.

use super::*;

/// `python3.11` for `3.11.7`.
pub(super) fn python_binary(python_version: &str) -> String {
    let xy: Vec<&str> = python_version.split('.').take(2).collect();
    format!("python{}", xy.join("."))
}

/// What the base interpreter says about itself.
#[derive(Debug, Clone)]
pub(super) struct Interpreter {
    /// What the caller asked for (`python3`, a shim, a venv's python…).
    pub(super) requested: PathBuf,
    /// The real executable, symlinks and shims resolved.
    pub(super) executable: PathBuf,
    /// `sys.version`: includes the build, so two builds of 3.11.7 differ.
    pub(super) version: String,
    /// `3.11.7`
    pub(super) python_version: String,
    /// `3.11`
    pub(super) xy: String,
    pub(super) platform: String,
    pub(super) machine: String,
    /// `lib` or `lib64` (`sys.platlibdir`), the directory getpath searches.
    pub(super) platlibdir: String,
    pub(super) stdlib: PathBuf,
    pub(super) dynload: Option<PathBuf>,
    /// The libpython the running interpreter mapped, if it is dynamically linked.
    pub(super) libpython: Option<PathBuf>,
    /// `INSTSONAME`: the name the executable's DT_NEEDED asks for.
    pub(super) instsoname: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct InterpreterReport {
    pub(super) implementation: String,
    pub(super) executable: String,
    pub(super) version: String,
    pub(super) python_version: String,
    pub(super) xy: String,
    pub(super) platform: String,
    pub(super) machine: String,
    pub(super) platlibdir: String,
    pub(super) stdlib: String,
    pub(super) dynload: Option<String>,
    pub(super) libpython: Option<String>,
    pub(super) instsoname: Option<String>,
}

/// Asks the interpreter rather than guessing from paths: `python3` may be a
/// pyenv shim (a shell script), a symlink chain, or a venv's python.
/// libpython is read from /proc/self/maps because sysconfig's
/// `Py_ENABLE_SHARED` is 1 on Debian even though its python3.11 is static.
pub(super) const DESCRIBE_SCRIPT: &str = r#"
import json, os, platform, sys, sysconfig
libpython = None
try:
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libpython"):
                libpython = parts[5].strip()
                break
except OSError:
    pass
dynload = [p for p in sys.path if os.path.basename(p) == "lib-dynload"]
print(json.dumps({
    "implementation": sys.implementation.name,
    "executable": os.path.realpath(sys.executable),
    "version": sys.version,
    "python_version": platform.python_version(),
    "xy": "%d.%d" % sys.version_info[:2],
    "platform": sys.platform,
    "machine": platform.machine(),
    "platlibdir": getattr(sys, "platlibdir", "lib"),
    "stdlib": sysconfig.get_path("stdlib"),
    "dynload": dynload[0] if dynload else sysconfig.get_config_var("DESTSHARED"),
    "libpython": libpython,
    "instsoname": sysconfig.get_config_var("INSTSONAME"),
}))
"#;

pub(super) fn describe_interpreter(python: &Path) -> Result<Interpreter, ImageError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Interpreter>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(found) = cache.lock().ok().and_then(|map| map.get(python).cloned()) {
        return Ok(found);
    }
    let described = query_interpreter(python)?;
    if let Ok(mut map) = cache.lock() {
        map.insert(python.to_path_buf(), described.clone());
    }
    Ok(described)
}

pub(super) fn query_interpreter(python: &Path) -> Result<Interpreter, ImageError> {
    let output = Command::new(python)
        .args(["-I", "-c", DESCRIBE_SCRIPT])
        .env_clear()
        .envs(build_env(&[]))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ImageError::InterpreterNotFound {
                    python: python.to_path_buf(),
                }
            } else {
                ImageError::Spawn {
                    command: python.display().to_string(),
                    source,
                }
            }
        })?;
    if !output.status.success() {
        return Err(ImageError::InterpreterFailed {
            python: python.to_path_buf(),
            status: describe_status(output.status),
            stderr: match last_lines(&String::from_utf8_lossy(&output.stderr), 10) {
                text if text.trim().is_empty() => "no error output".to_string(),
                text => text,
            },
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let report: InterpreterReport =
        serde_json::from_str(text.trim()).map_err(|source| ImageError::InterpreterOutput {
            python: python.to_path_buf(),
            output: text.trim().to_string(),
            source,
        })?;
    let unsupported = |reason: String| ImageError::UnsupportedInterpreter {
        python: python.to_path_buf(),
        reason,
    };
    if report.implementation != "cpython" {
        return Err(unsupported(format!(
            "it is {}, and the image layout follows CPython's",
            report.implementation
        )));
    }
    if report.platform != "linux" {
        return Err(unsupported(format!(
            "it runs on {}, not linux",
            report.platform
        )));
    }
    let stdlib = PathBuf::from(&report.stdlib);
    if !stdlib.join("os.py").is_file() {
        return Err(unsupported(format!(
            "its standard library {} has no os.py",
            stdlib.display()
        )));
    }
    Ok(Interpreter {
        requested: python.to_path_buf(),
        executable: PathBuf::from(report.executable),
        version: report.version,
        python_version: report.python_version,
        xy: report.xy,
        platform: report.platform,
        machine: report.machine,
        platlibdir: report.platlibdir,
        stdlib,
        dynload: report.dynload.map(PathBuf::from),
        libpython: report.libpython.map(PathBuf::from),
        instsoname: report.instsoname.filter(|name| !name.is_empty()),
    })
}

impl Interpreter {
    /// The interpreter half of the image key.
    pub(super) fn key_material(&self) -> String {
        format!("{} {}/{}", self.version, self.platform, self.machine)
    }

    pub(super) fn binary_name(&self) -> String {
        format!("python{}", self.xy)
    }

    pub(super) fn stdlib_dest(&self, python_dir: &Path) -> PathBuf {
        python_dir
            .join(&self.platlibdir)
            .join(format!("python{}", self.xy))
    }

    /// The file name the copied libpython must have: the SONAME the executable
    /// asks for, not whatever the symlink chain resolved to.
    pub(super) fn libpython_name(&self, mapped: &Path) -> String {
        match &self.instsoname {
            Some(name) if name.starts_with("libpython") => name.clone(),
            _ => mapped
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("libpython{}.so.1.0", self.xy)),
        }
    }

    /// The environment the image's interpreter needs at `root`. A dynamically
    /// linked interpreter's RUNPATH points at the host prefix (pyenv:
    /// `/root/.pyenv/versions/X/lib`), unreadable in the jail, and
    /// LD_LIBRARY_PATH is searched before RUNPATH.
    pub(super) fn image_env(&self, root: &Path) -> Vec<(String, String)> {
        image_env(root, self.libpython.is_some())
    }
}

pub(super) fn image_env(root: &Path, library_path: bool) -> Vec<(String, String)> {
    if !library_path {
        return Vec::new();
    }
    vec![(
        "LD_LIBRARY_PATH".to_string(),
        root.join("python").join("lib").display().to_string(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_binary_names_major_minor() {
        assert_eq!(python_binary("3.11.7"), "python3.11");
        assert_eq!(python_binary("3.12.0rc1"), "python3.12");
    }
}
