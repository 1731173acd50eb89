//! pidfds: a worker is signalled through a descriptor that names it, never
//! through a pid number that may be reused.

use std::os::fd::{AsRawFd, OwnedFd};

/// `pidfd_open(2)`: a descriptor that names this process for as long as it
/// is held, whatever happens to its pid number.
pub(super) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain system call with integer arguments; returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`; signal 0 only asks whether the process is still
/// there (alive or a zombie not yet reaped).
pub(super) fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: a descriptor we own, a null siginfo and no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The innermost pid (`NSpid`, last field) of the process a pidfd names,
/// from `/proc/self/fdinfo`; `None` once it has been reaped (`-1`).
pub(super) fn pidfd_inner_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let line = info.lines().find(|l| l.starts_with("NSpid:"))?;
    let pid: i32 = line.split_whitespace().last()?.parse().ok()?;
    (pid > 0).then_some(pid)
}
