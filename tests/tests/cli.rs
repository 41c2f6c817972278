//! vipd's and vipctl's command lines as operators type them:
//! every option before or after the subcommand, with the environment and
//! the configuration file still in force; and vipctl against a ZooKeeper
//! that is not there yet, is still starting, or takes connections but
//! does not answer.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use vipd_tests::{
    lab::{Host, HostIf, Lab, require_root, succeeded, vipctl_bin, vipd_bin},
    zk::ZkServer,
};

/// The lab's ZooKeeper host (the zk.rs launcher listens on port 2181 there).
const ZK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const ZK: &str = "203.0.113.2:2181";
/// README's form of `vipctl vip set`: the options after `set`.
const SET_WEB: [&str; 9] = [
    "vip",
    "set",
    "--zk",
    ZK,
    "--cluster",
    "prod",
    "web",
    "192.0.2.100",
    "192.0.2.101",
];
/// An address on the segment that no host has.
const NOBODY: &str = "203.0.113.9:2181";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A ZooKeeper host (address only, no server yet) and an admin host on br2.
fn lab(hint: &str) -> (Lab, Host, Host) {
    require_root();
    let lab = Lab::new(hint);
    let zk = lab.add_host("zk", &[HostIf::on(2, "203.0.113.2/24")]);
    let admin = lab.add_host("admin", &[HostIf::on(2, "203.0.113.5/24")]);
    (lab, zk, admin)
}

/// `vipctl <args>` on `host`, with no VIPD_* variable from our environment
/// but the lab's cluster credential (VIPD_ZK_AUTH_FILE, as an operator's
/// shell has it).
fn vipctl(host: &Host, args: &[&str]) -> Output {
    vipctl_env(host, &[], args)
}

fn vipctl_env(host: &Host, env: &[&str], args: &[&str]) -> Output {
    let credential = format!("VIPD_ZK_AUTH_FILE={}", host.zk_credential_file().display());
    vipctl_bare(host, &[&[credential.as_str()], env].concat(), args)
}

/// `vipctl <args>` on `host` with nothing but `env` (no credential).
fn vipctl_bare(host: &Host, env: &[&str], args: &[&str]) -> Output {
    let bin = vipctl_bin().display().to_string();
    let mut argv = vec!["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
    argv.extend_from_slice(env);
    argv.push(&bin);
    argv.extend_from_slice(args);
    host.exec(&argv)
}

/// The services in `vipctl vip list --json`.
fn services(host: &Host, cluster: &str) -> serde_json::Value {
    let out = vipctl(
        host,
        &["vip", "list", "--json", "--zk", ZK, "--cluster", cluster],
    );
    let v: serde_json::Value = serde_json::from_str(&succeeded(&out, "vipctl vip list --json"))
        .expect("vip list --json prints JSON");
    v["services"].clone()
}

/// Issue 11, item 3: `vipctl vip set` started before ZooKeeper, which
/// comes up about 1.5 s later, must wait for it and succeed (it failed at
/// once with `no available hosts`).
#[test]
fn vipctl_waits_for_a_zookeeper_that_is_starting() {
    let (lab, zk_host, admin) = lab("cli-zk-start");
    let bin = vipctl_bin().display().to_string();
    let started = Instant::now();
    // A long connect timeout: how long the JVM takes to start on a busy
    // machine is not what this test is about; that vipctl waits is.
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(&SET_WEB);
    argv.extend_from_slice(&["--connect-timeout", "120s"]);
    let p = admin.spawn(argv);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        p.is_running(),
        "vipctl gave up before ZooKeeper was started: {}",
        p.stderr()
    );
    let zk = ZkServer::start_standalone(ZK_IP, Some(zk_host.netns()));
    let serving = started.elapsed();
    let status = p
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("vipctl still waits 30 s after ZooKeeper served"));
    let done = started.elapsed();
    eprintln!("ZooKeeper served after {serving:?}; vipctl finished after {done:?}");
    assert!(status.success(), "vipctl failed ({status}): {}", p.stderr());
    assert_eq!(p.stdout(), "web: 192.0.2.100 192.0.2.101\n");
    assert_eq!(
        services(&admin, "prod"),
        serde_json::json!({"web": ["192.0.2.100", "192.0.2.101"]})
    );
    drop(zk);
    drop(lab);
}

