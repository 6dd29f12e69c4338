//! The load's UDP request/response: each "connection" is a connected socket that sends a
//! datagram holding a sequence number and waits for an answer that starts with it (a late
//! answer to an earlier request is skipped).

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::stats::ErrorKind;

/// The largest answer read.
const ANSWER_MAX: usize = 2048;

/// One flow to the target.
pub(crate) struct Flow {
    socket: UdpSocket,
    sequence: u64,
}

impl Flow {
    /// A socket of `target`'s family (bound to `source`, when given) connected to it.
    pub(crate) async fn open(
        target: SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> Result<Flow, ErrorKind> {
        let any: std::net::IpAddr = if target.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let local = SocketAddr::new(source.unwrap_or(any), 0);
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        socket
            .connect(target)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Ok(Flow {
            socket,
            sequence: 0,
        })
    }

    /// Sends the next request and waits for its answer (the caller bounds the wait).
    pub(crate) async fn ask(&mut self) -> Result<(), ErrorKind> {
        self.sequence += 1;
        let request = self.sequence.to_be_bytes();
        self.socket
            .send(&request)
            .await
            .map_err(|_| ErrorKind::Io)?;
        let mut answer = [0u8; ANSWER_MAX];
        loop {
            // A refused datagram (ICMP port unreachable) shows here on a connected socket.
            let n = self
                .socket
                .recv(&mut answer)
                .await
                .map_err(|_| ErrorKind::Io)?;
            if answer[..n].starts_with(&request) {
                return Ok(());
            }
        }
    }
}
