//! `cargo xtask setup`: make a fresh machine of this kind able to build and
//! test vipd. Idempotent: each step checks first and does nothing when done.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, output_of, run_checked};

/// Debian packages the project, its tests, demo and benchmarks use.
pub const PACKAGES: &[&str] = &[
    "zookeeper",
    "default-jre-headless",
    "iproute2",
    "arping",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "ethtool",
    "procps",
    "util-linux",
    "keepalived",
    "dpkg-dev",
    "systemd",
];

/// The bpf-linker release measured to work with the pinned aya (FACTS.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip the Debian packages (for machines where apt is not available).
    #[arg(long)]
    no_apt: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.no_apt {
        apt_packages()?;
    }
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup: these Debian packages are missing and only root can install them: {}",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("the nightly toolchain is needed for the XDP program (rustup toolchain list)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// What the nightly toolchain says of its LLVM: the major version and the
/// file name of the shared library it ships.
struct NightlyLlvm {
    major: u32,
    lib: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = output_of(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` names no LLVM version")?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))?;
    let sysroot = output_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    Ok(NightlyLlvm { major, lib })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker links against the nightly's own libLLVM through a prefix
/// directory whose `lib/` holds the library under both names it is asked
/// for: `libLLVM.so` at build time, the versioned name at run time.
fn llvm_prefix(llvm: &NightlyLlvm) -> Result<PathBuf> {
    let prefix = cargo_home()
        .join("vipd-llvm")
        .join(format!("llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let versioned = llvm
        .lib
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(versioned)] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.lib.as_path()) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&llvm.lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.lib.display()))?;
    }
    Ok(prefix)
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    let prefix = llvm_prefix(&llvm)?;
    if bpf_linker_works() {
        eprintln!("setup: bpf-linker present (LLVM {})", llvm.major);
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker against the nightly's LLVM {} (about a minute)",
        llvm.major
    );
    run_checked(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", llvm.major)),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not start; is {} on PATH and {} present?",
            cargo_home().join("bin").display(),
            prefix.join("lib").display()
        );
    }
    Ok(())
}
