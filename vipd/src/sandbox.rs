//! How vipd runs an operator's program (an exec health check, the
//! on-change hook), as keepalived runs its scripts: only a program no
//! one but root can change, with no capabilities, a minimal environment,
//! and in a process group of its own that is killed whole.

use std::{
    ffi::OsStr,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

/// The search path a program gets (the rest of vipd's environment is not
/// passed on).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a program may not be run.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeProgram {
    #[error("{what} {path}: cannot be read: {source}", path = path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {component} is {why}; only root may be able to change a program vipd runs", path = path.display(), component = component.display())]
    Insecure {
        what: &'static str,
        path: PathBuf,
        /// The program itself or one of its directories.
        component: PathBuf,
        why: &'static str,
    },
    #[error("{what} {path}: not a regular file", path = path.display())]
    NotAFile { what: &'static str, path: PathBuf },
}

/// Checks that only root can change the program at `path` (`what` names
/// it in the error: "--check", "--on-change"): the file, after symbolic
/// links are resolved, and every directory above it must be owned by root
/// and writable by neither a group nor others. A directory writable by
/// others is accepted when it is root's and sticky (as /tmp): there no one
/// else can replace or rename root's entries.
pub fn check_program(what: &'static str, path: &Path) -> Result<(), UnsafeProgram> {
    let unreadable = |source| UnsafeProgram::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(path).map_err(unreadable)?;
    let meta = std::fs::metadata(&real).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(UnsafeProgram::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    let insecure = |component: &Path, why| UnsafeProgram::Insecure {
        what,
        path: path.to_path_buf(),
        component: component.to_path_buf(),
        why,
    };
    if let Some(why) = unsafe_mode(meta.uid(), meta.mode(), false) {
        return Err(insecure(&real, why));
    }
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(unreadable)?;
        if let Some(why) = unsafe_mode(meta.uid(), meta.mode(), true) {
            return Err(insecure(dir, why));
        }
    }
    Ok(())
}

/// Why a file (or directory) with this owner and mode lets someone other
/// than root change what runs, if it does.
fn unsafe_mode(uid: u32, mode: u32, dir: bool) -> Option<&'static str> {
    let sticky = mode & 0o1000 != 0;
    if uid == 0 && dir && sticky {
        // As /tmp: others may add entries but not replace root's.
        None
    } else if uid != 0 {
        Some(if dir {
            "a directory not owned by root"
        } else {
            "not owned by root"
        })
    } else if mode & 0o020 != 0 {
        Some(if dir {
            "a directory writable by its group"
        } else {
            "writable by its group"
        })
    } else if mode & 0o002 != 0 {
        Some(if dir {
            "a directory writable by others"
        } else {
            "writable by others"
        })
    } else {
        None
    }
}

/// A command for `program`: no capabilities (bounding, ambient,
/// inheritable, permitted and effective sets cleared, no_new_privs set, so
/// not even a set-uid program gets any back), the environment `PATH`,
/// `LANG=C` and `env` only, stdio to /dev/null, and a process group of its
/// own (see [`kill_group`]).
pub(crate) fn command<I, K, V>(program: &Path, env: I) -> Command
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let last_cap = last_capability();
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", SAFE_PATH)
        .env("LANG", "C")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes raw system calls (prctl, capset), which are async-signal-safe;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || drop_privileges(last_cap));
    }
    cmd
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

/// In the child: empties every capability set. The bounding set first
/// (dropping needs CAP_SETPCAP, which the last step removes). A vipd
/// without CAP_SETPCAP (an unprivileged user, or the unit's capabilities
/// only) cannot shrink the bounding set (EPERM) and leaves it: the child
/// still holds no capability (ambient, permitted, effective and
/// inheritable are emptied) and, under no_new_privs, no exec can grant one.
fn drop_privileges(last_cap: u32) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    for cap in 0..=last_cap {
        // SAFETY: prctl with plain integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // A capability this kernel does not have.
                Some(libc::EINVAL) => {}
                // No CAP_SETPCAP: the bounding set stays (see above).
                Some(libc::EPERM) => break,
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
    // SAFETY: prctl with plain integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: prctl with plain integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data structs we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills a child's process group when dropped while armed: a run cut
/// short (timeout, shutdown) takes what the program forked along. Only
/// armed while the child is not reaped, so the group id is still ours.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) on the process group vipd created for a child
            // it has not reaped yet (the group id cannot be reused).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// Runs the child to its end or to `timeout`; at the timeout, or when this
/// future is dropped (shutdown), its whole process group is killed.
/// `None`: the timeout passed.
pub(crate) async fn wait_or_kill(
    mut child: Child,
    timeout: Duration,
) -> Option<io::Result<std::process::ExitStatus>> {
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => {
            // Reaped (or failed to): the group id may be reused from now on.
            guard.0 = None;
            Some(r)
        }
        Err(_) => {
            drop(guard);
            let _ = child.kill().await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_that_let_others_change_a_program() {
        let cases = [
            (0, 0o100755, false, None),
            (0, 0o100775, false, Some("writable by its group")),
            (0, 0o100757, false, Some("writable by others")),
            (1000, 0o100755, false, Some("not owned by root")),
            (0, 0o40755, true, None),
            (0, 0o41777, true, None),
            (0, 0o40757, true, Some("a directory writable by others")),
            (0, 0o40775, true, Some("a directory writable by its group")),
            (1000, 0o40755, true, Some("a directory not owned by root")),
        ];
        for (uid, mode, dir, want) in cases {
            assert_eq!(unsafe_mode(uid, mode, dir), want, "{uid} {mode:o} {dir}");
        }
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = check_program("--on-change", Path::new("/nonexistent/vipd-hook")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vipd-hook"), "{e}");
    }
}
