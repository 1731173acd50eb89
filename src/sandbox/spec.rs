//! The jail spec, built without a kernel: [`build`] turns the resolved
//! options and a [`HostView`] into the [`spawn::JailSpec`] the init applies
//! (binds, files, Landlock paths, rlimits, the zygote's argv and environment)
//! and the zygote's configuration. Nothing here starts a process or touches
//! the filesystem except [`HostView::read`].

use std::path::{Path, PathBuf};

use super::{
    landlock, measure, mounts, protocol, rlimits, seccomp, spawn, uids, Image, Limits,
    SandboxError, DATA_DIR, ZYGOTE_PY,
};

/// Open files the zygote may hold (see [`rlimits::RlimitSpec::nofile`](super::rlimits::RlimitSpec::nofile)).
pub(super) const ZYGOTE_NOFILE: u64 = 65_536;

/// Paths the jail mounts or creates itself; nothing of the host may be bound
/// beneath them.
pub(super) const JAIL_OWN_PATHS: &[&str] = &[
    "/tmp", "/scratch", "/dev", "/proc", "/data", "/sandbox", "/etc",
];

pub(super) fn jail_file_name(csv: &Path) -> String {
    let name = csv
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data.csv")
        .to_string();
    let safe = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if safe {
        name
    } else {
        "data.csv".to_string()
    }
}

/// What the jail gets to see of the host: the image, the shared libraries
/// Python and the wheels link against, and the time-zone database.
pub(super) fn system_binds_and_links() -> (Vec<mounts::Bind>, Vec<(PathBuf, PathBuf)>, Vec<PathBuf>)
{
    let mut binds = Vec::new();
    let mut links = Vec::new();
    let mut lib_paths = Vec::new();
    for dir in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib32",
        "/lib",
        "/lib64",
        "/lib32",
    ] {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    links.push((path.to_path_buf(), target));
                }
            }
            Ok(meta) if meta.is_dir() => {
                binds.push(mounts::Bind {
                    source: path.to_path_buf(),
                    target: path.to_path_buf(),
                    writable: false,
                    optional: true,
                    fd: None,
                });
                lib_paths.push(path.to_path_buf());
            }
            _ => {}
        }
    }
    for (source, optional) in [("/usr/share/zoneinfo", true), ("/etc/ld.so.cache", true)] {
        if Path::new(source).exists() {
            binds.push(mounts::Bind {
                source: PathBuf::from(source),
                target: PathBuf::from(source),
                writable: false,
                optional,
                fd: None,
            });
            lib_paths.push(PathBuf::from(source));
        }
    }
    (binds, links, lib_paths)
}

/// An image (or the cache that will hold it) must not lie under a path the
/// jail mounts for itself: it is bound into the jail at its own host path.
pub fn check_image_location(path: &Path) -> Result<(), SandboxError> {
    match JAIL_OWN_PATHS.iter().find(|p| path.starts_with(p)) {
        Some(reserved) => Err(SandboxError::ImageLocation {
            path: path.to_path_buf(),
            reserved,
        }),
        None => Ok(()),
    }
}

/// What the zygote does to each worker before its first cell, beyond its
/// Landlock domain: the uid it switches to and the seccomp filter it adds.
#[derive(Debug, Clone)]
pub(super) struct WorkerSetup {
    pub(super) ids: Option<uids::WorkerIds>,
    /// [`seccomp::WORKER_FILTER`], compiled, as hex.
    pub(super) filter_hex: String,
    /// The rights of each worker's own Landlock domain, or why there are
    /// none on this host (the zygote then reports the domain as not applied).
    pub(super) landlock: Result<landlock::WorkerRights, String>,
    /// Paths added to every worker's Landlock domain (tests only).
    pub(super) extra_worker_paths: Vec<String>,
}

