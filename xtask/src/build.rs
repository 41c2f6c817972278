//! `cargo xtask build` and `cargo xtask run`: the agent's build script builds
//! the XDP program with nightly (aya-build), so one cargo call builds both.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{is_root, run_checked, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

#[derive(clap::Args)]
pub struct RunOptions {
    #[command(flatten)]
    pub build: Options,
    /// Arguments for vipd, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Builds `vipd` and `vipctl` (and with them the XDP object) and returns the
/// directory holding the binaries.
pub fn build(opts: &Options) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--package", "vipd", "--bins"]);
    if opts.release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    let profile = if opts.release { "release" } else { "debug" };
    Ok(target_dir().join(profile))
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn run(opts: &RunOptions) -> Result<()> {
    let bin = build(&opts.build)?.join("vipd");
    // vipd needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF: run it through sudo
    // when we are not root, keeping the environment (RUST_LOG, VIPD_*).
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    cmd.args(&opts.args);
    let status = crate::run_status(&mut cmd)?;
    if !status.success() {
        bail!("vipd exited with {status}");
    }
    Ok(())
}
