//! Node-mode test rigs: network namespaces this test process creates (deleted on drop), veth
//! links between them, and a small static Kubernetes API server that lists fixed objects and
//! holds watches open.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates stay in
/// that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        // The thread ends after `f`, so no other code runs in the namespace by surprise.
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in the namespace")
}

/// Moves the calling thread (only) into network namespace `ns`: call it on a thread of
/// your own that ends with its work there.
pub fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    // SAFETY: setns on this thread only, with a descriptor that stays open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// `rlb-test-TAG-PID`, with its loopback up; `Err` (why) where this machine cannot
    /// create one (not root, no `ip`). Tests call [`netns`], which fails under `CI` then.
    pub fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("rlb-test-{tag}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {} {args:?}", self.0);
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    /// `sysctl -w SETTING` inside the namespace, which must succeed.
    pub fn sysctl(&self, setting: &str) {
        let out = self.exec(&["sysctl", "-qw", setting]);
        assert!(out.status.success(), "{setting} in {}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// How a machine gets what [`Netns::create`] needs.
pub const NETNS_HOW: &str =
    "run the tests as root, with iproute2 installed (apt-get install iproute2)";

/// A namespace `TAG` for a test, or `None` (the test is skipped) where namespaces cannot be
/// created here; under `CI` that fails the test instead (see [`super::require`]).
pub fn netns(tag: &str) -> Option<Netns> {
    super::require(Netns::create(tag), "a network namespace", NETNS_HOW)
}

/// A veth pair from `a` (interface `a_if`, addresses `a_addrs`) to `b` (`b_if`, `b_addrs`),
/// created inside `a`. IPv6 addresses skip duplicate address detection, so they are usable
/// at once.
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.0,
    ]);
    for (ns, dev, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// Fails the test, naming the package, unless `nft` and `conntrack` run here: wherever the
/// node-mode tests can create namespaces they need both (CI installs them), and a test that
/// skipped for want of them would pass without testing anything.
pub fn require_nft_and_conntrack() {
    for (program, package) in [("nft", "nftables"), ("conntrack", "conntrack")] {
        let runs = Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            runs,
            "the {program} program is needed by the node-mode tests: apt-get install {package}"
        );
    }
}

/// Connects from namespace `ns` and reads the backend's name line.
pub fn ask(ns: &str, to: &str) -> std::io::Result<String> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(super::read_name(&mut s))
    })
}

/// The objects an API server lists: `(resource, object)`, resource as in the URL path
/// (`services`, `endpointslices`, `nodes`, `servicecidrs`; others are not served: 404).
pub type Objects = Vec<(&'static str, Value)>;

/// A static API server on `127.0.0.1` of a namespace: lists `objects`, and holds watches
/// open (never reporting a change) until it is dropped.
pub struct FakeApi {
    stop: Arc<AtomicBool>,
    kubeconfig: PathBuf,
}

impl FakeApi {
    /// Serves `objects` inside namespace `ns`, with a kubeconfig for it named after `tag`.
    pub fn start(ns: &str, tag: &str, objects: Objects) -> FakeApi {
        let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let objects = Arc::new(objects);
        let serving = Arc::clone(&stop);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                if serving.load(Ordering::Relaxed) {
                    break;
                }
                let (stop, objects) = (Arc::clone(&serving), Arc::clone(&objects));
                std::thread::spawn(move || answer(s, &objects, &stop));
            }
        });
        let kubeconfig = super::write_config(
            &format!("{tag}-kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
                 http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  \
                 context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
            ),
        );
        FakeApi { stop, kubeconfig }
    }

    /// The kubeconfig file that points at this server.
    pub fn kubeconfig(&self) -> &str {
        self.kubeconfig.to_str().unwrap()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // Open watches end within 100 ms; the accept loop ends at its next connection.
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Answers one request on `s`: a list of the resource the path names, or a watch that stays
/// open (bounded) until `stop`.
fn answer(mut s: TcpStream, objects: &Objects, stop: &AtomicBool) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(n) if n > 2 => {}
            _ => break,
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let resource = path.rsplit('/').next().unwrap_or("");
    let list_kind = match resource {
        "services" => "ServiceList",
        "endpointslices" => "EndpointSliceList",
        "nodes" => "NodeList",
        "servicecidrs" => "ServiceCIDRList",
        _ => {
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    };
    if query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
    {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for _ in 0..1200 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    let items: Vec<&Value> = objects
        .iter()
        .filter(|(r, _)| *r == resource)
        .map(|(_, o)| o)
        .collect();
    let body = json!({"apiVersion": "v1", "kind": list_kind,
                      "metadata": {"resourceVersion": "1"}, "items": items})
    .to_string();
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
