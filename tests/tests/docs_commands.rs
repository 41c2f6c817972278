//! Every `vipd` and `vipctl` command line shown in README.md and
//! docs/OPERATIONS.md runs as written against a lab cluster:
//! the documents are read when the test runs, so a changed or added
//! command is tested as the document has it.
//!
//! The rules, in order:
//!
//! - A command is a line of a ```sh (or bash, shell) block whose first
//!   word, after any `NAME=value` assignments, is `vipd` or `vipctl`; a
//!   trailing `\` joins the next line. Other lines (`systemctl`, `apt`,
//!   a web client) are not ours. A line that runs vipd or vipctl in any other
//!   way (`sudo vipctl`, `a && vipctl`, `vipctl status | jq`) fails the
//!   test: write it as a line of its own, or teach this test.
//! - Each line runs through `sh -c` in the namespace of a lab node, with
//!   the built binaries first on PATH and nothing else from our
//!   environment, so quoting, trailing `# comments` and substitutions are
//!   the shell's, as for an operator. Only the substitutions listed in
//!   [`SUBSTITUTIONS`] may appear (`"$(hostname)"`: the shell runs
//!   `hostname` there, which gives this machine's name, a valid node id);
//!   any other `$` or backquote fails the test.
//! - The documents' example ZooKeeper servers are replaced through
//!   [`SERVERS`] by the lab's three-server ensemble. Any other `host:port`
//!   whose host is a name, any `<placeholder>`, and any IPv4 address
//!   outside the lab's subnets (192.0.2.0/24, 198.51.100.0/24,
//!   203.0.113.0/24) or loopback fail the test naming the line: map it
//!   here, or fix the document. Example VIPs, cluster and service names
//!   need no mapping: the lab's data segment is 192.0.2.0/24 and its
//!   ZooKeeper is fresh.
//! - What is a file of the machine comes from the environment, the way
//!   the documents say each setting may be given: `VIPD_API_SOCKET` (the
//!   node's socket in the lab dir, for vipd and vipctl), `VIPD_CONFIG`
//!   (a lab file standing for the edited /etc/vipd/vipd.toml; it sets
//!   nothing, so every documented command runs with the defaults), and the
//!   cluster's ZooKeeper credential: `CREDENTIALS_DIRECTORY` for vipd (as
//!   systemd's LoadCredential= gives it) and `VIPD_ZK_AUTH_FILE` for vipctl.
//! - Lines run in document order, README.md first, as an operator
//!   follows them, and each must exit 0. `vipd` without a subcommand is
//!   the agent: it is started, must answer `vipctl status` (in cluster
//!   mode: with a leader elected), and keeps running for the lines after
//!   it until the next agent line or the end; then SIGTERM, and it must
//!   exit 0. A line with `--watch` must still be running after printing
//!   twice; then it is stopped. Every other line must exit 0 within 60 s.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind},
    lab::{Host, LabProcess, require_root, vipctl_bin, vipd_bin, wait_until},
};

/// The documents whose commands are run, from the workspace root.
const DOCS: [&str; 2] = ["README.md", "docs/OPERATIONS.md"];

/// The documents' example ZooKeeper servers, by the index of the lab
/// ensemble member standing in for each.
const SERVERS: &[(&str, usize)] = &[("zk1:2181", 0), ("zk2:2181", 1), ("zk3:2181", 2)];

/// Shell substitutions a documented command may contain; the shell in
/// the lab node's namespace evaluates them.
const SUBSTITUTIONS: &[&str] = &["$(hostname)"];

/// Words after which a program name is run as a command.
const OPERATORS: &[&str] = &["&&", "||", ";", "|", "&", "|&"];
const WRAPPERS: &[&str] = &[
    "sudo", "env", "exec", "time", "nohup", "watch", "timeout", "xargs", "then", "do",
];

/// The lab's subnets and loopback: the only addresses a command may name.
const LAB_NETS: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
];