/// Issue 11, item 3: when vipctl gives up it names every server it tried
/// and what each did: refused, timed out (or no route), and a ZooKeeper
/// that takes the connection but opens no session (frozen with SIGSTOP).
#[test]
fn vipctl_gives_up_naming_each_server_and_what_it_did() {
    let (lab, zk_host, admin) = lab("cli-zk-giveup");
    let hosts = format!("{ZK},{NOBODY}");
    let t = Instant::now();
    let out = vipctl(
        &admin,
        &["vip", "list", "--zk", &hosts, "--connect-timeout", "4s"],
    );
    let waited = t.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "vipctl gave up after {waited:?}, not after its 4 s connect timeout: {err}"
    );
    assert!(
        err.contains(&format!("{ZK}: connection refused")),
        "the refusing server must be named: {err}"
    );
    let nobody = err
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{NOBODY}:")))
        .unwrap_or_else(|| panic!("the silent address must be named: {err}"));
    assert!(
        nobody.contains("timed out") || nobody.contains("No route to host"),
        "{nobody}"
    );

    // A server that takes TCP connections but answers nothing.
    let mut zk = ZkServer::start_standalone(ZK_IP, Some(zk_host.netns()));
    zk.freeze(0);
    let out = vipctl(
        &admin,
        &["vip", "list", "--zk", ZK, "--connect-timeout", "3s"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{ZK}: accepted the connection but opened no session"
        )) && err.contains("not serving yet"),
        "{err}"
    );
    zk.thaw(0);
    succeeded(
        &vipctl(
            &admin,
            &["vip", "list", "--zk", ZK, "--connect-timeout", "30s"],
        ),
        "vipctl vip list after the thaw",
    );
    drop(zk);
    drop(lab);
}

