//! The load's HTTP/1.1, as wrk speaks it: `GET /` with a `Host`, through hyper's client
//! connection; the whole answer is read, and only a 2xx counts as answered.

use std::net::{IpAddr, SocketAddr};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use crate::stats::ErrorKind;

/// A keep-alive connection to the target.
pub(crate) struct Connection {
    sender: SendRequest<Empty<Bytes>>,
}

impl Connection {
    /// Connects to `target` (from `source`, when given) and starts the connection's driver
    /// on the current runtime.
    pub(crate) async fn open(
        target: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<Connection, ErrorKind> {
        let stream = connect(target, source)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Io)?;
        // The driver ends with the connection: when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Connection { sender })
    }

    /// One `GET /` and its whole answer; `close` asks the server to close after it
    /// (`Connection: close`, the `cps` scenario). `Ok(false)`: answered, and the server
    /// closes the connection after it (`Connection: close` in its answer, as NGINX sends
    /// after `keepalive_requests`), so the next request needs a new one; that is no error.
    pub(crate) async fn get(&mut self, target: SocketAddr, close: bool) -> Result<bool, ErrorKind> {
        self.sender.ready().await.map_err(|_| ErrorKind::Io)?;
        let mut request = hyper::Request::get("/").header(hyper::header::HOST, target.to_string());
        if close {
            request = request.header(hyper::header::CONNECTION, "close");
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| ErrorKind::Io)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|_| ErrorKind::Io)?;
        let ok = response.status().is_success();
        let closes = response
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| ErrorKind::Io)?;
        if ok {
            Ok(!closes)
        } else {
            Err(ErrorKind::Status)
        }
    }
}

/// A TCP connection to `target`, from `source` (any port) when given.
pub(crate) async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = if source.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}
