//! vipd's one entry point for building, testing and running: `cargo xtask`.
//!
//! A module per subcommand; each shells out to the real tools (apt-get,
//! rustup, cargo) and stops at the first failure with a message naming it.

mod bench;
mod build;
mod chaos;
mod demo;
mod package;
mod setup;
mod test;

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and run vipd", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks: Debian packages, the nightly's
    /// rust-src, and bpf-linker built against the nightly's own LLVM.
    Setup(setup::Options),
    /// Build the XDP program (nightly) and the agent and CLI (stable).
    Build(build::Options),
    /// Build, then start the agent: `cargo xtask run -- <vipd args>`.
    Run(build::RunOptions),
    /// Setup, build, fmt, clippy and every test, privileged ones included.
    Test(test::Options),
    /// Random faults from a seed against a lab cluster, and a checker of
    /// what the client and the kernels saw.
    Chaos(chaos::Options),
    /// Three vipd nodes, a ZooKeeper and a client in a lab: a failover, live.
    Demo(demo::Options),
    /// Benchmarks: engine, failover, arp, and vipd against keepalived.
    Bench(bench::Options),
    /// Build the Debian package (target/debian/vipd_<version>_amd64.deb).
    Package(package::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup(o) => setup::run(&o),
        Cmd::Build(o) => build::build(&o).map(|_| ()),
        Cmd::Run(o) => build::run(&o),
        Cmd::Test(o) => test::run(&o),
        Cmd::Chaos(o) => chaos::run(&o),
        Cmd::Demo(o) => demo::run(&o),
        Cmd::Bench(o) => bench::run(&o),
        Cmd::Package(o) => package::run(&o).map(|_| ()),
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs a command to completion, failing with the command line if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = run_status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its exit status.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {}", describe(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs a command and returns its standard output, failing if it fails.
pub fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