/// Issue 11, item 2: vipctl's options before or after each subcommand,
/// and from the environment, against a real ZooKeeper.
#[test]
fn vipctl_options_stand_before_or_after_the_subcommand() {
    let (lab, zk_host, admin) = lab("cli-vipctl-opts");
    let zk = ZkServer::start_standalone(ZK_IP, Some(zk_host.netns()));
    // README's form: the options after `set`.
    let out = vipctl(&admin, &SET_WEB);
    assert_eq!(
        succeeded(&out, "vip set --zk .."),
        "web: 192.0.2.100 192.0.2.101\n"
    );
    // Before `vip`, between `vip` and `add`, mixed with the positionals.
    for (args, what) in [
        (
            format!("--zk {ZK} --cluster prod vip add web 192.0.2.102"),
            "vipctl --zk .. vip add",
        ),
        (
            format!("vip --zk {ZK} remove web 192.0.2.100 --cluster prod"),
            "vipctl vip --zk .. remove .. --cluster",
        ),
        (
            format!("vip add --cluster other db --zk {ZK} 192.0.2.110"),
            "vip add into another cluster",
        ),
    ] {
        let args: Vec<&str> = args.split_whitespace().collect();
        succeeded(&vipctl(&admin, &args), what);
    }
    assert_eq!(
        services(&admin, "prod"),
        serde_json::json!({"web": ["192.0.2.101", "192.0.2.102"]})
    );
    // The environment still works, and a flag beats it.
    let zk_env = format!("VIPD_ZK={ZK}");
    let out = vipctl_env(
        &admin,
        &[&zk_env, "VIPD_CLUSTER=prod"],
        &["--json", "vip", "list"],
    );
    let v: serde_json::Value =
        serde_json::from_str(&succeeded(&out, "VIPD_ZK=.. vipctl --json vip list")).expect("JSON");
    assert_eq!(
        v["services"]["web"],
        serde_json::json!(["192.0.2.101", "192.0.2.102"])
    );
    let out = vipctl_env(
        &admin,
        &[&zk_env, "VIPD_CLUSTER=prod"],
        &["vip", "list", "--json", "--cluster", "other"],
    );
    let v: serde_json::Value =
        serde_json::from_str(&succeeded(&out, "--cluster over VIPD_CLUSTER")).expect("JSON");
    assert_eq!(v["services"], serde_json::json!({"db": ["192.0.2.110"]}));
    // Without servers, or with an option another command owns: exit 2,
    // nothing written.
    let out = vipctl(&admin, &["vip", "clear", "web", "--cluster", "prod"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--zk"), "{}", text(&out.stderr));
    let out = vipctl(
        &admin,
        &[
            "vip",
            "clear",
            "web",
            "--zk",
            ZK,
            "--cluster",
            "prod",
            "--watch",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--watch"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        services(&admin, "prod"),
        serde_json::json!({"web": ["192.0.2.101", "192.0.2.102"]})
    );
    drop(zk);
    drop(lab);
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("vipd-cli-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vipd <args>` with only `env` as its environment.
fn vipd(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(vipd_bin())
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vipd")
}

/// `key = "value"  # source` lines of `vipd check-config`.
fn effective(out: &Output) -> BTreeMap<String, (String, String)> {
    vipd_tests::lab::check_config_settings(&out.stdout)
}

/// Issue 11, item 2: `vipd check-config --config FILE` (the way
/// `nginx -t -c FILE` is used) and `vipd --config FILE check-config` check
/// the same file; the environment and flags keep their precedence on
/// either side of the subcommand.
#[test]
fn vipd_check_config_takes_its_file_before_or_after_the_subcommand() {
    let scratch = Scratch::new("check-config");
    let file = scratch.0.join("vipd.toml");
    std::fs::write(
        &file,
        "zk = \"zk1:2181\"\ncluster = \"prod\"\ngarp_rounds = 3\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    for args in [
        &["check-config", "--config", f][..],
        &["--config", f, "check-config"],
    ] {
        let out = vipd(args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("# configuration is valid"));
        let e = effective(&out);
        assert_eq!(e["config"], (f.to_string(), "flag".into()), "{args:?}");
        assert_eq!(e["zk"], ("zk1:2181".into(), "file".into()), "{args:?}");
        assert_eq!(e["cluster"], ("prod".into(), "file".into()), "{args:?}");
        assert_eq!(e["garp_rounds"], ("3".into(), "file".into()), "{args:?}");
    }
    // The file named through the environment, a value from the
    // environment, and a flag after the subcommand beating both.
    let out = vipd(
        &["check-config", "--garp-rounds", "5"],
        &[("VIPD_CONFIG", f), ("VIPD_CLUSTER", "staging")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = effective(&out);
    assert_eq!(e["config"], (f.to_string(), "environment".into()));
    assert_eq!(e["cluster"], ("staging".into(), "environment".into()));
    assert_eq!(e["garp_rounds"], ("5".into(), "flag".into()));
    // A file that is not there, named after the subcommand: exit 2, named.
    let missing = scratch.0.join("missing.toml");
    let m = missing.to_str().unwrap();
    let out = vipd(&["check-config", "--config", m], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(m), "{}", text(&out.stderr));
    // A bad key in the file is refused whichever side names the file.
    let bad = scratch.0.join("bad.toml");
    std::fs::write(&bad, "garp_intervall = \"5s\"\n").unwrap();
    let b = bad.to_str().unwrap();
    for args in [
        &["check-config", "--config", b][..],
        &["--config", b, "check-config"],
    ] {
        let out = vipd(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("garp_intervall"), "{args:?}");
    }
    assert!(Path::new(f).exists());
}

/// `--zk-auth-file` as an operator uses it: vipctl writes with the
/// credential (the znode then refuses writes without it, and still reads
/// for anyone), and a missing or malformed file is refused naming the file,
/// with nothing written.
#[test]
fn vipctl_zk_auth_file_writes_with_the_credential_and_refuses_a_bad_file() {
    let (lab, zk_host, admin) = lab("cli-vipctl-auth");
    let zk = ZkServer::start_standalone(ZK_IP, Some(zk_host.netns()));
    let good = lab.dir().join("zk-auth");
    std::fs::write(&good, "ops:s3cret\n").expect("writing the auth file");
    let bad = lab.dir().join("zk-auth-bad");
    std::fs::write(&bad, "no colon here\n").expect("writing the bad auth file");
    let missing = lab.dir().join("zk-auth-missing");
    let (good, bad, missing) = (
        good.display().to_string(),
        bad.display().to_string(),
        missing.display().to_string(),
    );
    let set = |auth: Option<&str>, vip: &str| {
        let mut args = vec!["vip", "set", "--zk", ZK, "--cluster", "auth"];
        if let Some(f) = auth {
            args.extend(["--zk-auth-file", f]);
        }
        args.extend(["web", vip]);
        vipctl_bare(&admin, &[], &args)
    };
    assert_eq!(
        succeeded(
            &set(Some(&good), "192.0.2.100"),
            "vip set with the credential"
        ),
        "web: 192.0.2.100\n"
    );
    // Without it: refused by ZooKeeper (the znode's ACL), exit 1.
    let anon = set(None, "192.0.2.101");
    assert_eq!(anon.status.code(), Some(1), "{}", text(&anon.stderr));
    for (file, what) in [(&missing, "missing"), (&bad, "malformed")] {
        let out = set(Some(file), "192.0.2.102");
        assert!(!out.status.success(), "a {what} auth file was accepted");
        let err = text(&out.stderr);
        assert!(
            err.contains(file.as_str()),
            "the error for a {what} auth file does not name it: {err}"
        );
    }
    // Nothing but the first write landed; anyone may read it.
    assert_eq!(
        services(&admin, "auth"),
        serde_json::json!({"web": ["192.0.2.100"]})
    );
    drop(zk);
}