/// How a documented command is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The agent: started, checked ready, stopped later.
    Agent,
    /// `--watch`: keeps printing until interrupted.
    Watch,
    /// Runs and exits.
    OneShot,
}

/// One documented command line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DocCommand {
    /// `README.md:52`.
    at: String,
    /// The line as the document has it.
    written: String,
    /// What the shell runs: comment stripped, servers mapped.
    run: String,
    kind: Kind,
}

/// The logical lines (continuations joined) of the shell code blocks,
/// with the number of the line each starts on.
fn shell_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block: Option<bool> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_block = match in_block {
                None => Some(matches!(info.trim(), "sh" | "bash" | "shell")),
                Some(_) => None,
            };
            continue;
        }
        if in_block != Some(true) {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if !acc.is_empty() {
            acc.push(' ');
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                acc.push_str(part.trim_end());
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(trimmed.trim_end());
                out.push((start, acc));
            }
        }
    }
    out.extend(pending);
    out
}

/// The line without a trailing shell comment (`#` starting a word outside
/// quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return line[..i].trim_end(),
            None => {}
        }
        prev = c;
    }
    line.trim_end()
}

/// Words split on whitespace outside quotes (quotes kept).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn program(word: &str) -> Option<&'static str> {
    match Path::new(word.trim_matches(['"', '\'']))
        .file_name()?
        .to_str()?
    {
        "vipd" => Some("vipd"),
        "vipctl" => Some("vipctl"),
        _ => None,
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

fn in_lab(ip: Ipv4Addr) -> bool {
    LAB_NETS.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - u32::from(*len));
        u32::from(ip) & mask == u32::from(*net) & mask
    })
}

/// The commands of one document, and a message for each line that the
/// rules above cannot run. `servers` maps the documents' example servers
/// to the lab's; `vipd_subcommands` are the words that make `vipd` a
/// one-shot command.
fn extract(
    doc: &str,
    text: &str,
    servers: &[(String, String)],
    vipd_subcommands: &[String],
) -> (Vec<DocCommand>, Vec<String>) {
    let mut commands = Vec::new();
    let mut errors = Vec::new();
    for (line_no, line) in shell_lines(text) {
        let at = format!("{doc}:{line_no}");
        let cmd = strip_comment(&line).trim();
        let ws = words(cmd);
        let Some(first) = ws.iter().position(|w| !is_assignment(w)) else {
            continue;
        };
        let ours = program(&ws[first]);
        let hidden: Vec<&String> = ws
            .iter()
            .enumerate()
            .skip(first + 1)
            .filter(|(j, w)| {
                program(w).is_some()
                    && (OPERATORS.contains(&ws[j - 1].as_str())
                        || WRAPPERS.contains(&ws[j - 1].as_str())
                        || ws[j - 1].ends_with(';'))
            })
            .map(|(_, w)| w)
            .collect();
        let hidden_first = ours.is_none()
            && WRAPPERS.contains(&ws[first].as_str())
            && ws.iter().skip(first + 1).any(|w| program(w).is_some());
        if !hidden.is_empty() || hidden_first {
            errors.push(format!(
                "{at}: `{line}` runs vipd or vipctl behind another command; write it as a \
                 line of its own, or teach tests/tests/docs_commands.rs"
            ));
            continue;
        }
        let Some(prog) = ours else { continue };
        if let Some(op) = ws.iter().find(|w| OPERATORS.contains(&w.as_str())) {
            errors.push(format!(
                "{at}: `{line}` is a compound command (`{op}`); write each command on a line \
                 of its own, or teach tests/tests/docs_commands.rs"
            ));
            continue;
        }
        let mut bad = Vec::new();
        if cmd.contains('`') {
            bad.push("a backquote substitution".to_string());
        }
        for (i, _) in cmd.match_indices('$') {
            if !SUBSTITUTIONS.iter().any(|s| cmd[i..].starts_with(s)) {
                bad.push(format!(
                    "the shell expansion at `{}` (allowed: {SUBSTITUTIONS:?})",
                    &cmd[i..]
                ));
            }
        }
        let mut rest = cmd;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            match after.find('>') {
                Some(close)
                    if close > 0
                        && after[..close]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || " _-.".contains(c)) =>
                {
                    bad.push(format!("the placeholder <{}>", &after[..close]));
                    rest = &after[close + 1..];
                }
                _ => rest = after,
            }
        }
        let mut run = cmd.to_string();
        for (example, lab) in servers {
            run = run.replace(example.as_str(), lab);
        }
        for token in run.split(|c: char| c.is_whitespace() || ",=\"'".contains(c)) {
            if let Some((host, port)) = token.rsplit_once(':')
                && !host.is_empty()
                && !host.contains(['[', ']', ':', '/'])
                && !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && host.parse::<Ipv4Addr>().is_err()
            {
                bad.push(format!(
                    "the server {token} (map it in SERVERS, tests/tests/docs_commands.rs)"
                ));
            }
        }
        for token in run.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
            if let Ok(ip) = token.parse::<Ipv4Addr>()
                && !in_lab(ip)
            {
                bad.push(format!(
                    "the address {ip}, outside the lab's subnets (use 192.0.2.0/24 for VIPs)"
                ));
            }
        }
        if !bad.is_empty() {
            errors.push(format!(
                "{at}: `{line}` cannot be run in the lab: {}",
                bad.join("; ")
            ));
            continue;
        }
        let rws = words(&run);
        let kind = if rws.iter().any(|w| w == "--watch") {
            Kind::Watch
        } else if prog == "vipd"
            && !rws.iter().any(|w| {
                vipd_subcommands.contains(w)
                    || ["--help", "-h", "--version", "-V"].contains(&w.as_str())
            })
        {
            Kind::Agent
        } else {
            Kind::OneShot
        };
        commands.push(DocCommand {
            at,
            written: line.clone(),
            run,
            kind,
        });
    }
    (commands, errors)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// vipd's subcommands, from its own `--help` (the `Commands:` section).