/// The zygote's configuration (its only argument). `worker_paths` is what a
/// worker's own Landlock domain keeps: everything the jail's domain allows
/// except the shared scratch root (`scratch`), of which each worker gets only
/// its own `task-<id>` directory.
pub(super) fn zygote_config(
    csv_path: &str,
    limits: &Limits,
    jail_rules: &landlock::LandlockSpec,
    scratch: &Path,
    setup: &WorkerSetup,
) -> serde_json::Value {
    let worker_paths: Vec<String> = jail_rules
        .read_exec
        .iter()
        .chain(&jail_rules.read)
        .chain(&jail_rules.read_write)
        .filter(|p| p.as_path() != scratch)
        .map(|p| p.display().to_string())
        .chain(setup.extra_worker_paths.iter().cloned())
        .collect();
    serde_json::json!({
        "csv": csv_path,
        "control_fd": spawn::CONTROL_FD,
        "max_output": limits.max_output_bytes,
        "max_frame": protocol::worker_frame_limit(limits.max_output_bytes),
        "worker_scope": true,
        "private_tmp": true,
        "worker_paths": worker_paths,
        "worker_landlock": setup.landlock.as_ref().ok(),
        "worker_landlock_error": setup.landlock.as_ref().err(),
        "threads": 1,
        "worker_ids": setup.ids,
        "worker_filter": {
            "bpf": setup.filter_hex,
            "placeholder": seccomp::WORKER_PID_PLACEHOLDER,
        },
    })
}

/// What of the host the jail is built from, read by [`HostView::read`]; a
/// test builds one by hand, so [`build`] needs no particular host.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// Read-only binds of the system's library directories and time zones.
    pub binds: Vec<mounts::Bind>,
    /// Library directories that are symlinks on this host (`/lib` → `usr/lib`).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// The bound library paths, which Landlock lets the jail read and execute.
    pub lib_paths: Vec<PathBuf>,
}

impl HostView {
    /// Look at this host's library directories.
    pub fn read() -> HostView {
        let (binds, symlinks, lib_paths) = system_binds_and_links();
        HostView {
            binds,
            symlinks,
            lib_paths,
        }
    }
}

/// Everything [`build`] needs: the caller's options, resolved, and what was
/// read of the host. No field is looked up again.
#[derive(Debug, Clone)]
pub struct JailInputs<'a> {
    /// The dataset's canonical host path.
    pub csv: &'a Path,
    pub image: &'a Image,
    pub limits: &'a Limits,
    pub allow_degraded: bool,
    pub setup: &'a WorkerSetup,
    pub host: HostView,
}

/// The jail [`build`] describes.
#[derive(Debug, Clone)]
pub struct BuiltJail {
    pub spec: spawn::JailSpec,
    /// Where the zygote finds the dataset inside the jail.
    pub csv_in_jail: String,
    /// The host's library paths (the unconfined fallback's Landlock rules).
    pub lib_paths: Vec<PathBuf>,
}

