//! The lines ringlb prints on stdout for scripts and tests to wait for: one per bound
//! frontend and `ready` once serving, then one per change (`reloaded version=N`,
//! `kubernetes version=N ...`, `nftables ...`, `healthz addr=...`). Logs go to stderr.

use std::io::Write;

use config::Table;
use proxy_core::Proxy;

/// Prints one stable line per bound frontend and a `ready` line on stdout (scripts and tests
/// wait for these), and logs the same.
pub fn announce(proxy: &Proxy, table: &Table) {
    let mut out = std::io::stdout().lock();
    for f in proxy.frontends() {
        let name = table
            .lookup(&f.key)
            .map_or("?", |s| s.service.name.as_str());
        let _ = writeln!(
            out,
            "listening service={name} proto={} addr={}",
            f.key.protocol, f.local_addr
        );
    }
    let driver = proxy
        .drivers()
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    // The PID is the data plane's: a worker of the master (`ringlb run`), or this process.
    let _ = writeln!(
        out,
        "ready workers={} driver={driver} pid={}",
        proxy.drivers().len(),
        std::process::id()
    );
    let _ = out.flush();
    tracing::info!(workers = proxy.drivers().len(), %driver, frontends = proxy.frontends().len(), "ringlb ready");
}

/// One line on stdout for scripts and tests (`reloaded version=N`, `reload-failed ...`).
pub fn announce_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