fn vipd_subcommands() -> Vec<String> {
    let out = Command::new(vipd_bin())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run vipd --help");
    assert!(out.status.success(), "vipd --help failed");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let subs: Vec<String> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(
        subs.iter().any(|s| s == "check-config"),
        "no Commands: section with check-config in vipd --help:\n{help}"
    );
    subs
}

/// The lab node and what every documented command runs with.
struct Runner<'a> {
    host: &'a Host,
    env: Vec<String>,
    socket: String,
}

impl Runner<'_> {
    fn argv<'s>(&'s self, prefix: &[&'s str], script: &'s str) -> Vec<&'s str> {
        let mut argv = vec!["env", "-i"];
        argv.extend(self.env.iter().map(String::as_str));
        argv.extend_from_slice(prefix);
        argv.extend(["sh", "-c", script]);
        argv
    }

    fn spawn(&self, cmd: &DocCommand) -> LabProcess {
        let script = format!("exec {}", cmd.run);
        self.host.spawn(self.argv(&[], &script))
    }

    /// `vipctl status --json` through the lab's own flags, if it answers.
    fn status(&self) -> Option<serde_json::Value> {
        let bin = vipctl_bin().display().to_string();
        let out = self.host.exec(&[
            bin.as_str(),
            "status",
            "--json",
            "--api-socket",
            &self.socket,
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts the agent and waits until it answers, with a leader in
    /// cluster mode; a message if it does not.
    fn start_agent(&self, cmd: &DocCommand) -> Result<LabProcess, String> {
        let p = self.spawn(cmd);
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            if let Some(status) = p.try_status() {
                exited = Some(status);
                return true;
            }
            self.status().is_some_and(|s| {
                s["last_reconcile"]["passes"].as_u64().unwrap_or(0) > 0
                    && (s["zookeeper"].is_null() || !s["zookeeper"]["leader"].is_null())
            })
        });
        match (exited, ready) {
            (Some(status), _) => Err(format!("exited ({status}): {}", p.stderr())),
            (None, Err(e)) => Err(format!(
                "never ready (vipctl status): {e}; last status {:?}; stderr: {}",
                self.status(),
                p.stderr()
            )),
            (None, Ok(_)) => Ok(p),
        }
    }
}

