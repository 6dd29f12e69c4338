//! A worker's accept loop, in process, under both drivers: it serves until its frontend is
//! closed and then ends, resets a connection the descriptor budget has no room for, keeps
//! accepting after running out of descriptors, and `Command::Cut` resets what is open.
//!
//! A child of `worker.rs` (through `#[path]`), for the worker's private items; the shared test
//! support is in `tests/mod.rs`.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpStream as StdStream};
use std::os::fd::AsRawFd;

use config::{Backend as BackendConfig, Config, Protocol, Service, ServiceEntry};

use super::*;
use crate::listener::{bind_group, ListenGroup, ListenSocket};
use crate::telemetry::CloseReason;
use crate::tests::backend::{connect, read_to_end, round_trip, send_then_read, Backend, End, Seen};
use crate::tests::{off_thread, on_each_driver, signal, until, wait_for, within, Pending, BUFFER};

/// A worker of its own on the test's runtime, serving one frontend on a free loopback port
/// for one service in front of `backend`.
struct Rig {
    worker: Rc<Worker>,
    key: FrontendKey,
    front: SocketAddr,
    entry: Arc<ServiceEntry>,
    telemetry: Arc<Telemetry>,
    fds: Arc<FdBudget>,
}

impl Rig {
    fn new(backend: &Backend, fds: FdBudget) -> Rig {
        let any = "127.0.0.1:0".parse().unwrap();
        let (local_addr, sockets) =
            bind_group(Protocol::Tcp, any, 1, false).expect("bind the frontend");
        let mut group = ListenGroup::new(
            Protocol::Tcp,
            crate::Opened {
                local_addr,
                sockets,
            },
        );
        let (key, front) = (group.key, group.local_addr);
        let service = Service::with_defaults(
            "svc",
            Protocol::Tcp,
            vec![front],
            vec![BackendConfig::new(backend.addr, 1)],
            balancers::SchedulerConfig::default(),
        );
        let table = Table::build(
            &Config {
                services: vec![service],
            },
            None,
        );
        let entry = Arc::clone(table.lookup(&key).expect("the frontend's service"));
        let telemetry = Arc::new(Telemetry::new(1, true));
        let fds = Arc::new(fds);
        let worker = Worker::new(
            0,
            Arc::new(ArcSwap::from_pointee(table)),
            BUFFER,
            UdpWake {
                busy_poll: None,
                coalesce: None,
                held: false,
            },
            Rc::new(WorkerTelemetry::new(Arc::clone(&telemetry), 0)),
            HandedOver::new(),
            Arc::clone(&fds),
        );
        let socket = group.sockets.pop().expect("one socket");
        assert!(matches!(socket, ListenSocket::Tcp(_)));
        worker.listen(key, socket).expect("serve the frontend");
        Rig {
            worker,
            key,
            front,
            entry,
            telemetry,
            fds,
        }
    }

    /// The service's `count` over the worker's shard.
    fn count(&self, count: Count) -> u64 {
        self.telemetry.snapshot().service(&self.entry).count(count)
    }

    fn closed(&self, reason: CloseReason) -> u64 {
        self.telemetry
            .snapshot()
            .service(&self.entry)
            .closed(reason)
    }
}

/// A client relayed to an echo backend that tells the test once one byte went there and back,
/// then waits for `go` (or, without it, for whatever ends the connection), and reports what it
/// read after that.
fn held_client(
    front: SocketAddr,
    go: Option<flume::Receiver<()>>,
) -> (flume::Receiver<()>, Pending<Seen>) {
    let (ready, established) = signal();
    let client = off_thread(move || {
        let mut s = connect(front);
        round_trip(&mut s, 1);
        ready.send(()).unwrap();
        if let Some(go) = go {
            go.recv().unwrap();
            round_trip(&mut s, 2);
            s.shutdown(Shutdown::Write).unwrap();
        }
        read_to_end(&mut s)
    });
    (established, client)
}

/// A new connection through `front`: what it read after sending one byte.
fn one_byte_through(front: SocketAddr) -> Pending<Seen> {
    off_thread(move || send_then_read(&mut connect(front), &[3]))
}

#[test]
fn serves_until_its_frontend_is_closed_then_the_loop_ends() {
    on_each_driver(|kind| async move {
        let echo = Backend::echo();
        let rig = Rig::new(&echo, FdBudget::default());
        let listener = match rig.worker.frontends.borrow().get(&rig.key) {
            Some(Frontend::Tcp { listener, .. }) => Rc::downgrade(listener),
            _ => panic!("{kind}: no TCP frontend"),
        };
        let (go, release) = flume::bounded(1);
        let (established, held) = held_client(rig.front, Some(release));
        wait_for("the first connection relayed", &established).await;

        rig.worker.unlisten(&rig.key);
        let front = rig.front;
        let refused = off_thread(move || StdStream::connect(front).map(drop).map_err(|e| e.kind()));
        assert_eq!(
            refused.wait().await,
            Err(ErrorKind::ConnectionRefused),
            "{kind}: a closed frontend refuses at once"
        );
        until("the accept loop ended and let its listener go", || {
            listener.upgrade().is_none()
        })
        .await;

        go.send(()).unwrap();
        let after = held.wait().await;
        assert_eq!(after.end, End::Eof, "{kind}: the open connection went on");
        until("the connection counted closed", || {
            rig.worker.open.get() == 0
        })
        .await;
        assert_eq!(rig.count(Count::Accepted), 1, "{kind}");
        assert_eq!(rig.closed(CloseReason::Eof), 1, "{kind}");
    });
}

