//! Test support: start the `ringlb` binary, wait for its readiness lines, and small backends.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod admin;
pub mod attack;
pub mod backends;
pub mod load;
pub mod netns;
pub mod restart;

pub use backends::*;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long anything in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ringlb` process, killed on drop if still running.
pub struct Ringlb {
    child: Child,
    /// Frontend addresses from the `listening ...` lines, in order.
    pub addrs: Vec<SocketAddr>,
    /// The `ready ...` line.
    pub ready: String,
    /// Every stdout line before `ready` (`healthz addr=...`, `listening ...`).
    pub before_ready: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Receiver<String>,
    /// Every `ready` line read since: each worker's PID.
    readies: Mutex<Vec<String>>,
    /// `--handover-socket`.
    handover: String,
}

/// How a `ringlb` start failed.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

/// A handover socket path of this test process that no other ringlb uses.
pub fn test_handover_socket() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("ringlb-test-{}-{n}.sock", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

/// `args` with `--admin 127.0.0.1:0` added when they start ringlb from a config file or the
/// Kubernetes API and choose no admin address (neither `--admin` nor an `admin:` key): the
/// default admin port is fixed, and a taken admin port is a startup error, so tests that run
/// side by side each take a free one. Likewise a `run` without `--handover-socket` gets one
/// of its own: tests never touch the default path.
pub fn with_test_admin(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let running = args.first() == Some(&"run");
    if running && !args.contains(&"--handover-socket") {
        out.extend(["--handover-socket".to_owned(), test_handover_socket()]);
    }
    let from_file_or_api = args
        .iter()
        .any(|a| *a == "--config" || *a == "--kubernetes");
    let config_sets_admin = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .is_some_and(|text| text.lines().any(|l| l.starts_with("admin:")));
    if running && from_file_or_api && !args.contains(&"--admin") && !config_sets_admin {
        out.extend(["--admin".to_owned(), "127.0.0.1:0".to_owned()]);
    }
    out
}

pub fn ringlb_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    cmd.args(with_test_admin(args)).env(
        "RINGLB_LOG",
        std::env::var("RINGLB_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd
}

impl Ringlb {
    /// Starts `ringlb ARGS` and waits until it prints `ready`.
    pub fn start(args: &[&str]) -> Ringlb {
        match Self::try_start(args) {
            Ok(r) => r,
            Err(f) => panic!(
                "ringlb {args:?} failed to start ({}): {}",
                f.status, f.stderr
            ),
        }
    }

    /// Starts `ringlb ARGS`; `Err` when it exits before printing `ready`.
    pub fn try_start(args: &[&str]) -> Result<Ringlb, StartFailure> {
        Self::try_start_command(ringlb_command(args))
    }

    /// Starts `ringlb ARGS` inside network namespace `netns` (`ip netns exec`, which execs,
    /// so the child is ringlb itself).
    pub fn start_in_netns(netns: &str, args: &[&str]) -> Ringlb {
        Self::start_under(&["ip", "netns", "exec", netns], args)
    }

    /// Starts `ringlb ARGS` through `wrapper` (a program and its arguments that execs its last
    /// argument, such as `ip netns exec NS` or `prlimit --nofile=N:N --`, so the child is
    /// ringlb itself) and waits until it prints `ready`.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Ringlb {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_ringlb"))
            .args(with_test_admin(args))
            .env("RINGLB_LOG", "info");
        match Self::try_start_command(cmd) {
            Ok(r) => r,
            Err(f) => panic!(
                "{wrapper:?} ringlb {args:?} failed ({}): {}",
                f.status, f.stderr
            ),
        }
    }

    /// Starts `cmd` (a ringlb command line) and waits until it prints `ready`.
    pub fn try_start_command(mut cmd: Command) -> Result<Ringlb, StartFailure> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringlb");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, stdout) = mpsc::channel();
        let out_pipe = child.stdout.take().expect("stdout piped");
        thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = Vec::new();
        let mut before_ready = Vec::new();
        let ready;
        let deadline = Instant::now() + PATIENCE;
        loop {
            match stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("ready") => {
                    ready = line;
                    break;
                }
                Ok(line) => {
                    if let Some(addr) = line
                        .strip_prefix("listening ")
                        .and_then(|l| l.split("addr=").nth(1))
                    {
                        addrs.push(addr.trim().parse().expect("listening addr parses"));
                    }
                    before_ready.push(line);
                }
                Err(_) => {
                    let status = wait_timeout(&mut child, PATIENCE).unwrap_or_else(|| {
                        let _ = child.kill();
                        child.wait().expect("wait")
                    });
                    // Give the stderr reader a moment to drain what the process wrote.
                    let text = drain_text(&stderr);
                    return Err(StartFailure {
                        status,
                        stderr: text,
                    });
                }
            }
        }
        let handover = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .skip_while(|a| a != "--handover-socket")
            .nth(1)
            .unwrap_or_default();
        Ok(Ringlb {
            child,
            addrs,
            readies: Mutex::new(vec![ready.clone()]),
            ready,
            before_ready,
            stderr,
            stdout,
            handover,
        })
    }

    /// The first frontend address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The master's PID (the process `ringlb run` started as).
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// The PID of the worker that printed the `ready` line (the data plane).
    pub fn worker_pid(&self) -> i32 {
        pid_of(&self.ready)
    }

    /// The handover socket the master listens on (`--handover-socket`).
    pub fn handover_socket(&self) -> &str {
        &self.handover
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the PID of the child this test started and owns.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (panics after `PATIENCE`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_timeout(&mut self.child, PATIENCE).expect("ringlb did not exit in time")
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` (the log is read by another thread).
    pub fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} never logged:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address of the line before `ready` that starts with `prefix` (`healthz addr=`).
    pub fn addr_before_ready(&self, prefix: &str) -> SocketAddr {
        self.before_ready
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:?}", self.before_ready))
    }

    /// Stdout lines after the readiness lines.
    pub fn stdout_lines(&self) -> Vec<String> {
        let lines: Vec<String> = self.stdout.try_iter().collect();
        self.note_readies(&lines);
        lines
    }

    fn note_readies(&self, lines: &[String]) {
        let mut readies = self.readies.lock().unwrap();
        readies.extend(lines.iter().filter(|l| l.starts_with("ready")).cloned());
    }

    /// The PIDs of every worker that said it was ready, as far as read.
    fn workers_seen(&self) -> Vec<i32> {
        let lines: Vec<String> = self.stdout.try_iter().collect();
        self.note_readies(&lines);
        self.readies
            .lock()
            .unwrap()
            .iter()
            .map(|r| pid_of(r))
            .collect()
    }

    /// Waits for the next stdout line that starts with `prefix` (skipping others).
    pub fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.starts_with(prefix) => {
                    self.note_readies(std::slice::from_ref(&line));
                    return line;
                }
                Ok(line) => self.note_readies(&[line]),
                Err(_) => panic!("no {prefix:?} line from ringlb; stderr:\n{}", self.stderr()),
            }
        }
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // The workers too (they would drain on their own once the master is gone): those
            // still the master's children, so a PID reused since is left alone.
            let master = self.pid();
            for pid in self.workers_seen() {
                if parent_of(pid) == Some(master) {
                    // SAFETY: kill(2) with the PID of a child of the master this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The parent of process `pid` (`/proc/PID/stat`), if it runs.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, then the parent's PID.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `pid=` of a `ready` line.
pub fn pid_of(ready: &str) -> i32 {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {ready:?}"))
}

fn drain_text(text: &Arc<Mutex<String>>) -> String {
    // The reader thread ends at EOF, right after the process exit; poll briefly for it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = text.lock().unwrap().clone();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let now = text.lock().unwrap().clone();
        if now == last && !now.is_empty() {
            break;
        }
        last = now;
    }
    last
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `ringlb ARGS` to its end, asserts it succeeded and returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = ringlb_command(args).output().expect("run ringlb");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ringlb {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Quick-mode `ringlb run` on a free loopback port with `driver` and 2 workers, in front of
/// `backends`.
pub fn quick(driver: &str, backends: &[SocketAddr], extra: &[&str]) -> Ringlb {
    quick_with_workers(driver, 2, backends, extra)
}

/// As [`quick`] with `workers` workers.
pub fn quick_with_workers(
    driver: &str,
    workers: u16,
    backends: &[SocketAddr],
    extra: &[&str],
) -> Ringlb {
    let to = backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let workers = workers.to_string();
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--io-driver",
        driver,
        "--workers",
        &workers,
    ];
    args.extend_from_slice(extra);
    let proxy = Ringlb::start(&args);
    let want = if driver == "uring" {
        "driver=io_uring"
    } else {
        "driver=epoll"
    };
    assert!(
        proxy.ready.contains(want),
        "asked for {driver}, got: {}",
        proxy.ready
    );
    proxy
}

/// What a test that needs root or a system tool gets: `Some(value)` when `got` is `Ok`.
/// Otherwise, under `CI` (`.ci/run` sets it, runs as root and installs every tool the tests
/// use), the test fails, naming `what` is missing, why, and `how` to get it: there a test never
/// passes by skipping. Elsewhere it prints the same and returns `None`, and the test returns
/// at once (skipped).
pub fn require<T, E: std::fmt::Display>(got: Result<T, E>, what: &str, how: &str) -> Option<T> {
    match got {
        Ok(value) => Some(value),
        Err(why) => {
            let message = format!("{what} is unavailable here ({why}): {how}");
            assert!(
                std::env::var_os("CI").is_none(),
                "{message}; under CI a test that cannot run fails instead of skipping"
            );
            eprintln!("skipped: {message}");
            None
        }
    }
}

/// The path of `program` on `PATH`, or why not: for [`require`].
pub fn program(program: &str) -> Result<std::path::PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} is not on PATH"))
}

