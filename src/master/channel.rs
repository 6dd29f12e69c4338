//! Messages that carry descriptors between ringlb's processes: one datagram per message on a
//! `SOCK_SEQPACKET` unix socket, a JSON body and, in an `SCM_RIGHTS` control message, the
//! descriptors it carries (the kernel gives the receiver its own copies of the same open
//! sockets). A message with more descriptors than one control message takes is followed by
//! as many bare datagrams as needed.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Descriptors in one `SCM_RIGHTS` message at most (the kernel's `SCM_MAX_FD` is 253).
const FDS_PER_MESSAGE: usize = 250;
/// Bytes in one datagram at most.
const DATAGRAM: usize = 60 * 1024;
/// The largest message accepted (a long UDP flow list), and the most descriptors: a peer's
/// header cannot make the receiver allocate more.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const MAX_FDS: usize = 64 * 1024;
/// How a message's first datagram starts; the others start with [`MORE`].
const FIRST: u8 = b'M';
const MORE: u8 = b'+';

/// One end of a descriptor channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A message as received: its JSON body and the descriptors it carried.
#[derive(Debug)]
pub struct Received {
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Received {
    /// The body as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> io::Result<T> {
        serde_json::from_slice(&self.body).map_err(io::Error::other)
    }
}

/// What a message's first datagram says of the whole.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    bytes: usize,
    fds: usize,
}

/// The datagrams of one message: a tag, then in the first a JSON header line, then body
/// bytes; the descriptors ride along, as many per datagram as one control message takes.
fn parts<'f>(body: &impl Serialize, fds: &'f [RawFd]) -> io::Result<Vec<(Vec<u8>, &'f [RawFd])>> {
    let json = serde_json::to_vec(body).map_err(io::Error::other)?;
    if json.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::other("message too large for the channel"));
    }
    let mut first = vec![FIRST];
    let header = Header {
        bytes: json.len(),
        fds: fds.len(),
    };
    serde_json::to_writer(&mut first, &header).map_err(io::Error::other)?;
    first.push(b'\n');
    let room = DATAGRAM - first.len();
    let (head, mut rest) = json.split_at(json.len().min(room));
    first.extend_from_slice(head);
    let mut fd_chunks = fds.chunks(FDS_PER_MESSAGE);
    let mut out = vec![(first, fd_chunks.next().unwrap_or(&[]))];
    loop {
        let fds = fd_chunks.next();
        if rest.is_empty() && fds.is_none() {
            return Ok(out);
        }
        let (chunk, tail) = rest.split_at(rest.len().min(DATAGRAM - 1));
        rest = tail;
        let mut datagram = Vec::with_capacity(chunk.len() + 1);
        datagram.push(MORE);
        datagram.extend_from_slice(chunk);
        out.push((datagram, fds.unwrap_or(&[])));
    }
}

/// A message being put together from its datagrams.
#[derive(Debug, Default)]
struct Assembly {
    expect: Option<(usize, usize)>,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Assembly {
    /// Takes one datagram in; the message once it is whole.
    fn push(&mut self, datagram: &[u8], fds: Vec<OwnedFd>) -> io::Result<Option<Received>> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
        match (datagram.split_first(), self.expect) {
            (Some((&FIRST, rest)), None) => {
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .ok_or_else(|| bad("a message without a header"))?;
                let header: Header = serde_json::from_slice(&rest[..end])
                    .map_err(|_| bad("an unreadable message header"))?;
                if header.bytes > MAX_MESSAGE || header.fds > MAX_FDS {
                    return Err(bad("a message larger than the channel takes"));
                }
                self.expect = Some((header.bytes, header.fds));
                self.body = rest[end + 1..].to_vec();
            }
            (Some((&MORE, rest)), Some(_)) => self.body.extend_from_slice(rest),
            _ => return Err(bad("datagrams out of order")),
        }
        self.fds.extend(fds);
        let (bytes, count) = self.expect.expect("set above");
        if self.body.len() > bytes || self.fds.len() > count {
            return Err(bad("a message longer than its header said"));
        }
        if self.body.len() < bytes || self.fds.len() < count {
            return Ok(None);
        }
        let done = std::mem::take(self);
        Ok(Some(Received {
            body: done.body,
            fds: done.fds,
        }))
    }
}