#[test]
fn a_connection_the_descriptor_budget_has_no_room_for_is_reset() {
    on_each_driver(|kind| async move {
        let echo = Backend::echo();
        // Room for one relayed connection: its client and its backend socket.
        let rig = Rig::new(&echo, FdBudget::new(2));
        let (go, release) = flume::bounded(1);
        let (established, held) = held_client(rig.front, Some(release));
        wait_for("the first connection relayed", &established).await;
        assert_eq!(rig.fds.used(), 2, "{kind}");

        let over = one_byte_through(rig.front).wait().await;
        assert_eq!(
            (over.bytes.len(), over.end),
            (0, End::Reset),
            "{kind}: reset at accept"
        );
        assert_eq!(rig.fds.refused_tcp(), 1, "{kind}");
        assert_eq!(rig.count(Count::NoDescriptors), 1, "{kind}");

        go.send(()).unwrap();
        assert_eq!(held.wait().await.end, End::Eof, "{kind}");
        until("the budget given back", || rig.fds.used() == 0).await;
        let later = one_byte_through(rig.front).wait().await;
        assert_eq!(
            (later.bytes, later.end),
            (vec![3], End::Eof),
            "{kind}: served again once there is room"
        );
        assert_eq!(rig.fds.refused_tcp(), 1, "{kind}");
    });
}

#[test]
fn cut_resets_what_is_open_and_what_connects_later() {
    on_each_driver(|kind| async move {
        let echo = Backend::echo();
        let rig = Rig::new(&echo, FdBudget::default());
        let (commands, rx) = flume::unbounded();
        monoio::spawn(Rc::clone(&rig.worker).commands(rx));
        let (first_up, first) = held_client(rig.front, None);
        let (second_up, second) = held_client(rig.front, None);
        wait_for("the first connection relayed", &first_up).await;
        wait_for("the second connection relayed", &second_up).await;

        let (reply, answer) = flume::unbounded();
        commands.send(Command::Cut(reply)).unwrap();
        let open = within("the worker's answer to Cut", async {
            answer.recv_async().await.expect("an answer")
        })
        .await;
        assert_eq!(open, 2, "{kind}: connections open at the cut");
        for client in [first, second] {
            assert_eq!(client.wait().await.end, End::Reset, "{kind}: a client");
            assert_eq!(echo.seen().await.end, End::Reset, "{kind}: its backend");
        }
        until("both counted closed", || rig.worker.open.get() == 0).await;
        assert_eq!(rig.closed(CloseReason::DrainTimeout), 2, "{kind}");

        let late = one_byte_through(rig.front).wait().await;
        assert_eq!(late.end, End::Reset, "{kind}: connected after the cut");
        until("the late one counted", || {
            rig.closed(CloseReason::DrainTimeout) == 3
        })
        .await;
    });
}

/// Set in the child process that [`keeps_accepting_after_running_out_of_descriptors`] starts.
const STARVED: &str = "RINGLB_TEST_STARVED_CHILD";

/// The process's open-file limit lowered to the descriptors open now, restored on drop.
struct Starved {
    soft: u64,
    hard: u64,
}

impl Starved {
    fn now() -> Starved {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        // The lowest free descriptor: the limit there refuses every new one.
        let probe = std::fs::File::open("/dev/null").unwrap();
        let lowest_free = probe.as_raw_fd() as u64;
        drop(probe);
        rlimit::setrlimit(rlimit::Resource::NOFILE, lowest_free, hard).unwrap();
        let refused = std::fs::File::open("/dev/null").map(drop);
        assert_eq!(
            refused.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EMFILE)),
            "the lowered limit is in force"
        );
        Starved { soft, hard }
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        rlimit::setrlimit(rlimit::Resource::NOFILE, self.soft, self.hard).unwrap();
    }
}

/// The accept loop survives `EMFILE` and serves the connection that waited once descriptors
/// are back. The open-file limit is process-wide, so this runs in a child process of its own
/// (this test binary, this test only) where nothing else can run out of descriptors.
#[test]
fn keeps_accepting_after_running_out_of_descriptors() {
    if std::env::var_os(STARVED).is_some() {
        return starved();
    }
    let module = module_path!().split_once("::").expect("crate::module").1;
    let name = format!("{module}::keeps_accepting_after_running_out_of_descriptors");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(STARVED, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

fn starved() {
    on_each_driver(|kind| async move {
        let echo = Backend::echo();
        let rig = Rig::new(&echo, FdBudget::default());
        // Its descriptor taken now: connecting it later needs none.
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("the client's socket");
        let starved = Starved::now();
        client
            .connect(&rig.front.into())
            .expect("queued by the kernel");
        until("the accept loop out of descriptors", || {
            rig.worker.exhausted.hit_yet()
        })
        .await;
        drop(starved);
        let served = off_thread(move || {
            let mut s: StdStream = client.into();
            s.set_read_timeout(Some(crate::tests::PATIENCE)).unwrap();
            round_trip(&mut s, 4);
        });
        served.wait().await;
        assert_eq!(rig.count(Count::Accepted), 1, "{kind}");
    });
}
