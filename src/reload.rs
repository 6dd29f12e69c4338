//! One table swap of the data plane, awaited until it is in effect: what a file reload, new
//! DNS answers and node mode's API changes all do to the running [`Proxy`].

use std::time::Duration;

use config::Config;
use proxy_core::{Proxy, ProxyError, ReloadReport};

/// How long a swap waits for every worker to confirm it; a worker busy for longer applies it
/// a little later.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Serves `config` from now on (see [`Proxy::reload`]) and resolves once every worker has
/// applied it (at most [`APPLY_WAIT`]), so that "reloaded" means in effect.
pub async fn swap(
    proxy: &mut Proxy,
    config: Config,
    backend_drain: Option<Duration>,
) -> Result<ReloadReport, ProxyError> {
    let reload = proxy.reload(config, backend_drain)?;
    if tokio::time::timeout(APPLY_WAIT, reload.applied())
        .await
        .is_err()
    {
        tracing::warn!("a worker did not confirm the new table within {APPLY_WAIT:?}");
    }
    Ok(reload.report)
}
