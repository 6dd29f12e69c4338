//! The command line: `check` on fixtures, bad input, exit codes, the demo.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use support::*;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn check(path: &Path) -> (i32, String, String) {
    let out = ringlb_command(&["check", "--config", path.to_str().unwrap()])
        .output()
        .expect("run ringlb check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_valid_fixture() {
    let files = fixtures("valid");
    assert!(files.len() >= 3, "valid fixtures missing: {files:?}");
    for f in files {
        let (code, stdout, stderr) = check(&f);
        assert_eq!(code, 0, "{}: {stderr}", f.display());
        assert!(stdout.contains("OK ("), "{}: {stdout}", f.display());
        assert!(
            stdout.contains("service "),
            "check prints what would be served: {stdout}"
        );
    }
}

/// Each invalid fixture states in `# expect: ...` lines what `check` must print.
#[test]
fn check_rejects_every_invalid_fixture_with_located_errors() {
    let files = fixtures("invalid");
    assert!(files.len() >= 8, "invalid fixtures missing: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no '# expect:' line",
            f.display()
        );
        let (code, _, stderr) = check(&f);
        assert_eq!(code, 1, "{} must be rejected: {stderr}", f.display());
        for e in expects {
            assert!(
                stderr.contains(e),
                "{}: expected {e:?} in:\n{stderr}",
                f.display()
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_config_file_is_a_clear_runtime_error() {
    let (code, _, stderr) = check(Path::new("/nonexistent/ringlb.yaml"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/ringlb.yaml: cannot read"),
        "{stderr}"
    );
    let out = ringlb_command(&["run", "--config", "/nonexistent/ringlb.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ringlb.yaml: cannot read"));
}

#[test]
fn usage_errors_exit_2_with_one_clear_line() {
    for (args, needle) in [
        (vec!["run", "--bogus"], "--bogus"),
        (
            vec!["run", "--listen", "127.0.0.1:x", "--to", "127.0.0.1:1"],
            "invalid value '127.0.0.1:x' for '--listen",
        ),
        (
            vec!["run", "--listen", "127.0.0.1:0", "--to", "nope"],
            "invalid value 'nope' for '--to",
        ),
        (vec!["run", "--listen", "127.0.0.1:0"], "--to"),
        (vec!["run", "--listen", "127.0.0.1:0", "--to"], "--to"),
        (
            vec![
                "run",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:1",
                "--scheduler",
                "fastest",
            ],
            "unknown scheduler",
        ),
        (
            vec![
                "run",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:1",
                "--io-driver",
                "kqueue",
            ],
            "kqueue",
        ),
        (vec!["run"], "--listen"),
    ] {
        let out = ringlb_command(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

/// A duration flag longer than the runtime's clock holds, or than the flag makes sense for, is
/// a usage error at start: such values used to be accepted, then panicked every worker at its
/// first connection (or the process at SIGTERM).
#[test]
fn overlong_duration_flags_exit_2_and_say_the_limit() {
    const TIMER: &str = "is longer than 100y, the longest timer";
    for (flag, value, reason) in [
        ("--idle-timeout", "1000000000y", TIMER),
        ("--connect-timeout", "1000000000y", TIMER),
        ("--drain-timeout", "9223372036854775807s", TIMER),
        ("--backend-drain-timeout", "1000000000y", TIMER),
        ("--udp-coalesce", "1s", "is longer than 10ms"),
        ("--busy-poll", "1h", "is longer than 1s"),
    ] {
        let args = [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:1",
            flag,
            value,
        ];
        let err = Ringlb::try_start(&args)
            .err()
            .unwrap_or_else(|| panic!("{flag} {value} must be refused"));
        assert_eq!(err.status.code(), Some(2), "{flag}: {}", err.stderr);
        let head = format!("invalid value '{value}' for '{flag} <DURATION>': \"{value}\" {reason}");
        assert!(err.stderr.contains(&head), "{flag}: {}", err.stderr);
        assert!(!err.stderr.contains("panicked"), "{}", err.stderr);
    }
}

#[test]
fn a_port_in_use_is_a_runtime_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = Ringlb::try_start(&["run", "--listen", &addr, "--to", "127.0.0.1:1"])
        .err()
        .expect("must fail");
    assert_eq!(err.status.code(), Some(1), "{}", err.stderr);
    assert!(
        err.stderr
            .contains(&format!("cannot listen on {addr}: address already in use")),
        "{}",
        err.stderr
    );
}

/// A frontend on port 0 (node mode's portals) when the kernel has no ephemeral port left: the
/// error says so and names the range, not "address already in use".
#[test]
fn a_used_up_port_range_is_named() {
    let Some(ns) = netns::netns("ports") else {
        return;
    };
    // One ephemeral port in this namespace: the first ringlb takes it.
    ns.sysctl("net.ipv4.ip_local_port_range=40000 40000");
    let args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:1",
        "--workers",
        "1",
    ];
    let _first = Ringlb::start_in_netns(&ns.0, &args);
    let mut second = std::process::Command::new("ip");
    second
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_ringlb")])
        .args(args);
    let err = Ringlb::try_start_command(second)
        .err()
        .expect("no port is left for the second");
    assert_eq!(err.status.code(), Some(1), "{}", err.stderr);
    assert!(
        err.stderr.contains(
            "cannot listen on 127.0.0.1:0: no free port left in net.ipv4.ip_local_port_range"
        ),
        "{}",
        err.stderr
    );
}

#[test]
fn a_second_ringlb_does_not_silently_share_the_port() {
    for proto in ["tcp", "udp"] {
        let first = Ringlb::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:1",
            "--proto",
            proto,
            "--workers",
            "2",
        ]);
        let addr = first.addr().to_string();
        let second = [
            "run",
            "--listen",
            &addr,
            "--to",
            "127.0.0.1:1",
            "--proto",
            proto,
        ];
        let err = Ringlb::try_start(&second)
            .err()
            .unwrap_or_else(|| panic!("{proto}: a second ringlb must fail"));
        assert_eq!(err.status.code(), Some(1), "{proto}: {}", err.stderr);
        assert!(
            err.stderr.contains("address already in use"),
            "{proto}: {}",
            err.stderr
        );
        // ... unless asked to.
        let shared = Ringlb::start(&[&second[..], &["--share-port"]].concat());
        assert_eq!(shared.addr(), first.addr(), "{proto}");
    }
}

#[test]
fn demo_runs_a_burst_through_ringlb_and_exits_with_once() {
    let stdout = run_ok(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--requests",
        "300",
        "--concurrency",
        "8",
    ]);
    for name in ["backend-1", "backend-2", "backend-3"] {
        // Round robin over 3 backends: 100 each.
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(" 100 "), "uneven spread: {line}");
    }
    assert!(stdout.contains("failed           0"), "{stdout}");
    assert!(stdout.contains("p99"), "{stdout}");
}

#[test]
fn run_with_a_config_file_serves_every_service() {
    let web = name_server("web");
    let db1 = name_server("db-1");
    let db2 = name_server("db-2");
    let yaml = format!(
        "services:\n  - name: web\n    listen: [\"127.0.0.1:0\"]\n    backends: [{{address: \"{web}\"}}]\n  \
         - name: db\n    listen: [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n    scheduler: rr\n    \
         backends: [{{address: \"{db1}\"}}, {{address: \"{db2}\", weight: 2}}]\n"
    );
    let path = std::env::temp_dir().join(format!("ringlb-cli-test-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "1"]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(proxy.addrs.len(), 3, "three frontends: {:?}", proxy.addrs);
    assert_eq!(answer(proxy.addrs[0]), "web");
    let mut db: Vec<String> = (0..4).map(|i| answer(proxy.addrs[1 + i % 2])).collect();
    db.sort();
    assert_eq!(
        db,
        ["db-1", "db-1", "db-2", "db-2"],
        "rr over both db backends from both frontends"
    );
}

#[test]
fn check_reads_kubernetes_manifests_and_lists_what_is_not_proxied() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/k8s/valid");
    let stdout = run_ok(&[
        "check",
        "--config",
        dir.to_str().unwrap(),
        "--node-address",
        "127.0.0.1",
    ]);
    assert!(stdout.contains("OK (Kubernetes manifests,"), "{stdout}");
    assert!(
        stdout.contains("DNS only"),
        "headless and ExternalName services are reported: {stdout}"
    );
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/k8s/invalid/sctp.yaml");
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, 1);
    assert!(stderr.contains("SCTP is not supported"), "{stderr}");
}

/// The config examples of the README and of `docs/` stay valid: every ```` ```yaml ```` block of
/// `README.md` and `docs/*.md` is a ringlb config or a set of Kubernetes manifests and passes
/// `ringlb check`. A YAML block that is not a config (a fragment, a DaemonSet) is fenced
/// ```` ```yaml not-a-config ```` and skipped.
#[test]
fn every_yaml_example_of_the_docs_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = root.join("docs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(root).unwrap().display().to_string();
        for (line, block) in config_blocks(&text) {
            let path = write_config(&format!("docs-{checked}"), &block);
            let (code, _, stderr) = check(&path);
            std::fs::remove_file(&path).unwrap();
            assert_eq!(code, 0, "{name}:{line}: yaml block:\n{block}\n{stderr}");
            checked += 1;
        }
    }
    // README.md 1, configuration.md 3 (a full file, DNS names, manifests), operations.md 1.
    assert!(
        checked >= 5,
        "only {checked} yaml examples found in README.md and docs/*.md"
    );
}

