//! Following DNS-named backends: every name is resolved again when its answer's TTL runs out,
//! with hickory-resolver, as tasks on the caller's tokio runtime (ringlb's control runtime).
//!
//! Each name has one task: look up A and AAAA, publish the sorted addresses, sleep for the
//! clamped TTL ([`DnsConfig::clamp_ttl`]), repeat. A failed lookup (timeout, SERVFAIL,
//! NXDOMAIN, no address) keeps the last known addresses and is retried with backoff
//! ([`DnsConfig::retry_delay`]). Whenever the addresses of a name change, the `on_change`
//! callback runs, and the caller expands its configuration again with [`DnsWatch::answers`].
//!
//! hickory's own response cache is turned off: the tasks already ask exactly when an answer
//! expires, and a cached answer with no TTL left would only add a round of retries.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::{mpsc as tmpsc, oneshot};
use tokio::task::JoinHandle;

use crate::names::{Answers, DnsConfig, HostName};

/// Why names cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No `nameservers` were configured and the system configuration could not be read.
    #[error("cannot read the system DNS configuration (/etc/resolv.conf): {0}")]
    SystemConfig(#[source] NetError),
    /// The resolver could not be built from the configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[source] NetError),
    /// The watch's task is gone (its runtime stopped).
    #[error("the DNS watch stopped")]
    Stopped,
}

/// The names being followed and their latest addresses, for as long as this is alive.
///
/// Dropping it stops its tasks (their lookups are abandoned; nothing is left half-published
/// because answers are replaced whole under a lock).
pub struct DnsWatch {
    commands: tmpsc::UnboundedSender<Command>,
    answers: Arc<Mutex<Answers>>,
}

impl std::fmt::Debug for DnsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsWatch").finish_non_exhaustive()
    }
}

/// Follow exactly `names` with `config` from now on.
struct Command {
    config: DnsConfig,
    resolver: TokioResolver,
    names: BTreeSet<HostName>,
    /// Told once every name that (re)started has had its first outcome.
    tried: oneshot::Sender<()>,
}

