//! The `bulk` scenario: each connection writes a stream of bytes as fast as the path takes
//! them (iperf3's TCP test, one direction), to a server that reads and discards them. A
//! "request" is one chunk handed to the kernel: its latency is how long the write waited
//! for room (backpressure from the proxy and the receiver), and the throughput counts the
//! bytes written in the window. What was written but not yet read when the window ends is
//! at most the socket buffers along the path, a few megabytes: well under 1% of a run of
//! seconds at gigabits a second.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::stats::ErrorKind;

/// The bytes of one write.
pub const CHUNK: usize = 128 * 1024;

static ZEROES: [u8; CHUNK] = [0; CHUNK];

/// Writes one chunk on `stream`.
pub(crate) async fn send_chunk(stream: &mut TcpStream) -> Result<(), ErrorKind> {
    stream.write_all(&ZEROES).await.map_err(|_| ErrorKind::Io)
}