/// The jail spec for these inputs: binds, files, tmpfs sizes, Landlock
/// paths, rlimits, the zygote's argv (its configuration last) and its entire
/// environment. Pure: it reads nothing and touches nothing.
pub fn build(inputs: &JailInputs<'_>) -> BuiltJail {
    let limits = inputs.limits;
    let csv_name = jail_file_name(inputs.csv);
    let csv_in_jail = format!("{DATA_DIR}/{csv_name}");
    let HostView {
        mut binds,
        symlinks,
        lib_paths,
    } = inputs.host.clone();
    binds.push(mounts::Bind {
        source: inputs.image.root.clone(),
        target: inputs.image.root.clone(),
        writable: false,
        optional: false,
        fd: None,
    });
    binds.push(mounts::Bind {
        source: inputs.csv.to_path_buf(),
        target: PathBuf::from(&csv_in_jail),
        writable: false,
        optional: false,
        fd: Some(spawn::DATASET_FD),
    });
    for (dev, writable) in [
        ("null", true),
        ("zero", true),
        ("urandom", false),
        ("random", false),
    ] {
        let path = PathBuf::from(format!("/dev/{dev}"));
        binds.push(mounts::Bind {
            source: path.clone(),
            target: path,
            writable,
            optional: false,
            fd: None,
        });
    }
    let files = vec![
        mounts::JailFile {
            path: PathBuf::from("/sandbox/zygote.py"),
            contents: ZYGOTE_PY.to_string(),
            mode: 0o444,
        },
        mounts::JailFile {
            path: PathBuf::from("/etc/passwd"),
            contents: "root:x:0:0:csv-agent jail:/tmp:/nonexistent\n".to_string(),
            mode: 0o444,
        },
        mounts::JailFile {
            path: PathBuf::from("/etc/group"),
            contents: "root:x:0:\n".to_string(),
            mode: 0o444,
        },
        mounts::JailFile {
            path: PathBuf::from("/etc/hosts"),
            contents: "127.0.0.1 localhost csv-agent\n".to_string(),
            mode: 0o444,
        },
        // Unix permissions let anyone read this file, no Landlock rule
        // covers it: reading it fails only while Landlock is enforced.
        mounts::JailFile {
            path: PathBuf::from(measure::LANDLOCK_CANARY),
            contents: "landlock canary\n".to_string(),
            mode: 0o444,
        },
    ];
    let mut read_exec = vec![inputs.image.root.clone()];
    read_exec.extend(lib_paths.iter().cloned());
    let landlock_spec = landlock::LandlockSpec {
        read_exec,
        read: vec![
            PathBuf::from(DATA_DIR),
            PathBuf::from("/sandbox"),
            PathBuf::from("/etc"),
            PathBuf::from("/proc"),
            PathBuf::from("/dev/urandom"),
            PathBuf::from("/dev/random"),
        ],
        read_write: vec![
            PathBuf::from("/tmp"),
            PathBuf::from(mounts::SCRATCH),
            PathBuf::from("/dev/shm"),
            PathBuf::from("/dev/null"),
            PathBuf::from("/dev/zero"),
        ],
    };
    let zygote_config = zygote_config(
        &csv_in_jail,
        limits,
        &landlock_spec,
        Path::new(mounts::SCRATCH),
        inputs.setup,
    );
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), mounts::SCRATCH.into()),
        ("TMPDIR".into(), mounts::SCRATCH.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("LC_ALL".into(), "C.UTF-8".into()),
    ];
    env.extend(inputs.image.env.iter().cloned());
    let spec = spawn::JailSpec {
        fs: mounts::FsSpec {
            binds,
            symlinks,
            files,
            tmp_size_bytes: limits.tmp_bytes,
            shm_size_bytes: limits.shm_bytes,
        },
        landlock: landlock_spec,
        rlimits: rlimits::RlimitSpec {
            fsize_bytes: limits.fsize_bytes,
            nofile: ZYGOTE_NOFILE.max(limits.nofile),
            nproc: limits.nproc,
        },
        hostname: "csv-agent".to_string(),
        argv: vec![
            inputs.image.python.display().to_string(),
            "-I".to_string(),
            "-B".to_string(),
            "/sandbox/zygote.py".to_string(),
            zygote_config.to_string(),
        ],
        env,
        allow_degraded: inputs.allow_degraded,
        worker_ids: inputs.setup.ids,
        unconfined: None,
    };
    BuiltJail {
        spec,
        csv_in_jail,
        lib_paths,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_file_names_are_kept_only_when_plain() {
        assert_eq!(jail_file_name(Path::new("/x/penguins.csv")), "penguins.csv");
        assert_eq!(jail_file_name(Path::new("/x/my data (1).csv")), "data.csv");
        assert_eq!(jail_file_name(Path::new("/x/ünïcode.tsv")), "data.csv");
    }

    fn inputs_for<'a>(
        csv: &'a Path,
        image: &'a Image,
        limits: &'a Limits,
        setup: &'a WorkerSetup,
    ) -> JailInputs<'a> {
        JailInputs {
            csv,
            image,
            limits,
            allow_degraded: false,
            setup,
            host: HostView {
                binds: vec![mounts::Bind {
                    source: PathBuf::from("/usr/lib"),
                    target: PathBuf::from("/usr/lib"),
                    writable: false,
                    optional: true,
                    fd: None,
                }],
                symlinks: vec![(PathBuf::from("/lib"), PathBuf::from("usr/lib"))],
                lib_paths: vec![PathBuf::from("/usr/lib")],
            },
        }
    }

    fn image() -> Image {
        Image {
            key: "0123456789abcdef".to_string(),
            root: PathBuf::from("/var/cache/csv-agent/images/0123456789abcdef"),
            python: PathBuf::from("/var/cache/csv-agent/images/0123456789abcdef/venv/bin/python"),
            env: vec![("LD_LIBRARY_PATH".to_string(), "/img/python/lib".to_string())],
            python_version: "3.11.7".to_string(),
        }
    }

    fn setup() -> WorkerSetup {
        WorkerSetup {
            ids: Some(uids::WorkerIds {
                first: 1000,
                count: 4096,
            }),
            filter_hex: "00ff".to_string(),
            landlock: landlock::worker_rights(7).map_err(|e| e.to_string()),
            extra_worker_paths: Vec::new(),
        }
    }

    #[test]
    fn the_spec_binds_the_checked_descriptor_read_only_and_the_image_at_its_own_path() {
        let (image, limits, setup) = (image(), Limits::default(), setup());
        let built = build(&inputs_for(
            Path::new("/home/u/penguins.csv"),
            &image,
            &limits,
            &setup,
        ));
        assert_eq!(built.csv_in_jail, "/data/penguins.csv");
        let binds = &built.spec.fs.binds;
        let data = binds
            .iter()
            .find(|b| b.target == Path::new("/data/penguins.csv"))
            .expect("the dataset is bound");
        assert_eq!(data.fd, Some(spawn::DATASET_FD));
        assert!(!data.writable && !data.optional);
        let root = binds
            .iter()
            .find(|b| b.source == image.root)
            .expect("the image is bound");
        assert_eq!(root.target, image.root);
        assert!(!root.writable);
        // Only the two sinks are writable; everything else of the host is read-only.
        let writable: Vec<&Path> = binds
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.target.as_path())
            .collect();
        assert_eq!(writable, [Path::new("/dev/null"), Path::new("/dev/zero")]);
        assert!(binds.iter().any(|b| b.target == Path::new("/usr/lib")));
        assert_eq!(built.spec.fs.symlinks.len(), 1);
        assert_eq!(built.lib_paths, [PathBuf::from("/usr/lib")]);
        let zygote = built
            .spec
            .fs
            .files
            .iter()
            .find(|f| f.path == Path::new("/sandbox/zygote.py"))
            .expect("the zygote is a jail file");
        assert_eq!(zygote.contents, ZYGOTE_PY);
        assert_eq!(zygote.mode, 0o444);
    }

    #[test]
    fn the_zygote_gets_a_fixed_environment_and_its_configuration_as_last_argument() {
        let (image, setup) = (image(), setup());
        let limits = Limits {
            max_output_bytes: 4096,
            ..Limits::default()
        };
        let built = build(&inputs_for(
            Path::new("/x/my data.csv"),
            &image,
            &limits,
            &setup,
        ));
        let names: Vec<&str> = built.spec.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "TMPDIR",
                "LANG",
                "LC_ALL",
                "LD_LIBRARY_PATH"
            ]
        );
        assert_eq!(built.csv_in_jail, "/data/data.csv");
        let argv = &built.spec.argv;
        assert_eq!(argv[0], image.python.display().to_string());
        assert_eq!(argv[1..4], ["-I", "-B", "/sandbox/zygote.py"]);
        let config: serde_json::Value =
            serde_json::from_str(argv.last().expect("a configuration")).expect("JSON");
        assert_eq!(config["csv"], "/data/data.csv");
        assert_eq!(config["max_output"], 4096);
        assert_eq!(config["control_fd"], spawn::CONTROL_FD);
        assert_eq!(config["worker_ids"]["first"], 1000);
        assert_eq!(config["worker_filter"]["bpf"], "00ff");
        // A worker's own domain keeps the jail's paths but the shared scratch root.
        let paths: Vec<&str> = config["worker_paths"]
            .as_array()
            .expect("worker paths")
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(paths.contains(&"/tmp") && paths.contains(&"/data"));
        assert!(!paths.contains(&mounts::SCRATCH), "{paths:?}");
        assert_eq!(built.spec.worker_ids, setup.ids);
    }

    #[test]
    fn landlock_and_rlimits_follow_the_limits_and_the_jail_layout() {
        let (image, setup) = (image(), setup());
        let limits = Limits {
            tmp_bytes: 7 << 20,
            shm_bytes: 3 << 20,
            fsize_bytes: 9 << 20,
            nofile: 100,
            ..Limits::default()
        };
        let built = build(&inputs_for(Path::new("/x/a.csv"), &image, &limits, &setup));
        let rules = &built.spec.landlock;
        assert_eq!(
            rules.read_exec,
            [image.root.clone(), PathBuf::from("/usr/lib")]
        );
        assert!(rules.read.contains(&PathBuf::from(DATA_DIR)));
        assert!(!rules.read_write.iter().any(|p| p.starts_with(DATA_DIR)));
        assert!(!rules.read_write.iter().any(|p| p.starts_with(&image.root)));
        assert!(rules.read_write.contains(&PathBuf::from(mounts::SCRATCH)));
        assert_eq!(built.spec.fs.tmp_size_bytes, 7 << 20);
        assert_eq!(built.spec.fs.shm_size_bytes, 3 << 20);
        assert_eq!(built.spec.rlimits.fsize_bytes, 9 << 20);
        assert_eq!(built.spec.rlimits.nofile, ZYGOTE_NOFILE);
        assert_eq!(built.spec.hostname, "csv-agent");
        assert!(built.spec.unconfined.is_none());
        // Every bind target stays clear of what the jail mounts itself,
        // except the device nodes and the dataset it places there.
        for bind in &built.spec.fs.binds {
            let own = JAIL_OWN_PATHS.iter().any(|p| bind.target.starts_with(p));
            assert!(
                !own || bind.target.starts_with("/dev") || bind.target.starts_with(DATA_DIR),
                "{}",
                bind.target.display()
            );
        }
    }

    #[test]
    fn the_zygote_is_handed_the_crates_landlock_rights_for_the_abi() {
        use ::landlock::{Access, AccessFs, Scope, ABI};
        let (image, limits) = (image(), Limits::default());
        let setup = setup();
        let built = build(&inputs_for(Path::new("/x/a.csv"), &image, &limits, &setup));
        let config: serde_json::Value =
            serde_json::from_str(built.spec.argv.last().expect("config")).expect("JSON");
        let handed = &config["worker_landlock"];
        assert_eq!(handed["abi"], 7);
        assert_eq!(handed["handled_fs"], AccessFs::from_all(ABI::V7).bits());
        assert_eq!(handed["file_rights"], AccessFs::from_file(ABI::V7).bits());
        assert_eq!(handed["scoped"], Scope::from_all(ABI::V7).bits());
        assert!(config["worker_landlock_error"].is_null());

        let without = WorkerSetup {
            landlock: Err("landlock is not available: ENOSYS".to_string()),
            ..setup
        };
        let built = build(&inputs_for(
            Path::new("/x/a.csv"),
            &image,
            &limits,
            &without,
        ));
        let config: serde_json::Value =
            serde_json::from_str(built.spec.argv.last().expect("config")).expect("JSON");
        assert!(config["worker_landlock"].is_null());
        assert_eq!(
            config["worker_landlock_error"],
            "landlock is not available: ENOSYS"
        );
    }
}
