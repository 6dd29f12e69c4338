//! A ringlb the harness starts: this binary, `run` in quick mode, in a child process; its
//! frontend's address from its `listening` line; stopped (SIGTERM, then SIGKILL after a
//! while) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A running ringlb.
#[derive(Debug)]
pub struct Ringlb {
    child: Child,
    addr: SocketAddr,
}

impl Ringlb {
    /// `ringlb run --listen 127.0.0.1:0 --to BACKENDS` plus `args`, once it is ready.
    pub fn start(backends: &[SocketAddr], args: &[&str]) -> anyhow::Result<Ringlb> {
        let to: Vec<String> = backends.iter().map(ToString::to_string).collect();
        let exe = std::env::current_exe().context("cannot find this ringlb binary")?;
        let mut child = Command::new(exe)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--to",
                &to.join(","),
                "--admin",
                "off",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ringlb")?;
        let stdout = child.stdout.take().context("ringlb's stdout")?;
        let mut ringlb = Ringlb {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        ringlb.addr = ready_addr(stdout, args)?;
        Ok(ringlb)
    }

    /// Its frontend.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The frontend's address, from the lines ringlb prints before `ready`.
fn ready_addr(stdout: std::process::ChildStdout, args: &[&str]) -> anyhow::Result<SocketAddr> {
    let mut addr = None;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next() {
        let line = line.context("reading ringlb's stdout")?;
        if let Some(rest) = line.strip_prefix("listening ") {
            addr = rest
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
        }
        if line.starts_with("ready ") {
            // Read what it prints later too, so that its writes never meet a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return addr.context("ringlb said ready without a listening address");
        }
    }
    bail!("ringlb {} exited before it was ready", args.join(" "))
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        super::proxies::stop(&mut self.child);
    }
}
