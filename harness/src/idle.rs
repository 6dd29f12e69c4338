//! Idle connections held open through a proxy, to measure what each costs it in memory. Each
//! carries one HTTP/1.1 request and its answer first, so that the proxy has connected it to
//! a backend and relayed both ways (any buffers it keeps per connection are allocated), and
//! then sends nothing more.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connections held open; dropping them closes them.
#[derive(Debug)]
pub struct Idle {
    streams: Vec<TcpStream>,
}

impl Idle {
    /// Opens `n` connections to `target`, one after the other, each answered once within
    /// `timeout`.
    pub fn hold(target: SocketAddr, n: usize, timeout: Duration) -> std::io::Result<Idle> {
        let request = format!("GET / HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let mut stream = TcpStream::connect_timeout(&target, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(request.as_bytes())?;
            // The start of the answer is enough: the path is open both ways.
            let mut answer = [0u8; 512];
            if stream.read(&mut answer)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            streams.push(stream);
        }
        Ok(Idle { streams })
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}
