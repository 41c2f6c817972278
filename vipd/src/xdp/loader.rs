//! An `EbpfLoader` that has not parsed the kernel's BTF.
//!
//! vipd's program reads no kernel types (no CO-RE relocations), so it loads
//! with `.btf(None)`. But aya 0.14's `EbpfLoader::new` reads and parses
//! /sys/kernel/btf/vmlinux before any setting can say so (5.5 MB of file,
//! about 17 MiB of heap at its peak, tens of milliseconds of start-up), and
//! the heap it took stays in the process's peak RSS for good. So the loader
//! is built on a short-lived thread of its own that cannot see that file:
//! the thread leaves the process's mount namespace (`unshare`), makes every
//! mount in its copy private (nothing it does reaches the host), covers
//! /sys/kernel/btf with an empty read-only tmpfs and builds the loader
//! there; the program is then loaded from the calling thread as before. The
//! thread's namespace goes with it. Where that is not allowed (no
//! CAP_SYS_ADMIN, as under the packaged unit, which hides the directory with
//! `InaccessiblePaths=` instead), the loader is built the ordinary way.

use std::{ffi::CStr, io};

use aya::EbpfLoader;
use tracing::debug;

const KERNEL_BTF_DIR: &CStr = c"/sys/kernel/btf";

/// How the loader was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelBtf {
    /// On a thread that could not see the kernel's BTF: nothing was parsed.
    Hidden,
    /// The ordinary way; the kernel's BTF was parsed if readable.
    Read,
}

/// A loader with no kernel BTF parsed where the process may hide it from a
/// thread of its own (see the module's comment), else an ordinary one.
/// Either way the caller sets `.btf(None)`.
pub fn loader() -> (EbpfLoader<'static>, KernelBtf) {
    let built = std::thread::Builder::new()
        .name("xdp-loader".into())
        .spawn(|| {
            hide_kernel_btf()?;
            Ok::<_, io::Error>(EbpfLoader::new())
        })
        .map_err(|e| io::Error::other(format!("cannot start the loader thread: {e}")))
        .and_then(|t| {
            t.join()
                .map_err(|_| io::Error::other("the loader thread panicked"))?
        });
    match built {
        Ok(l) => (l, KernelBtf::Hidden),
        Err(e) => {
            debug!(error = %e, "cannot hide the kernel's BTF from the XDP loader; it will parse it");
            (EbpfLoader::new(), KernelBtf::Read)
        }
    }
}

/// On the calling thread only: a private copy of the mount namespace in
/// which /sys/kernel/btf is an empty read-only tmpfs.
fn hide_kernel_btf() -> io::Result<()> {
    let check = |r: libc::c_int, what: &str| {
        if r == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("{what}: {e}")))
        }
    };
    // SAFETY: plain syscalls with valid NUL-terminated strings; unshare
    // affects only this thread (CLONE_NEWNS implies CLONE_FS, which a
    // thread of a multi-threaded process may unshare).
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
        // Private first: with shared propagation (systemd's default) a
        // mount here would appear in the host's namespace too.
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making the mount namespace copy private",
        )?;
        check(
            libc::mount(
                c"none".as_ptr(),
                KERNEL_BTF_DIR.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k".as_ptr().cast(),
            ),
            "covering /sys/kernel/btf",
        )?;
    }
    Ok(())
}