impl Channel {
    /// Two connected ends (close-on-exec: an end is passed to a child on purpose).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: `socketpair` returned two new descriptors that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// The end whose descriptor number is `fd` (inherited from the parent process).
    pub fn from_owned(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The descriptor, to pass to a child or across an `exec`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The descriptor, giving it up.
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }

    /// Sends `body` with `fds` (blocking until the kernel took it; the socket is blocking
    /// unless wrapped in [`AsyncChannel`]).
    pub fn send(&self, body: &impl Serialize, fds: &[RawFd]) -> io::Result<()> {
        for (bytes, fds) in parts(body, fds)? {
            self.send_one(&bytes, fds)?;
        }
        Ok(())
    }

    fn send_one(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
        Ok(())
    }

    /// Receives one message and the descriptors it carried (blocking); `None` once the other
    /// end is closed.
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut assembly = Assembly::default();
        loop {
            match self.recv_one()? {
                Some((datagram, fds)) => {
                    if let Some(message) = assembly.push(&datagram, fds)? {
                        return Ok(Some(message));
                    }
                }
                None if assembly.expect.is_none() => return Ok(None),
                None => return Err(io::Error::other("the channel closed within a message")),
            }
        }
    }

    /// Gives up waiting in [`Channel::recv`] after `limit` (a peer that stopped answering).
    pub fn set_read_timeout(&self, limit: std::time::Duration) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            i64::try_from(limit.as_secs()).unwrap_or(i64::MAX),
            i64::from(limit.subsec_micros()),
        );
        nix::sys::socket::setsockopt(
            self.fd.as_raw_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &tv,
        )?;
        Ok(())
    }

    fn recv_one(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; DATAGRAM];
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
        let (len, raw) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut raw = Vec::new();
            for cmsg in msg.cmsgs() {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    raw.extend(fds);
                }
            }
            (msg.bytes, raw)
        };
        // SAFETY: `SCM_RIGHTS` installed these descriptors in this process for this message;
        // nothing else owns them.
        let fds = raw
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if len == 0 {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some((buf, fds)))
    }
}

/// A [`Channel`] read and written on a tokio runtime (non-blocking, readiness-driven).
#[derive(Debug)]
pub struct AsyncChannel {
    inner: AsyncFd<Channel>,
    partial: std::sync::Mutex<Assembly>,
}

impl AsyncChannel {
    /// Wraps `channel` (made non-blocking) for the current runtime.
    pub fn new(channel: Channel) -> io::Result<AsyncChannel> {
        nix::fcntl::fcntl(
            channel.fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(AsyncChannel {
            // SAFETY: the channel owns its descriptor, which stays open and the same for as
            // long as the `AsyncFd` holds the channel.
            inner: unsafe {
                AsyncFd::register_with_interest(channel, Interest::READABLE | Interest::WRITABLE)
            }
            .map_err(|e| e.into_parts().1)?,
            partial: std::sync::Mutex::default(),
        })
    }

    /// Receives one message; `None` once the other end is closed.
    ///
    /// # Cancel safety
    /// Cancel-safe: the datagrams of a message read so far are kept for the next call.
    pub async fn recv(&self) -> io::Result<Option<Received>> {
        loop {
            let mut ready = self.inner.readable().await?;
            let datagram = match ready.try_io(|c| c.get_ref().recv_one()) {
                Ok(result) => result?,
                Err(_would_block) => continue,
            };
            let mut partial = self
                .partial
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match datagram {
                Some((bytes, fds)) => {
                    if let Some(message) = partial.push(&bytes, fds)? {
                        return Ok(Some(message));
                    }
                }
                None if partial.expect.is_none() => return Ok(None),
                None => return Err(io::Error::other("the channel closed within a message")),
            }
        }
    }

    /// Sends `body` with `fds`, datagram by datagram as the socket takes them.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped halfway, the other end gets half a message. Await it.
    pub async fn send(&self, body: &impl Serialize, fds: &[RawFd]) -> io::Result<()> {
        for (bytes, fds) in parts(body, fds)? {
            loop {
                let mut ready = self.inner.writable().await?;
                match ready.try_io(|c| c.get_ref().send_one(&bytes, fds)) {
                    Ok(result) => {
                        result?;
                        break;
                    }
                    Err(_would_block) => continue,
                }
            }
        }
        Ok(())
    }

    /// The channel's descriptor (to pass across an `exec`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_body_and_hundreds_of_descriptors() {
        let (a, b) = Channel::pair().unwrap();
        let sockets: Vec<std::net::UdpSocket> = (0..600)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let sender = std::thread::spawn(move || {
            a.send(&serde_json::json!({"open": "x"}), &fds).unwrap();
            drop(sockets);
            a
        });
        let got = b.recv().unwrap().expect("a message");
        let a = sender.join().unwrap();
        assert_eq!(got.fds.len(), 600);
        assert_eq!(got.parse::<serde_json::Value>().unwrap()["open"], "x");
        // The copies are the same sockets: bound where the originals were.
        let copy = std::net::UdpSocket::from(got.fds.into_iter().next().unwrap());
        assert!(copy.local_addr().unwrap().ip().is_loopback());
        drop(a);
        assert!(b.recv().unwrap().is_none(), "the other end closed");
    }

