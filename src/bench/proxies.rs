//! The proxies `bench compare` measures ringlb against, started the way a fair comparison
//! needs: HAProxy (`mode tcp`, one thread) and NGINX (`stream`, one worker) with generated
//! configs over the same backends, round robin, each a child process pinned like ringlb;
//! and a proxy's process tree, whose CPU and memory `harness::usage` reads.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a proxy gets to listen, and to stop before it is killed.
const PATIENCE: Duration = Duration::from_secs(10);

/// A proxy the harness started.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    /// Starts `program` with `args` pinned to `cpus` (none: not pinned), and waits until
    /// `addr` accepts (with `udp`: until a UDP socket is bound there).
    pub fn start(
        program: &Path,
        args: &[String],
        cpus: &[usize],
        addr: SocketAddr,
        udp: bool,
    ) -> anyhow::Result<Proxy> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !cpus.is_empty() {
            let cpus = cpus.to_vec();
            // SAFETY: the closure runs in the child between fork and exec and calls only
            // `sched_setaffinity`, which is async-signal-safe, on a set built on its stack
            // from a vector allocated before the fork.
            unsafe { command.pre_exec(move || harness::pin_set(&cpus)) };
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut proxy = Proxy { child, addr };
        let deadline = Instant::now() + PATIENCE;
        let listening = || {
            if udp {
                // Bound by someone else: the proxy is there.
                UdpSocket::bind(addr).is_err()
            } else {
                TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            }
        };
        while !listening() {
            if Instant::now() > deadline || matches!(proxy.child.try_wait(), Ok(Some(_))) {
                bail!("{} did not listen on {addr}", program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// CPU seconds (user and system) of the proxy and its child processes so far.
    pub fn cpu_seconds(&self) -> f64 {
        harness::usage::process_cpu_seconds(self.child.id())
    }

    /// Resident memory of the proxy and its child processes, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        harness::usage::process_rss_bytes(self.child.id())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Stops a child proxy: SIGTERM (a drain), then SIGKILL if it is still there after a while.
pub fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free loopback port (UDP with `udp`), for a proxy that binds its own listener.
pub fn free_addr(udp: bool) -> anyhow::Result<SocketAddr> {
    let addr = if udp {
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
    };
    addr.context("no free loopback port")
}

/// `program` on the `PATH`, if it is installed.
pub fn installed(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// HAProxy's config: `mode tcp`, one thread, round robin over `backends`.
pub fn haproxy_config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let conns = max_connections();
    let mut cfg = format!(
        "global\n  nbthread 1\n  maxconn {conns}\ndefaults\n  mode tcp\n  maxconn {conns}\n  \
         timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
    );
    cfg += &format!(
        "frontend fe\n  bind {listen}\n  default_backend be\nbackend be\n  balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("  server s{i} {b}\n");
    }
    cfg
}

/// NGINX's config: `stream`, one worker, round robin over `backends` (UDP ones with `udp`),
/// its files in `dir`.
pub fn nginx_config(
    listen: SocketAddr,
    backends: &[SocketAddr],
    dir: &Path,
    module: Option<&Path>,
    udp: bool,
) -> String {
    let mut cfg = String::new();
    if let Some(module) = module {
        cfg += &format!("load_module {};\n", module.display());
    }
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        cfg += "user root;\n";
    }
    cfg += &format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\nevents {{ worker_connections {conns}; }}\n\
         stream {{\n  upstream be {{\n",
        dir = dir.display(),
        conns = max_connections()
    );
    for b in backends {
        cfg += &format!("    server {b};\n");
    }
    let (udp, timeout) = if udp { (" udp", "10s") } else { ("", "300s") };
    cfg += &format!(
        "  }}\n  server {{\n    listen {listen}{udp};\n    proxy_pass be;\n    proxy_connect_timeout 5s;\n    \
         proxy_timeout {timeout};\n  }}\n}}\n"
    );
    cfg
}

/// Connections a proxy may hold: two descriptors each (client and backend) within this
/// process's open-file limit, which the proxies inherit, less a margin.
fn max_connections() -> u64 {
    let limit = proxy_core::nofile_limit().unwrap_or(1024);
    (limit.saturating_sub(100) / 2).max(100)
}

/// NGINX's dynamic stream module, where the distribution ships it as one.
pub fn nginx_stream_module() -> Option<PathBuf> {
    [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}
