//! The jail's filesystem: a fresh tmpfs root holding read-only binds of
//! exactly what Python needs, the dataset read-only under `/data`, a
//! size-capped `/tmp`, a small `/dev/shm`, a fresh `/proc` and a minimal
//! `/dev`; then `pivot_root` into it and detach the host's tree.
//!
//! Runs in the jail init's child, inside the new user, mount and pid
//! namespaces, single-threaded. A privileged caller clones each bind source's
//! mount tree (`open_tree`) *before* the user namespace exists, while the init
//! still has host credentials, and attaches the clones with `move_mount`
//! afterwards: a source under a private directory (like `/root`) is reachable
//! without granting the jail user any path through that directory. (A plain
//! bind from an `O_PATH` descriptor would not do: a bind source must belong to
//! the caller's mount namespace.)

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libc::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

/// Where the new root is assembled inside the private mount namespace. Mounting
/// over the host's `/tmp` there does not touch the host: the namespace is
/// private (propagation is cut first).
const STAGING: &str = "/tmp";

/// Root of the per-task scratch directories inside the jail.
pub const SCRATCH: &str = "/scratch";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    /// Host path (opened before the namespaces exist).
    pub source: PathBuf,
    /// Path inside the jail.
    pub target: PathBuf,
    pub writable: bool,
    /// Skip silently when the source does not exist on this host.
    pub optional: bool,
    /// The source as a descriptor the init inherited at this number (opened
    /// and checked by the supervisor): mounted from the descriptor, so the
    /// path `source` (kept for messages) is never looked up again.
    #[serde(default)]
    pub fd: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JailFile {
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsSpec {
    pub binds: Vec<Bind>,
    /// `(path in the jail, link target)`, e.g. `/lib` → `usr/lib` on merged-/usr hosts.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    pub files: Vec<JailFile>,
    /// Size of `/tmp` (shared by the sandbox's tasks) and of `/scratch`
    /// (private per task), each.
    pub tmp_size_bytes: u64,
    pub shm_size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open bind source {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{action} {path} failed: {source}")]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is no longer the file the supervisor checked (replaced between the check and the jail start); refusing it")]
    Changed { path: PathBuf },
    #[error("creating {path} in the new root failed: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a bind source reaches the new root.
#[derive(Debug)]
pub enum Source {
    /// A detached copy of the source's mount tree (`open_tree(OPEN_TREE_CLONE)`),
    /// taken while the init still has its host credentials: attached later
    /// with `move_mount`, it needs no path walk by the jail user.
    Detached { tree: OwnedFd, is_dir: bool },
    /// Bound by path after the namespaces exist: an unprivileged caller may
    /// not clone mount trees, but then the jail user *is* the caller and walks
    /// the same paths the caller could. With `expect`, the path is opened
    /// without following a final symlink and must still be that (device,
    /// inode): the file the supervisor checked through its descriptor (a
    /// descriptor of the old mount namespace cannot be bound in the new one).
    Path {
        path: PathBuf,
        is_dir: bool,
        expect: Option<(u64, u64)>,
    },
    /// An optional source this host does not have.
    Missing,
}

/// Prepare every bind source. Call before `unshare`.
pub fn open_sources(binds: &[Bind]) -> Result<Vec<Source>, MountError> {
    binds
        .iter()
        .map(|b| {
            if let Some(fd) = b.fd {
                return open_fd_source(b, fd);
            }
            if !b.source.exists() {
                return if b.optional {
                    Ok(Source::Missing)
                } else {
                    Err(MountError::Source {
                        path: b.source.clone(),
                        source: nix::Error::ENOENT,
                    })
                };
            }
            // Decided now: after unshare the jail user may not even be able
            // to stat the source, and move_mount needs a target of the same type.
            let is_dir = b.source.is_dir();
            match open_tree_clone(&b.source) {
                Ok(tree) => Ok(Source::Detached { tree, is_dir }),
                Err(nix::Error::EPERM) => Ok(Source::Path {
                    path: b.source.clone(),
                    is_dir,
                    expect: None,
                }),
                Err(source) => Err(MountError::Source {
                    path: b.source.clone(),
                    source,
                }),
            }
        })
        .collect()
}

/// A bind source given as an inherited descriptor: clone the mount of
/// exactly that file (`open_tree(fd, "", AT_EMPTY_PATH | OPEN_TREE_CLONE)`);
/// an unprivileged caller binds the path again in the new namespace, and
/// only if it still leads to the descriptor's inode.
fn open_fd_source(b: &Bind, fd: i32) -> Result<Source, MountError> {
    let err = |source| MountError::Source {
        path: b.source.clone(),
        source,
    };
    // SAFETY: the supervisor placed this descriptor at `fd` before exec and
    // it stays open for the whole life of the init; we only borrow it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let st = nix::sys::stat::fstat(borrowed).map_err(err)?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    match open_tree(borrowed, Path::new(""), OpenTreeFlags::AT_EMPTY_PATH) {
        Ok(tree) => Ok(Source::Detached { tree, is_dir }),
        Err(nix::Error::EPERM) => Ok(Source::Path {
            path: b.source.clone(),
            is_dir,
            expect: Some((st.st_dev, st.st_ino)),
        }),
        Err(source) => Err(err(source)),
    }
}