    #[test]
    fn a_body_of_megabytes_arrives_whole_across_datagrams() {
        let (a, b) = Channel::pair().unwrap();
        let flows: Vec<String> = (0..60_000).map(|i| format!("10.0.{i}.1:53")).collect();
        let expected = flows.clone();
        let sender = std::thread::spawn(move || a.send(&flows, &[]).unwrap());
        let got: Vec<String> = b.recv().unwrap().expect("a message").parse().unwrap();
        sender.join().unwrap();
        assert_eq!(got, expected);
    }

    /// Raw datagrams from a hostile or broken peer, straight onto the socket.
    fn raw_peer(datagrams: &[&[u8]]) -> io::Result<Option<Received>> {
        let (a, b) = Channel::pair().unwrap();
        for datagram in datagrams {
            a.send_one(datagram, &[]).unwrap();
        }
        drop(a);
        b.recv()
    }

    #[test]
    fn a_hostile_header_is_refused_before_anything_is_allocated() {
        let huge = format!("M{{\"bytes\":{},\"fds\":0}}\n", usize::MAX);
        let cases: [&[u8]; 5] = [
            huge.as_bytes(),
            b"M{\"bytes\":5,\"fds\":100000}\n",
            b"Mno header line",
            b"+a continuation without a start",
            b"M{\"bytes\":2,\"fds\":0}\nlonger than said",
        ];
        for case in cases {
            let err = raw_peer(&[case]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{case:?}: {err}");
        }
        // A message cut short by the peer's exit is an error, not a message.
        let cut = raw_peer(&[b"M{\"bytes\":10,\"fds\":0}\nabc"]).unwrap_err();
        assert!(cut.to_string().contains("closed within a message"), "{cut}");
    }

    proptest::proptest! {
        /// Whatever datagrams arrive, assembling them ends in a message, a wait for more or
        /// an error, never a panic, and holds at most one message's bound in memory.
        #[test]
        fn assembly_of_arbitrary_datagrams_is_bounded(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), 0..16),
            starts in proptest::collection::vec(proptest::prelude::any::<bool>(), 16),
        ) {
            let mut assembly = Assembly::default();
            for (i, datagram) in datagrams.iter().enumerate() {
                // Half of them well-formed starts, so assembly gets past the header.
                let bytes = if starts[i] {
                    let mut d = format!("M{{\"bytes\":{},\"fds\":0}}\n", datagram.len() * 2)
                        .into_bytes();
                    d.extend_from_slice(datagram);
                    d
                } else {
                    datagram.clone()
                };
                match assembly.push(&bytes, Vec::new()) {
                    Ok(Some(message)) => proptest::prop_assert!(message.body.len() <= MAX_MESSAGE),
                    Ok(None) => proptest::prop_assert!(assembly.body.len() <= MAX_MESSAGE),
                    Err(_) => assembly = Assembly::default(),
                }
            }
        }
    }
}