/// SIGTERM to a running agent: it must stop and exit 0.
fn stop_agent(at: &str, p: LabProcess) -> Result<(), String> {
    if let Some(status) = p.try_status() {
        return Err(format!(
            "{at}: the agent died before it was stopped ({status}): {}",
            p.stderr()
        ));
    }
    let status = p.terminate(Duration::from_secs(20));
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{at}: the agent exited {status} on SIGTERM: {}",
            p.stderr()
        ))
    }
}

#[test]
fn every_documented_vipd_and_vipctl_command_runs_as_written() {
    require_root();
    let subcommands = vipd_subcommands();
    let cluster = Cluster::new("docs", ZkKind::Ensemble, 1);
    let servers: Vec<(String, String)> = SERVERS
        .iter()
        .map(|(example, i)| (example.to_string(), cluster.zk.addr(*i).to_string()))
        .collect();
    let mut commands = Vec::new();
    let mut errors = Vec::new();
    for doc in DOCS {
        let path = workspace_root().join(doc);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let (c, e) = extract(doc, &text, &servers, &subcommands);
        assert!(
            !c.is_empty() || !e.is_empty(),
            "{doc} shows no vipd or vipctl command in a ```sh block: has the document moved?"
        );
        commands.extend(c);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "documented commands this test cannot run:\n{}",
        errors.join("\n")
    );

    let node = &cluster.nodes[0];
    let config = cluster.lab.dir().join("docs-vipd.toml");
    std::fs::write(
        &config,
        "# stands for the edited /etc/vipd/vipd.toml of the documents: the defaults\n",
    )
    .expect("write the lab's vipd.toml");
    let bin_dir = vipd_bin()
        .parent()
        .expect("vipd has a directory")
        .display()
        .to_string();
    let socket = node.socket.display().to_string();
    let runner = Runner {
        host: &node.host,
        env: vec![
            format!("PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"),
            format!("VIPD_API_SOCKET={socket}"),
            format!("VIPD_CONFIG={}", config.display()),
            // The cluster credential as the documents give it: to vipd by
            // systemd (LoadCredential=vipd-zk:...), to vipctl through
            // VIPD_ZK_AUTH_FILE.
            format!(
                "CREDENTIALS_DIRECTORY={}",
                node.host
                    .zk_credential_file()
                    .parent()
                    .expect("in a directory")
                    .display()
            ),
            format!(
                "VIPD_ZK_AUTH_FILE={}",
                node.host.zk_credential_file().display()
            ),
        ],
        socket,
    };

    let mut agent: Option<(String, LabProcess)> = None;
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for cmd in &commands {
        let t = Instant::now();
        let outcome: Result<String, String> = match cmd.kind {
            Kind::Agent => {
                if let Some((at, p)) = agent.take()
                    && let Err(e) = stop_agent(&at, p)
                {
                    failures.push(e);
                }
                match runner.start_agent(cmd) {
                    Ok(p) => {
                        agent = Some((cmd.at.clone(), p));
                        Ok("agent ready".into())
                    }
                    Err(e) => Err(e),
                }
            }
            Kind::Watch => {
                let p = runner.spawn(cmd);
                let printed =
                    wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
                        !p.is_running() || p.stdout().matches("role").count() >= 2
                    });
                let result = if !p.is_running() {
                    Err(format!(
                        "exited ({:?}) instead of refreshing: {}",
                        p.try_status(),
                        p.stderr()
                    ))
                } else if let Err(e) = printed {
                    Err(format!("did not print twice: {e}: {}", p.stdout()))
                } else {
                    Ok("refreshed, stopped".into())
                };
                p.terminate(Duration::from_secs(5));
                result
            }
            Kind::OneShot => {
                let out = node.host.exec(&runner.argv(&["timeout", "60"], &cmd.run));
                if out.status.success() {
                    Ok("exit 0".into())
                } else {
                    Err(format!(
                        "{}: {}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr),
                        String::from_utf8_lossy(&out.stdout)
                    ))
                }
            }
        };
        let took = t.elapsed();
        match outcome {
            Ok(what) => report.push(format!(
                "{}: `{}` -> {what} ({took:.1?})",
                cmd.at, cmd.written
            )),
            Err(e) => {
                report.push(format!(
                    "{}: `{}` -> FAILED ({took:.1?})",
                    cmd.at, cmd.written
                ));
                failures.push(format!(
                    "{}: `{}` (ran `{}`): {e}",
                    cmd.at, cmd.written, cmd.run
                ));
            }
        }
    }
    if let Some((at, p)) = agent.take()
        && let Err(e) = stop_agent(&at, p)
    {
        failures.push(e);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "documented commands that did not run as written:\n{}",
        failures.join("\n")
    );
}