/// The ```` ```yaml ```` blocks of a Markdown text with the line each starts on; blocks with
/// any other info string (```` ```yaml not-a-config ````, ```` ```sh ````) are skipped.
fn config_blocks(markdown: &str) -> Vec<(usize, String)> {
    // Outside a fence; inside one that is skipped; or inside a config block (its first line
    // and text so far).
    enum State {
        Outside,
        Skipped,
        Config(usize, String),
    }
    let mut blocks = Vec::new();
    let mut state = State::Outside;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        state = match (state, fence) {
            (State::Outside, Some(info)) if info.trim() == "yaml" => {
                State::Config(i + 2, String::new())
            }
            (State::Outside, Some(_)) => State::Skipped,
            (State::Skipped, Some(_)) => State::Outside,
            (State::Config(start, block), Some(_)) => {
                blocks.push((start, block));
                State::Outside
            }
            (State::Config(start, mut block), None) => {
                block.push_str(line);
                block.push('\n');
                State::Config(start, block)
            }
            (state, None) => state,
        };
    }
    blocks
}

#[test]
fn config_blocks_takes_yaml_fences_only() {
    let md =
        "```yaml\na: 1\n```\n```yaml not-a-config\nb: 2\n```\n```text\n```\n\n```yaml\nc: 3\n```\n";
    assert_eq!(
        config_blocks(md),
        [(2, "a: 1\n".to_owned()), (11, "c: 3\n".to_owned())]
    );
}
