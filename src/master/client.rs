//! `ringlb upgrade` and `ringlb reload`: ask the master at the handover socket, and say how
//! it went.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::handover::{connect_to, default_path};
use super::wire::{Answer, Ask};

/// Longer than the master waits for the new worker to be ready.
const ANSWER_WAIT: Duration = Duration::from_secs(90);

/// Asks for the upgrade and waits for its outcome: `Ok` once the new worker serves.
pub fn upgrade(handover_socket: Option<&Path>) -> anyhow::Result<()> {
    match ask(handover_socket, &Ask::Upgrade)? {
        Answer::Upgraded { master, worker } => {
            println!("upgraded master={master} worker={worker}");
            Ok(())
        }
        Answer::Failed(why) => bail!("upgrade failed, the running ringlb keeps serving: {why}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Asks the serving worker to read its config again and waits for the outcome.
pub fn reload(handover_socket: Option<&Path>) -> anyhow::Result<()> {
    match ask(handover_socket, &Ask::Reload)? {
        Answer::Reloaded { version } => {
            println!("reloaded version={version}");
            Ok(())
        }
        Answer::Failed(why) => bail!("reload failed, the last good config keeps serving: {why}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Asks the master at the handover socket `what` and waits for its answer.
fn ask(handover_socket: Option<&Path>, what: &Ask) -> anyhow::Result<Answer> {
    let path = handover_socket.map_or_else(default_path, Path::to_owned);
    let shown = path.display();
    let conn = connect_to(&path)
        .with_context(|| format!("cannot reach the handover socket {shown}"))?
        .with_context(|| format!("no ringlb answers at {shown}"))?;
    conn.set_read_timeout(ANSWER_WAIT)?;
    conn.send(what, &[])
        .with_context(|| format!("cannot ask the ringlb at {shown}"))?;
    let answer = conn
        .recv()
        .with_context(|| format!("no answer from the ringlb at {shown} within {ANSWER_WAIT:?}"))?
        .with_context(|| format!("the ringlb at {shown} closed the connection"))?;
    Ok(answer.parse::<Answer>()?)
}
