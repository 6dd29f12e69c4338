//! Backends as configured ([`Target`]s, by IP address or by name) into the backends a service
//! serves: one [`Backend`] per address of each name, from the latest DNS answers.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use crate::model::{Backend, Config, Service};
use crate::names::{Answers, BackendAddress, HostName, Target};

impl Target {
    /// A configured backend list as a service holds it: (`backends`, `targets`). Without any
    /// name the list *is* the backends and `targets` is empty; with names, `backends` holds the
    /// IP entries until [`Service::expand`] adds the answers.
    pub(crate) fn split(list: Vec<Target>) -> (Vec<Backend>, Vec<Target>) {
        if list
            .iter()
            .all(|t| matches!(t.address, BackendAddress::Ip(_)))
        {
            let backends = list
                .into_iter()
                .filter_map(|t| match t.address {
                    BackendAddress::Ip(address) => Some(Backend {
                        address,
                        weight: t.weight,
                        max_connections: t.max_connections,
                    }),
                    BackendAddress::Name(..) => None,
                })
                .collect();
            return (backends, Vec::new());
        }
        (expand_targets(&list, &Answers::new()), list)
    }
}

impl Service {
    /// This service with `backends` rebuilt from its [`Service::targets`] and `answers`: each
    /// address of a name becomes one backend with the name's port, weight and limit (Envoy's
    /// STRICT_DNS), in configuration order and per name in address order, so a name server
    /// rotating its answers changes nothing. An address that several targets yield is used
    /// once, with the first one's settings. A name without answers yields no backend.
    pub fn expand(&self, answers: &Answers) -> Service {
        let mut svc = self.clone();
        if !self.targets.is_empty() {
            svc.backends = expand_targets(&self.targets, answers);
        }
        svc
    }
}

impl Config {
    /// Every host name that backends of this config name.
    pub fn host_names(&self) -> BTreeSet<HostName> {
        self.services
            .iter()
            .flat_map(|s| s.targets.iter())
            .filter_map(|t| match &t.address {
                BackendAddress::Name(host, _) => Some(host.clone()),
                BackendAddress::Ip(_) => None,
            })
            .collect()
    }

    /// Every service expanded with `answers` (see [`Service::expand`]).
    pub fn expand(&self, answers: &Answers) -> Config {
        Config {
            services: self.services.iter().map(|s| s.expand(answers)).collect(),
        }
    }
}

fn expand_targets(targets: &[Target], answers: &Answers) -> Vec<Backend> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in targets {
        let addrs: Vec<SocketAddr> = match &t.address {
            BackendAddress::Ip(addr) => vec![*addr],
            BackendAddress::Name(host, port) => {
                let mut ips: Vec<SocketAddr> = answers
                    .get(host)
                    .into_iter()
                    .flatten()
                    .map(|ip| SocketAddr::new(*ip, *port))
                    .collect();
                ips.sort_unstable();
                ips
            }
        };
        for address in addrs {
            if seen.insert(address) {
                out.push(Backend {
                    address,
                    weight: t.weight,
                    max_connections: t.max_connections,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use balancers::SchedulerConfig;

    use super::*;
    use crate::model::Protocol;

    fn host(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    fn target(address: &str, weight: u32, max: Option<u32>) -> Target {
        Target {
            address: BackendAddress::parse(address).unwrap(),
            weight,
            max_connections: max,
        }
    }

    fn service(targets: Vec<Target>) -> Service {
        let (backends, targets) = Target::split(targets);
        let mut svc = Service::with_defaults(
            "s",
            Protocol::Tcp,
            vec!["127.0.0.1:80".parse().unwrap()],
            backends,
            SchedulerConfig::default(),
        );
        svc.targets = targets;
        svc
    }

    fn addrs(svc: &Service) -> Vec<(String, u32, Option<u32>)> {
        svc.backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight, b.max_connections))
            .collect()
    }

    #[test]
    fn ip_only_lists_need_no_expansion() {
        let svc = service(vec![target("10.0.0.1:80", 2, None)]);
        assert!(svc.targets.is_empty());
        assert_eq!(addrs(&svc), [("10.0.0.1:80".into(), 2, None)]);
        assert_eq!(svc.expand(&Answers::new()), svc);
    }

    #[test]
    fn each_address_of_a_name_is_one_backend_with_its_settings() {
        let svc = service(vec![
            target("10.0.0.1:80", 1, None),
            target("web.test:8080", 3, Some(100)),
            target("db.test:5432", 1, None),
        ]);
        // Before any answer: the IP backend only; the names yield nothing.
        assert_eq!(addrs(&svc), [("10.0.0.1:80".into(), 1, None)]);
        let config = Config {
            services: vec![svc.clone()],
        };
        let names: Vec<String> = config
            .host_names()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["db.test", "web.test"]);

        let mut answers = Answers::new();
        answers.insert(
            host("web.test"),
            vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        );
        let expanded = svc.expand(&answers);
        assert_eq!(
            addrs(&expanded),
            [
                ("10.0.0.1:80".into(), 1, None),
                ("10.0.0.2:8080".into(), 3, Some(100)),
                ("[fd00::2]:8080".into(), 3, Some(100)),
            ]
        );
        assert_eq!(expanded.targets, svc.targets, "the list as written stays");
        assert_eq!(config.expand(&answers).services[0], expanded);

        // The same address from two targets is one backend, with the first one's settings.
        answers.insert(host("db.test"), vec!["10.0.0.1".parse().unwrap()]);
        let dup = service(vec![
            target("db.test:80", 5, None),
            target("10.0.0.1:80", 1, None),
        ]);
        assert_eq!(
            addrs(&dup.expand(&answers)),
            [("10.0.0.1:80".into(), 5, None)]
        );
    }
}