/// Raises this test process's open-file limit (1,000-connection tests hold several thousand).
pub fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// An address on which nothing listens: connecting to it is refused.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Connects with the test's patience as read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Connects from `source` (a loopback address) to `addr`.
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    try_connect_from(source, addr).unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"))
}

/// Connects from `source` (an IPv4 loopback address) to `addr`, with the test's patience
/// as read timeout.
pub fn try_connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect(&addr.into())?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(PATIENCE))?;
    Ok(s)
}

/// Opens a connection to `addr` and returns everything it answers until end of stream.
pub fn answer(addr: SocketAddr) -> String {
    let mut s = connect(addr);
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("reading the answer of {addr}: {e}"));
    text
}

/// Reads the first line (a backend's name) from `s`.
pub fn read_name(s: &mut TcpStream) -> String {
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).expect("read backend name") == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    String::from_utf8(name).unwrap()
}

/// Writes a config file for this test process and returns its path.
pub fn write_config(tag: &str, yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ringlb-test-{}-{tag}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Writes `yaml` to `path` the way config management does: a new file renamed over the old,
/// so the watcher never reads a half-written file.
pub fn replace_file(path: &std::path::Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `ringlb check` on `yaml` (written to a file tagged `tag`) exits 1 and says each of `wants`.
pub fn check_fails_saying(tag: &str, yaml: &str, wants: &[&str]) {
    let path = write_config(tag, yaml);
    let out = ringlb_command(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    for want in wants {
        assert!(said.contains(want), "{want:?} in:\n{said}");
    }
}

/// The `subsets` of a `v1 Endpoints` manifest: one per backend, its port named `http`.
pub fn endpoint_subsets(backends: &[SocketAddr]) -> String {
    backends
        .iter()
        .map(|b| {
            format!(
                "  - addresses: [{{ip: \"{}\"}}]\n    ports: [{{name: http, port: {}}}]\n",
                b.ip(),
                b.port()
            )
        })
        .collect()
}
