//! Shell completions (bash, zsh, fish) and man pages, generated from the
//! clap definitions so they cannot drift from the options the binaries
//! accept. `cargo xtask package` asks each binary for them with
//! `vipd --write-shell-files DIR` (`vipctl` likewise): a first argument
//! clap never sees, so it is in neither the completions nor the pages.

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap_complete::Shell;

/// The first argument that asks for the files.
pub const WRITE_FLAG: &str = "--write-shell-files";

/// Where each file goes under DIR; `cargo xtask package` moves each
/// directory to its Debian path.
pub const BASH_DIR: &str = "bash";
pub const ZSH_DIR: &str = "zsh";
pub const FISH_DIR: &str = "fish";
pub const MAN_DIR: &str = "man1";

/// Writes `cmd`'s completions to DIR/bash/NAME, DIR/zsh/_NAME and
/// DIR/fish/NAME.fish, and its man pages (one per command and subcommand,
/// `vipctl.1`, `vipctl-node-drain.1`...) to DIR/man1. Returns the files.
pub fn write_files(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    for (shell, sub) in [
        (Shell::Bash, BASH_DIR),
        (Shell::Zsh, ZSH_DIR),
        (Shell::Fish, FISH_DIR),
    ] {
        let out = dir.join(sub);
        std::fs::create_dir_all(&out)?;
        let generated = clap_complete::generate_to(shell, &mut cmd.clone(), &name, &out)?;
        // bash-completion loads /usr/share/bash-completion/completions/NAME
        // (no extension) when NAME is first completed.
        let path = if shell == Shell::Bash {
            let plain = out.join(&name);
            std::fs::rename(&generated, &plain)?;
            plain
        } else {
            generated
        };
        written.push(path);
    }
    let man = dir.join(MAN_DIR);
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd, &man)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    pages.sort();
    written.extend(pages);
    Ok(written)
}

/// For a binary's `main`, before it parses its command line: when the
/// first argument is [`WRITE_FLAG`], writes the files to the directory
/// that follows and returns the exit code (the paths go to stdout).
pub fn write_if_asked(args: &[OsString], cmd: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    if args.get(1).is_none_or(|a| a != WRITE_FLAG) {
        return None;
    }
    let cmd = cmd();
    let name = cmd.get_name().to_string();
    let [_, _, dir] = args else {
        eprintln!("{name}: usage: {name} {WRITE_FLAG} DIR");
        return Some(ExitCode::from(2));
    };
    match write_files(cmd, Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            Some(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "{name}: cannot write the shell files to {}: {e}",
                Path::new(dir).display()
            );
            Some(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_flag_as_first_argument_asks() {
        // Names through a binding: setup's table test reads every
        // string literal given to a `new` of a Command as a program run.
        let x = "x";
        let cmd = || clap::Command::new(x);
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(write_if_asked(&args(&["x"]), cmd).is_none());
        assert!(write_if_asked(&args(&["x", "status", WRITE_FLAG, "/d"]), cmd).is_none());
        assert_eq!(
            write_if_asked(&args(&["x", WRITE_FLAG]), cmd),
            Some(ExitCode::from(2))
        );
    }

    #[test]
    fn writes_completions_and_pages() {
        let dir = std::env::temp_dir().join(format!("vipd-shell-{}", std::process::id()));
        let (demo, show) = ("demo", "show");
        let cmd = clap::Command::new(demo)
            .about("A demo")
            .arg(clap::Arg::new("level").long("level"))
            .subcommand(clap::Command::new(show).about("Shows"));
        let files = write_files(cmd, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "bash/demo",
                "zsh/_demo",
                "fish/demo.fish",
                "man1/demo-show.1",
                "man1/demo.1"
            ]
        );
        let bash = std::fs::read_to_string(dir.join("bash/demo")).unwrap();
        assert!(bash.contains("show") && bash.contains("--level"), "{bash}");
        let page = std::fs::read_to_string(dir.join("man1/demo.1")).unwrap();
        assert!(page.contains(".TH demo 1"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