impl DnsWatch {
    /// Starts following no name yet, as a task on the current tokio runtime (call it inside
    /// one, with I/O and time). `on_change` runs on that runtime whenever the addresses of a
    /// followed name change (it should only send a message).
    pub fn start(on_change: impl Fn() + Send + Sync + 'static) -> Self {
        let (commands, rx) = tmpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(Answers::new()));
        let shared = Arc::clone(&answers);
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(on_change);
        tokio::spawn(serve(rx, shared, on_change));
        Self { commands, answers }
    }

    /// Follows exactly `names` with `config` from now on, and returns once every name new to
    /// the watch (all of them when `config` changed) has been looked up once, or after
    /// `wait`, whichever comes first. Names no longer listed are dropped with their answers;
    /// names still listed keep their addresses and schedule.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after it sent the names leaves them followed.
    pub async fn sync(
        &self,
        config: &DnsConfig,
        names: BTreeSet<HostName>,
        wait: Duration,
    ) -> Result<(), DnsError> {
        let resolver = build_resolver(config)?;
        let (tried, done) = oneshot::channel();
        self.commands
            .send(Command {
                config: config.clone(),
                resolver,
                names,
                tried,
            })
            .map_err(|_| DnsError::Stopped)?;
        match tokio::time::timeout(wait, done).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(_)) => Err(DnsError::Stopped),
        }
    }

    /// The latest addresses of every followed name that has resolved at least once.
    pub fn answers(&self) -> Answers {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A hickory resolver for `config`: its name servers over UDP and TCP without `/etc/hosts`,
/// or the system configuration; A and AAAA both asked; no response cache.
fn build_resolver(config: &DnsConfig) -> Result<TokioResolver, DnsError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(DnsError::SystemConfig)?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|ns| {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut b = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Only the configured servers answer; /etc/hosts would shadow them.
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let opts = builder.options_mut();
    opts.timeout = config.timeout;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    builder.build().map_err(DnsError::Resolver)
}

/// The watch's main task: applies [`Command`]s until the [`DnsWatch`] is dropped.
async fn serve(
    mut commands: tmpsc::UnboundedReceiver<Command>,
    answers: Arc<Mutex<Answers>>,
    on_change: Arc<dyn Fn() + Send + Sync>,
) {
    let mut tasks: HashMap<HostName, JoinHandle<()>> = HashMap::new();
    let mut current: Option<DnsConfig> = None;
    while let Some(cmd) = commands.recv().await {
        if current.as_ref() != Some(&cmd.config) {
            // New settings: every name starts over (keeping its addresses until it resolves).
            for (_, task) in tasks.drain() {
                task.abort();
            }
            current = Some(cmd.config.clone());
        }
        tasks.retain(|name, task| {
            let keep = cmd.names.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| cmd.names.contains(name));
        let mut firsts = Vec::new();
        for name in cmd.names {
            if tasks.contains_key(&name) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            firsts.push(rx);
            let follow = Follow {
                name: name.clone(),
                resolver: cmd.resolver.clone(),
                config: cmd.config.clone(),
                answers: Arc::clone(&answers),
                on_change: Arc::clone(&on_change),
            };
            tasks.insert(name, tokio::spawn(follow.run(tx)));
        }
        let tried = cmd.tried;
        tokio::spawn(async move {
            for rx in firsts {
                // An aborted task drops its sender: that counts as done.
                let _ = rx.await;
            }
            let _ = tried.send(());
        });
    }
    for (_, task) in tasks {
        task.abort();
    }
}

/// One name, followed for as long as its task lives.
struct Follow {
    name: HostName,
    resolver: TokioResolver,
    config: DnsConfig,
    answers: Arc<Mutex<Answers>>,
    on_change: Arc<dyn Fn() + Send + Sync>,
}

impl Follow {
    /// Looks the name up forever; `first` is told after the first outcome.
    ///
    /// # Cancel safety
    /// Aborted between lookups or in one: answers are only ever replaced whole, so an abort
    /// leaves the last published addresses in place.
    async fn run(self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut failures = 0u32;
        loop {
            let delay = match self.lookup().await {
                Ok((addrs, ttl)) => {
                    failures = 0;
                    self.publish(addrs, ttl);
                    self.config.clamp_ttl(ttl)
                }
                Err(reason) => {
                    failures += 1;
                    let delay = self.config.retry_delay(failures);
                    let known = self
                        .answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&self.name)
                        .cloned();
                    match known {
                        Some(addrs) => tracing::warn!(
                            name = %self.name, failures, retry_in = ?delay, keeping = ?addrs,
                            "DNS lookup failed, keeping the last known addresses: {reason}"
                        ),
                        None => tracing::warn!(
                            name = %self.name, failures, retry_in = ?delay,
                            "DNS lookup failed, the name has no backends yet: {reason}"
                        ),
                    }
                    delay
                }
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The sorted, deduplicated addresses of the name and how long they are valid.
    async fn lookup(&self) -> Result<(Vec<IpAddr>, Duration), String> {
        let lookup = self
            .resolver
            .lookup_ip(self.name.as_str())
            .await
            .map_err(|e| match e {
                // The default text dumps the whole query; the response code says it all.
                NetError::Dns(HickoryDnsError::NoRecordsFound(none)) => match none.response_code {
                    ResponseCode::NXDomain => "no such name (NXDOMAIN)".to_owned(),
                    code => format!("no A or AAAA record ({code})"),
                },
                e => e.to_string(),
            })?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        let mut addrs: Vec<IpAddr> = lookup.iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no A or AAAA record".into());
        }
        Ok((addrs, ttl))
    }

    /// Stores `addrs` for the name and calls `on_change` when they differ from the last ones.
    fn publish(&self, addrs: Vec<IpAddr>, ttl: Duration) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.get(&self.name) == Some(&addrs) {
            tracing::debug!(name = %self.name, ?ttl, "DNS answer unchanged");
            return;
        }
        tracing::info!(name = %self.name, addresses = ?addrs, ?ttl, "DNS name resolved");
        answers.insert(self.name.clone(), addrs);
        drop(answers);
        (self.on_change)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_name_server_leaves_the_name_unresolved_within_the_wait() {
        // Nothing listens on this port: every query fails at once or times out.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = socket.local_addr().unwrap();
        drop(socket);
        let config = DnsConfig {
            nameservers: vec![dead],
            timeout: Duration::from_millis(200),
            ..DnsConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let watch = DnsWatch::start(|| {});
            let names = BTreeSet::from([HostName::parse("nowhere.test").unwrap()]);
            let started = Instant::now();
            watch
                .sync(&config, names, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(watch.answers().is_empty());
        });
        // The system configuration builds too (whatever /etc/resolv.conf says).
        let _ = build_resolver(&DnsConfig::default());
    }
}
