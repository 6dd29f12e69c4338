//! Synthetic backends: HTTP/1.1 servers (hyper) that answer every request with `200 OK` after
//! a service time drawn from a model, UDP servers that answer every datagram with itself
//! after one, and sinks that read and discard streams (for `bulk`). Each models a kind of server a load balancer meets: steady (constant),
//! queueing (exponential), mostly fast with a slow tail (bimodal), one N times slower than
//! the others, one that stalls for a while or dies at a given time.
//!
//! All of a set's servers run on one thread of their own, on a current-thread runtime, so
//! that they never compete with the load's client threads for more than that thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How long a backend takes to serve one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceTime {
    /// Always this long (zero: at once).
    Constant(Duration),
    /// Exponentially distributed with this mean (an M/M/1 server's service).
    Exponential(Duration),
    /// `slow` for a share `slow_share` (0 to 1) of requests, `fast` for the others.
    Bimodal {
        fast: Duration,
        slow: Duration,
        slow_share: f64,
    },
}

impl ServiceTime {
    fn draw(&self, rng: &mut SmallRng) -> Duration {
        match *self {
            ServiceTime::Constant(d) => d,
            ServiceTime::Exponential(mean) => {
                // Inverse transform: -ln(U) with U in (0, 1].
                let u: f64 = 1.0 - rng.random::<f64>();
                mean.mul_f64(-u.ln())
            }
            ServiceTime::Bimodal {
                fast,
                slow,
                slow_share,
            } => {
                if rng.random::<f64>() < slow_share {
                    slow
                } else {
                    fast
                }
            }
        }
    }
}

/// One synthetic backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    pub service: ServiceTime,
    /// Every service time multiplied by this (the one slow backend of a set).
    pub slower: u32,
    /// From this time after the start, for this long, no request is answered (those that
    /// arrive wait until it is over).
    pub stall: Option<(Duration, Duration)>,
    /// At this time after the start, the backend stops: it refuses new connections and
    /// resets the open ones (UDP: answers nothing more).
    pub dies_at: Option<Duration>,
    /// From this time after the start on, every service time is multiplied by this too.
    pub slows: Option<(Duration, u32)>,
}

impl Model {
    /// A steady backend: `service` for every request, no stall, no death.
    pub fn steady(service: ServiceTime) -> Model {
        Model {
            service,
            slower: 1,
            stall: None,
            dies_at: None,
            slows: None,
        }
    }

    /// How long the request that arrives at `now` (after a start at `start`) waits.
    fn delay(&self, rng: &mut SmallRng, start: Instant, now: Instant) -> Duration {
        let mut delay = self.service.draw(rng) * self.slower.max(1);
        if let Some((at, factor)) = self.slows {
            if now >= start + at {
                delay *= factor.max(1);
            }
        }
        if let Some((at, lasts)) = self.stall {
            let (from, until) = (start + at, start + at + lasts);
            if now >= from && now < until {
                delay += until - now;
            }
        }
        delay
    }
}

/// Which protocol a set of backends speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Udp,
    /// TCP whose every byte is read and discarded (service times do not apply).
    Sink,
}

