//! The shell's backend side: one task per flow drains the flow's upstream socket and sends
//! each reply to the client through the frontend socket, runs of one size as one segmented
//! send. Only system calls and counting happen here; a refusal or the flow's end is the
//! manager's to decide.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use monoio::net::udp::UdpSocket;

use super::flows::FlowId;
use super::run::{self, Run};
use super::{sock, Polled, Udp, UdpFrontend, BATCH, ROUNDS};
use crate::telemetry::Count;

impl Udp {
    /// Relays a flow's backend datagrams to its client until the flow ends.
    pub(super) async fn replies(
        self: Rc<Self>,
        id: FlowId,
        upstream: Rc<UdpSocket>,
        frontend: Rc<UdpFrontend>,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) {
        let out = frontend.socket.as_raw_fd();
        'wait: loop {
            if upstream.readable(false).await.is_err() {
                break;
            }
            let mut handled = 0;
            loop {
                if handled >= BATCH * ROUNDS {
                    // Let the worker's other tasks run; the wait returns at once.
                    continue 'wait;
                }
                match self.reply_batch(id, &upstream, out, client, source) {
                    Polled::Got(n) => {
                        handled += n;
                        if n < BATCH {
                            if let Some(c) = &self.coalesce {
                                c.after_drain(n).await;
                            }
                            // Drained: the readiness wait checks the socket's real state.
                            continue 'wait;
                        }
                    }
                    Polled::Empty | Polled::Failed => continue 'wait,
                    Polled::Ended => break 'wait,
                }
            }
        }
    }

    /// Relays the backend datagrams waiting for flow `id` (up to a batch) to its client.
    fn reply_batch(
        &self,
        id: FlowId,
        upstream: &UdpSocket,
        out: RawFd,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) -> Polled {
        let mut flows = self.flows.borrow_mut();
        if flows.get(id).is_none() {
            return Polled::Ended;
        }
        let mut received = [sock::Received::EMPTY; BATCH];
        let mut bufs = self.batch.borrow_mut();
        let family = usize::from(client.is_ipv6());
        let got = sock::recv_batch(
            upstream.as_raw_fd(),
            &mut self.reply_headers[family].borrow_mut(),
            &mut bufs,
            &mut received,
        );
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Polled::Empty,
            Err(e) if sock::is_refused(&e) => {
                // ICMP unreachable from the backend: the flow ends, so the client's next
                // datagram is balanced to a live backend.
                if let Some((flow, why)) = flows.refused(id) {
                    flow.payload.ending(why);
                }
                return Polled::Ended;
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "UDP upstream receive failed");
                return Polled::Failed;
            }
        };
        let mut sent = (0, 0);
        for run in run::split(received[..n].iter().map(|r| r.len)) {
            let mut iov = [IoSlice::new(&[]); BATCH];
            let datagrams = sock::gather(&bufs, &received, run.range(), &mut iov);
            let left = self.reply_run(out, datagrams, &run, client, source);
            sent.0 += left as u64;
            sent.1 += (left * run.size) as u64;
        }
        let now = Instant::now();
        let flow = flows
            .reply(id, now)
            .expect("checked above, not ended since");
        let stats = &flow.payload.stats;
        stats.add(Count::DatagramsToClient, sent.0);
        stats.add(Count::BytesToClient, sent.1);
        if let Some(t) = &flow.payload.trace {
            t.to_client(sent.0, sent.1);
        }
        let lost = n as u64 - sent.0;
        if lost > 0 {
            stats.add(Count::DatagramsDropped, lost);
        }
        if let Some(busy) = &self.busy {
            busy.activity(now);
        }
        Polled::Got(n)
    }

    /// Sends the replies `datagrams` (the run `run`) to `client` from the frontend socket
    /// `out`: segmented when the run has several and segmentation works, else one by one.
    /// Returns how many left.
    fn reply_run(
        &self,
        out: RawFd,
        datagrams: &[IoSlice<'_>],
        run: &Run<()>,
        client: SocketAddr,
        source: Option<IpAddr>,
    ) -> usize {
        if let Some(size) = run.segment().filter(|_| self.gso.get()) {
            match sock::send_to_client(out, datagrams, client, source, Some(size)) {
                Ok(_) => return run.count,
                Err(e) => self.gso_failed(&e),
            }
        }
        datagrams
            .iter()
            .filter(|d| sock::send_to_client(out, &[**d], client, source, None).is_ok())
            .count()
    }
}
