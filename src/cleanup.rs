//! `ringlb cleanup`: deletes what node mode leaves in the kernel for its successor, as
//! kube-proxy's `--cleanup` (the DaemonSet's uninstall step).

use std::path::Path;

use anyhow::{bail, Context};

use crate::master::{connect_to, default_path};

/// Deletes the nftables tables and the client-address routing of `client_ip_mark`, unless
/// a ringlb answers at the handover socket (its tables steer its traffic).
pub fn run(handover_socket: Option<&Path>, client_ip_mark: u32) -> anyhow::Result<()> {
    let path = handover_socket.map_or_else(default_path, Path::to_owned);
    if connect_to(&path)
        .with_context(|| format!("cannot check the handover socket {}", path.display()))?
        .is_some()
    {
        bail!(
            "a ringlb answers at {}: stop it first (its tables steer its traffic)",
            path.display()
        );
    }
    node::steer::cleanup(client_ip_mark).context("cannot delete ringlb's nftables tables")?;
    println!(
        "deleted nftables tables ip {t} and ip6 {t}, and the policy rule of mark {client_ip_mark:#x}",
        t = node::steer::TABLE
    );
    Ok(())
}
