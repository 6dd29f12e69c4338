//! What the master has in flight while sockets change hands: a successor worker starting,
//! old workers handing over, and who asked.

use std::collections::BTreeSet;
use std::time::Instant;

use super::handover::Conn;
use crate::admin::UdpFlowView;

/// Who asked for an upgrade, to tell how it went.
#[derive(Debug)]
pub enum Asker {
    /// SIGUSR2: the log says.
    Log,
    /// `ringlb upgrade`, on the handover socket.
    Client(Conn),
    /// This master takes over from the master at the other end.
    Peer(Conn),
}

/// A successor worker starting.
#[derive(Debug)]
pub struct Upgrade {
    pub candidate: u64,
    pub deadline: Instant,
    pub asker: Asker,
}

/// Old workers handing over, and to whom.
#[derive(Debug)]
pub struct HandOff {
    /// The workers whose UDP flows are still awaited.
    pub from: BTreeSet<u64>,
    pub flows: Vec<UdpFlowView>,
    pub deadline: Instant,
    pub to: HandTo,
}

/// Where a handover goes.
#[derive(Debug)]
pub enum HandTo {
    /// The upgrade's candidate worker.
    Candidate,
    /// The new master at the other end of the handover socket.
    Peer(Conn),
}
