//! `cargo xtask test`: what CI runs. Setup, build, formatting, lints, then
//! every test, privileged ones included: a test that needs root fails
//! without it, it never skips.

use std::process::Command;

use anyhow::Result;

use crate::{build, run_checked, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (it is quick when nothing is missing).
    #[arg(long)]
    no_setup: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Arguments for `cargo test` after `--` (a test name filter, say).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    if !opts.no_setup {
        setup::run(&setup::Options::default())?;
    }
    build::build(&build::Options { release: false })?;
    if !opts.no_lint {
        run_checked(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )?;
        run_checked(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--exclude",
            "vipd-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crate only lints on nightly, checked for the host with
        // panic=abort (its own panic handler clashes with std's otherwise).
        run_checked(Command::new("cargo").current_dir(&root).args([
            "+nightly",
            "clippy",
            "--package",
            "vipd-ebpf",
            "--",
            "-D",
            "warnings",
            "-C",
            "panic=abort",
        ]))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--exclude", "vipd-ebpf"]);
    if !opts.args.is_empty() {
        cmd.arg("--").args(&opts.args);
    }
    run_checked(&mut cmd)
}