/// rustix reports an errno of its own type; the errors here carry nix's.
fn errno(e: rustix::io::Errno) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error())
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE | OPEN_TREE_CLOEXEC)`.
fn open_tree_clone(path: &Path) -> Result<OwnedFd, nix::Error> {
    open_tree(rustix::fs::CWD, path, OpenTreeFlags::empty())
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE | AT_RECURSIVE | OPEN_TREE_CLOEXEC | extra)`:
/// a detached clone of the mount tree at `path`.
fn open_tree(
    dirfd: impl std::os::fd::AsFd,
    path: &Path,
    extra: OpenTreeFlags,
) -> Result<OwnedFd, nix::Error> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE
        | extra;
    rustix::mount::open_tree(dirfd, path, flags).map_err(errno)
}

/// Attach a detached mount tree at `target` (`move_mount` with an empty path).
fn move_mount(fd: &OwnedFd, target: &Path) -> Result<(), nix::Error> {
    rustix::mount::move_mount(
        fd,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(errno)
}

fn staged(path: &Path) -> PathBuf {
    Path::new(STAGING).join(path.strip_prefix("/").unwrap_or(path))
}

fn mnt(
    action: &'static str,
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(|source| MountError::Mount {
        action,
        path: target.to_path_buf(),
        source,
    })
}

/// Create `path` and mount a fresh tmpfs on it.
fn tmpfs(path: &Path, flags: MsFlags, options: &str) -> Result<(), MountError> {
    mkdir(path)?;
    mnt(
        "mounting a tmpfs on",
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        flags,
        Some(options),
    )
}

fn mkdir(path: &Path) -> Result<(), MountError> {
    fs::create_dir_all(path).map_err(|source| MountError::Create {
        path: path.to_path_buf(),
        source,
    })
}

fn touch(path: &Path) -> Result<(), MountError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)
        .map(|_| ())
        .map_err(|source| MountError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Mount attributes through `mount_setattr(2)`: unlike a `MS_REMOUNT`, it
/// only *adds* flags, so the locked flags a user namespace inherits (nosuid,
/// nodev from the host mount) never make it fail, and `AT_RECURSIVE` covers
/// submounts of a recursive bind.
///
/// No maintained crate wraps `mount_setattr` (rustix lists it as not
/// implemented, nix has none), so this one call stays raw; its number, flags
/// and `struct mount_attr` come from libc, not from constants kept here.
fn set_attr(path: &Path, attr_set: u64, recursive: bool) -> Result<(), MountError> {
    let failed = |source| MountError::Mount {
        action: "setting attributes on",
        path: path.to_path_buf(),
        source,
    };
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| failed(nix::Error::EINVAL))?;
    let flags: libc::c_uint = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: `cpath` is a valid NUL-terminated string and `attr` a
    // `struct mount_attr` (libc's definition) that outlives the call; the
    // size passed is its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(failed(nix::Error::last()));
    }
    Ok(())
}