/// The extraction rules, on a made-up document (no root needed).
#[test]
fn extraction_follows_the_rules() {
    let doc = r#"
Prose mentions `vipctl status`, which is not a code block.

```sh
vipd --zk zk1:2181,zk2:2181 --node-id "$(hostname)"   # the agent
vipctl vip set --zk zk1:2181 web \
    192.0.2.100
VIPD_ZK=zk2:2181 vipctl vip list --json
vipctl arp stats --watch
vipd check-config
systemctl enable --now vipd
```

```ini
ExecStopPost=vipctl cleanup
```

```
vipctl ignored in a block without a shell tag
```

```sh
sudo vipctl status
vipctl status | jq .
apt update && vipctl cleanup
vipctl vip set --zk zk9:2181 web 192.0.2.1
vipctl vip set --zk zk1:2181 web 10.0.0.1
vipd --node-id "$USER"
vipctl vip set --zk zk1:2181 <service> 192.0.2.1
```
"#;
    let servers = vec![
        ("zk1:2181".to_string(), "198.51.100.2:2281".to_string()),
        ("zk2:2181".to_string(), "198.51.100.3:2282".to_string()),
    ];
    let (commands, errors) = extract("DOC.md", doc, &servers, &["check-config".to_string()]);
    let got: Vec<(&str, &str, Kind)> = commands
        .iter()
        .map(|c| (c.at.as_str(), c.run.as_str(), c.kind))
        .collect();
    assert_eq!(
        got,
        [
            (
                "DOC.md:5",
                "vipd --zk 198.51.100.2:2281,198.51.100.3:2282 --node-id \"$(hostname)\"",
                Kind::Agent
            ),
            (
                "DOC.md:6",
                "vipctl vip set --zk 198.51.100.2:2281 web 192.0.2.100",
                Kind::OneShot
            ),
            (
                "DOC.md:8",
                "VIPD_ZK=198.51.100.3:2282 vipctl vip list --json",
                Kind::OneShot
            ),
            ("DOC.md:9", "vipctl arp stats --watch", Kind::Watch),
            ("DOC.md:10", "vipd check-config", Kind::OneShot),
        ]
    );
    let expect = [
        ("DOC.md:23", "behind another command"),
        ("DOC.md:24", "compound command"),
        ("DOC.md:25", "behind another command"),
        ("DOC.md:26", "the server zk9:2181"),
        ("DOC.md:27", "the address 10.0.0.1"),
        ("DOC.md:28", "the shell expansion at `$USER\"`"),
        ("DOC.md:29", "the placeholder <service>"),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for (e, (at, what)) in errors.iter().zip(expect) {
        assert!(
            e.starts_with(at) && e.contains(what),
            "{e} (expected {at}: {what})"
        );
    }
}