/// A running set of backends; dropping it stops them.
#[derive(Debug)]
pub struct Backends {
    addrs: Vec<SocketAddr>,
    /// When their models' times start (a stall, a death, a slow-down): when they started,
    /// until [`Backends::set_epoch`] says otherwise.
    epoch: watch::Sender<Instant>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backends {
    /// Starts one backend per model on `ip` (free ports), speaking `protocol`.
    pub fn start(
        ip: std::net::IpAddr,
        protocol: Protocol,
        models: &[Model],
    ) -> std::io::Result<Backends> {
        Backends::start_on(ip, protocol, models, None)
    }

    /// As [`Backends::start`], their thread pinned to `cpu` when given (away from the proxy
    /// measured).
    pub fn start_on(
        ip: std::net::IpAddr,
        protocol: Protocol,
        models: &[Model],
        cpu: Option<usize>,
    ) -> std::io::Result<Backends> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let models = models.to_vec();
        let (bound, stop, addrs) = runtime.block_on(async {
            let mut bound = Vec::new();
            let mut addrs = Vec::new();
            for model in models {
                let socket = Bound::bind(ip, protocol).await?;
                addrs.push(socket.local_addr()?);
                bound.push((socket, model));
            }
            let (tx, rx) = oneshot::channel::<()>();
            Ok::<_, std::io::Error>((bound, (tx, rx), addrs))
        })?;
        let (stop_tx, stop_rx) = stop;
        let (epoch, epoch_rx) = watch::channel(Instant::now());
        let thread = std::thread::Builder::new()
            .name("bench-backends".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = crate::client::pin(cpu);
                }
                runtime.block_on(async move {
                    for (i, (socket, model)) in bound.into_iter().enumerate() {
                        tokio::spawn(socket.serve(model, epoch_rx.clone(), i as u64));
                    }
                    let _ = stop_rx.await;
                });
            })?;
        Ok(Backends {
            addrs,
            epoch,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Times their models' events (stalls, deaths, slow-downs) from `at` instead of from
    /// their start: to line them up with a load that starts later. An event already past
    /// stays past (a backend that died stays dead): move the clock before the first is due.
    pub fn set_epoch(&self, at: std::time::Instant) {
        self.epoch.send_replace(Instant::from_std(at));
    }

    /// Their addresses, in the order of the models.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A backend's bound socket.
enum Bound {
    Http(TcpListener),
    Sink(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    async fn bind(ip: std::net::IpAddr, protocol: Protocol) -> std::io::Result<Bound> {
        let at = SocketAddr::new(ip, 0);
        Ok(match protocol {
            Protocol::Http => Bound::Http(TcpListener::bind(at).await?),
            Protocol::Sink => Bound::Sink(TcpListener::bind(at).await?),
            Protocol::Udp => Bound::Udp(UdpSocket::bind(at).await?),
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Http(l) | Bound::Sink(l) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }

    /// Serves until the model's death (or the runtime's end).
    async fn serve(self, model: Model, epoch: watch::Receiver<Instant>, seed: u64) {
        let dies = model.dies_at.map(|at| death(epoch.clone(), at));
        let serving = async {
            match self {
                Bound::Http(listener) => serve_http(listener, model, epoch, seed).await,
                Bound::Sink(listener) => serve_sink(listener).await,
                Bound::Udp(socket) => serve_udp(socket, model, epoch, seed).await,
            }
        };
        match dies {
            // Dropping the serving future closes the listener and every connection with it.
            Some(dies) => tokio::select! {
                () = serving => {}
                () = dies => {}
            },
            None => serving.await,
        }
    }
}

/// Ends `at` after the epoch, as it is when that time comes.
async fn death(mut epoch: watch::Receiver<Instant>, at: Duration) {
    loop {
        let deadline = *epoch.borrow_and_update() + at;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            changed = epoch.changed() => if changed.is_err() {
                tokio::time::sleep_until(deadline).await;
                return;
            },
        }
    }
}

/// Waits until `until` within tens of microseconds: a service time of 2 ms is 2 ms, where
/// the runtime's own timers (1 ms grain, rounded up) would make it up to 3 or 4. Waits of
/// 20 ms and more, whose grain is noise, use the runtime's timer.
async fn sleep_precisely(until: Instant) {
    let now = Instant::now();
    if until <= now {
        return;
    }
    let wait = until - now;
    if wait >= Duration::from_millis(20) || timer_fd(wait).await.is_err() {
        tokio::time::sleep_until(until).await;
    }
}

/// A one-shot `timerfd` of `wait`, awaited on the runtime.
async fn timer_fd(wait: Duration) -> std::io::Result<()> {
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
    let expiration = Expiration::OneShot(TimeSpec::from_duration(wait));
    timer.set(expiration, TimerSetTimeFlags::empty())?;
    // SAFETY: `timer` owns its descriptor, open until the `TimerFd` is dropped, which only
    // the `AsyncFd` does (it owns it from here); its `as_raw_fd` always returns that one.
    let timer = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(timer, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    let _ready = timer.readable().await?;
    Ok(())
}

async fn serve_http(
    listener: TcpListener,
    model: Model,
    epoch: watch::Receiver<Instant>,
    seed: u64,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut next = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        next += 1;
        let rng = SmallRng::seed_from_u64(seed.wrapping_mul(1 << 32) ^ next);
        let rng = Arc::new(std::sync::Mutex::new(rng));
        let epoch = epoch.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let rng = Arc::clone(&rng);
                let start = *epoch.borrow();
                async move {
                    let now = Instant::now();
                    let delay = {
                        let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                        model.delay(&mut rng, start, now)
                    };
                    sleep_precisely(now + delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"ok\n",
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_sink(listener: TcpListener) {
    use tokio::io::AsyncReadExt;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_udp(socket: UdpSocket, model: Model, epoch: watch::Receiver<Instant>, seed: u64) {
    let socket = Arc::new(socket);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let now = Instant::now();
        let delay = model.delay(&mut rng, *epoch.borrow(), now);
        let answer = buf[..n].to_vec();
        let socket = Arc::clone(&socket);
        tokio::spawn(async move {
            sleep_precisely(now + delay).await;
            let _ = socket.send_to(&answer, from).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times_follow_their_model() {
        let mut rng = SmallRng::seed_from_u64(7);
        let ms = Duration::from_millis;
        let exp = ServiceTime::Exponential(ms(10));
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|_| exp.draw(&mut rng).as_secs_f64())
            .sum::<f64>()
            / f64::from(n);
        assert!((0.0095..0.0105).contains(&mean), "{mean}");
        let bimodal = ServiceTime::Bimodal {
            fast: ms(1),
            slow: ms(50),
            slow_share: 0.1,
        };
        let slow = (0..n).filter(|_| bimodal.draw(&mut rng) == ms(50)).count();
        assert!((1_800..2_200).contains(&slow), "{slow}");
        let start = Instant::now();
        let model = Model {
            slower: 10,
            stall: Some((ms(100), ms(200))),
            ..Model::steady(ServiceTime::Constant(ms(2)))
        };
        assert_eq!(
            model.delay(&mut rng, start, start),
            ms(20),
            "ten times slower"
        );
        let in_stall = start + ms(150);
        assert_eq!(model.delay(&mut rng, start, in_stall), ms(20) + ms(150));
    }
}