/// Build the new root and pivot into it. On return the process sees only the
/// jail's tree; the host's is detached.
pub fn build_root(spec: &FsSpec, sources: &[Source]) -> Result<(), MountError> {
    let root = Path::new("/");
    // Cut propagation both ways before anything is mounted, so nothing here
    // ever shows up on the host and host mounts stop appearing in here.
    mnt(
        "making private",
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    // Sources bound by path are opened now, in this mount namespace and
    // before the staging tmpfs can shadow them (a source may live under /tmp);
    // they are bound through /proc/self/fd below.
    let mut by_path: Vec<Option<OwnedFd>> = Vec::with_capacity(sources.len());
    for source in sources {
        by_path.push(match source {
            Source::Path { path, expect, .. } => {
                use nix::fcntl::OFlag;
                let flags = match expect {
                    Some(_) => OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    None => OFlag::O_PATH | OFlag::O_CLOEXEC,
                };
                let fd = nix::fcntl::open(path.as_path(), flags, nix::sys::stat::Mode::empty())
                    .map_err(|source| MountError::Source {
                        path: path.clone(),
                        source,
                    })?;
                if let Some((dev, ino)) = expect {
                    let st = nix::sys::stat::fstat(&fd).map_err(|source| MountError::Source {
                        path: path.clone(),
                        source,
                    })?;
                    if (st.st_dev, st.st_ino) != (*dev, *ino) {
                        return Err(MountError::Changed { path: path.clone() });
                    }
                }
                Some(fd)
            }
            _ => None,
        });
    }

    let staging = Path::new(STAGING);
    tmpfs(
        staging,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "size=16m,mode=0755",
    )?;

    // /dev: a tiny tmpfs with bind-mounted device nodes (a user namespace may
    // not mknod, and a tmpfs it mounts ignores device nodes anyway).
    let dev = staged(Path::new("/dev"));
    tmpfs(
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "size=64k,mode=0755",
    )?;

    // The jail's own mounts come before the binds, so a bind whose target
    // lies under one of them (an image kept under /tmp, say) lands inside it
    // instead of being shadowed by it.
    tmpfs(
        &dev.join("shm"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        &format!("size={},mode=1777", spec.shm_size_bytes),
    )?;
    tmpfs(
        &staged(Path::new("/tmp")),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("size={},mode=1777", spec.tmp_size_bytes),
    )?;

    // /scratch: each task's private directory (its HOME, TMPDIR and working
    // directory) lives here; a worker's Landlock domain allows only its own.
    // 1733: a worker (its own uid) may create its directory, not list others.
    tmpfs(
        &staged(Path::new(SCRATCH)),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("size={},mode=1733", spec.tmp_size_bytes),
    )?;

    // A fresh procfs: it shows only the jail's pid namespace.
    let proc_dir = staged(Path::new("/proc"));
    mkdir(&proc_dir)?;
    mnt(
        "mounting",
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;

    for ((bind, source), path_fd) in spec.binds.iter().zip(sources).zip(&by_path) {
        let is_dir = match source {
            Source::Missing => continue,
            Source::Detached { is_dir, .. } | Source::Path { is_dir, .. } => *is_dir,
        };
        let target = staged(&bind.target);
        if is_dir {
            mkdir(&target)?;
        } else {
            touch(&target)?;
        }
        let attached = match source {
            Source::Detached { tree, .. } => move_mount(tree, &target),
            Source::Path { .. } => mount(
                path_fd
                    .as_ref()
                    .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
                    .as_deref(),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
            Source::Missing => Ok(()),
        };
        attached.map_err(|source| MountError::Mount {
            action: "bind-mounting",
            path: bind.source.clone(),
            source,
        })?;
        let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if !bind.writable {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        if bind.target.starts_with("/dev") {
            // Device nodes need dev; they never need exec.
            attrs = MOUNT_ATTR_NOSUID
                | MOUNT_ATTR_NOEXEC
                | if bind.writable { 0 } else { MOUNT_ATTR_RDONLY };
        }
        set_attr(&target, attrs, true)?;
    }

    for (path, target) in &spec.symlinks {
        let link = staged(path);
        if let Some(parent) = link.parent() {
            mkdir(parent)?;
        }
        symlink(target, &link).map_err(|source| MountError::Create {
            path: link.clone(),
            source,
        })?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = dev.join(name);
        symlink(target, &link).map_err(|source| MountError::Create { path: link, source })?;
    }

    for file in &spec.files {
        let path = staged(&file.path);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&path)?;
            f.write_all(file.contents.as_bytes())?;
            fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
        };
        write().map_err(|source| MountError::Create {
            path: path.clone(),
            source,
        })?;
    }

    pivot(staging)?;

    // The root itself becomes read-only; /tmp, /dev/shm and the device nodes
    // are separate mounts and keep their own flags.
    set_attr(
        root,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        false,
    )
}

/// `pivot_root(".", ".")` then detach the old root, as runc does: no directory
/// for the old root is needed, and nothing of the host stays reachable.
fn pivot(new_root: &Path) -> Result<(), MountError> {
    let err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| MountError::Mount {
            action,
            path,
            source,
        }
    };
    nix::unistd::chdir(new_root).map_err(err("changing into", new_root))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root into", new_root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root at", new_root))?;
    nix::unistd::chdir("/").map_err(err("changing into", Path::new("/")))
}
