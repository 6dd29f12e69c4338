//! Node mode: ringlb as a node's kube-proxy. This crate holds what only node mode needs: the
//! API watch ([`KubeWatch`]: Services, EndpointSlices, this Node and ServiceCIDRs, resolved
//! by `config`'s one Kubernetes resolver with node mode's policy), the API's objects read into
//! `config`'s checked types ([`api`]), what this node's Node object says ([`node_eligible`],
//! [`node_primary_addresses`], [`node_zone`]), and which addresses take NodePorts
//! ([`NodePortSource`]); steering ([`steer`]):
//! the nftables tables that send each service's frontends to its listener, written through
//! `nft`, `ip` and `conntrack`; and the health servers ([`health`]) that answer load
//! balancers as kube-proxy answers them, served by `control`'s HTTP server on the control
//! runtime.
//!
//! It never touches a data-plane socket: it decides what the data plane serves, and the
//! binary hands that to `proxy-core`.

mod addresses;
pub mod api;
pub mod health;
pub mod steer;
mod this_node;
mod watch;

pub use addresses::{
    given_addresses, local_addresses, AddressError, NodePortAddress, NodePortSource,
};
pub use this_node::{
    node_eligible, node_primary_addresses, node_zone, TO_BE_DELETED_TAINT, ZONE_LABEL,
};
pub use watch::{
    label_selector, KubeError, KubeOptions, KubeSnapshot, KubeWatch, NodeAddresses, SETTLE,
};
