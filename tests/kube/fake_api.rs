//! The fake API server: objects kept with a change log, lists with a resourceVersion,
//! `watch=true` streams of JSON lines resumed from a resourceVersion, `410 Gone` for an
//! expired one, label and field selectors, and outages (listener closed, connections reset).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame};
use serde_json::{json, Value};

use crate::support::write_config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Slice,
    Node,
    ServiceCidr,
}

impl Kind {
    fn of(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::Slice),
            "/api/v1/nodes" => Some(Kind::Node),
            "/apis/networking.k8s.io/v1/servicecidrs" => Some(Kind::ServiceCidr),
            _ => None,
        }
    }

    fn of_object(o: &Value) -> Kind {
        match o["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::Slice,
            Some("Node") => Kind::Node,
            Some("ServiceCIDR") => Kind::ServiceCidr,
            other => panic!("fake API server: unsupported kind {other:?}"),
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::Slice => "EndpointSliceList",
            Kind::Node => "NodeList",
            Kind::ServiceCidr => "ServiceCIDRList",
        }
    }
}

/// `labelSelector` / `fieldSelector` terms: `key`, `!key`, `key=value`, `key!=value`.
#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<String>,
    fields: Vec<String>,
}

impl Selector {
    fn matches(&self, o: &Value) -> bool {
        let labels = &o["metadata"]["labels"];
        let label_ok = self.labels.iter().all(|t| {
            if let Some(k) = t.strip_prefix('!') {
                labels.get(k).is_none()
            } else if let Some((k, v)) = t.split_once("!=") {
                labels.get(k).and_then(Value::as_str) != Some(v)
            } else if let Some((k, v)) = t.split_once('=') {
                labels.get(k).and_then(Value::as_str) == Some(v)
            } else {
                labels.get(t).is_some()
            }
        });
        let field_ok = self.fields.iter().all(|t| match t.split_once('=') {
            Some(("metadata.name", v)) => o["metadata"]["name"].as_str() == Some(v),
            _ => panic!("fake API server: unsupported field selector {t}"),
        });
        label_ok && field_ok
    }
}

type Key = (Kind, String, String);

/// One change, kept so that a watch can resume from any resourceVersion.
struct Change {
    rv: u64,
    kind: Kind,
    before: Option<Value>,
    after: Option<Value>,
}

struct Watcher {
    kind: Kind,
    selector: Selector,
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    watchers: Vec<Watcher>,
    /// Kinds whose next watch request is answered `410 Gone`.
    expire: BTreeSet<Kind>,
    /// Watch requests served, per kind (to wait for a resumed watch).
    watches: BTreeMap<Kind, usize>,
    /// Every request, as RBAC sees it: (API group, resource, verb).
    requests: BTreeSet<(String, String, String)>,
}

/// What a watcher with `selector` sees of a change: the event type and object.
fn event_for(selector: &Selector, c: &Change) -> Option<Value> {
    let before = c.before.as_ref().filter(|o| selector.matches(o));
    let after = c.after.as_ref().filter(|o| selector.matches(o));
    let (kind, object) = match (before, after) {
        (None, Some(a)) => ("ADDED", a),
        (Some(_), Some(a)) => ("MODIFIED", a),
        (Some(b), None) => ("DELETED", c.after.as_ref().unwrap_or(b)),
        (None, None) => return None,
    };
    Some(json!({"type": kind, "object": object}))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A response body fed from a channel: the list at once, or watch events as they happen.
/// The stream ends when the sender is dropped.
struct ChanBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The fake API server: objects, a change log, and open watches.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    /// The listening thread, `None` during an [`FakeApi::outage`].
    server: Arc<Mutex<Option<Server>>>,
}

/// The thread that accepts and serves connections, on a runtime of its own.
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(listener: std::net::TcpListener, state: Arc<Mutex<Inner>>) -> Server {
        listener.set_nonblocking(true).unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // A second descriptor of every accepted socket, to reset it at an outage.
                let mut accepted: Vec<socket2::Socket> = Vec::new();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => break,
                        accept = listener.accept() => match accept {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    accepted.push(socket2::SockRef::from(&stream).try_clone().unwrap());
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(handle(&state, &req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Linger 0: the last close of each socket (when the runtime drops its
                // connection tasks) sends a reset, as a crashed API server's host would.
                for s in &accepted {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            });
        });
        Server { stop, thread }
    }
}

impl FakeApi {
    pub fn start() -> FakeApi {
        FakeApi::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A server on `ip`: a test that restarts its server on the same port binds an address
    /// of its own, which no other test's connections use.
    pub fn start_on(ip: IpAddr) -> FakeApi {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let server = Server::start(listener, Arc::clone(&inner));
        FakeApi {
            inner,
            addr,
            server: Arc::new(Mutex::new(Some(server))),
        }
    }

    /// The API becomes unreachable: the listener is closed (new connections are refused)
    /// and every open connection is reset. Objects and their change log stay, and may be
    /// changed meanwhile.
    pub fn outage(&self) {
        let server = self.server.lock().unwrap().take().expect("the server runs");
        let _ = server.stop.send(());
        server.thread.join().unwrap();
        self.inner.lock().unwrap().watchers.clear();
    }

    /// The API answers again on the same address.
    pub fn recover(&self) {
        let listener = std::net::TcpListener::bind(self.addr).unwrap();
        let server = Server::start(listener, Arc::clone(&self.inner));
        let old = self.server.lock().unwrap().replace(server);
        assert!(old.is_none(), "recover follows an outage");
    }

    /// A kubeconfig file that points kube's client at this server (plain HTTP).
    pub fn kubeconfig(&self) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.addr
        );
        // One file per fake server: tests of this binary run in parallel threads.
        write_config(&format!("kubeconfig-{}", self.addr.port()), &text)
    }

    /// Creates or replaces an object, and tells the watches.
    pub fn apply(&self, mut o: Value) {
        let kind = Kind::of_object(&o);
        let meta = o["metadata"].as_object_mut().unwrap();
        meta.entry("namespace").or_insert(json!("default"));
        if matches!(kind, Kind::Node | Kind::ServiceCidr) {
            meta.remove("namespace");
        }
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(kind, &o);
        let before = inner.objects.insert(key, o.clone());
        inner.publish(Change {
            rv,
            kind,
            before,
            after: Some(o),
        });
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let before = inner
            .objects
            .remove(&key)
            .expect("deleting an existing object");
        inner.rv += 1;
        let rv = inner.rv;
        inner.publish(Change {
            rv,
            kind,
            before: Some(before),
            after: None,
        });
    }

    /// Ends every open watch stream of `kind` (the server closes the connection's response);
    /// with `expire`, the next watch of that kind is answered `410 Gone`, so the client must
    /// list again.
    pub fn break_watches(&self, kind: Kind, expire: bool) -> usize {
        let mut inner = self.inner.lock().unwrap();
        if expire {
            inner.expire.insert(kind);
        }
        inner.watchers.retain(|w| w.kind != kind);
        inner.watches.get(&kind).copied().unwrap_or(0)
    }

    /// Every request so far as RBAC authorizes it: (API group, resource, verb).
    pub fn rbac_requests(&self) -> BTreeSet<(String, String, String)> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn watches(&self, kind: Kind) -> usize {
        self.inner
            .lock()
            .unwrap()
            .watches
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }
}

fn key_of(kind: Kind, o: &Value) -> Key {
    let m = &o["metadata"];
    (
        kind,
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap().to_owned(),
    )
}

impl Inner {
    fn publish(&mut self, change: Change) {
        self.watchers.retain(|w| {
            if w.kind != change.kind {
                return true;
            }
            match event_for(&w.selector, &change) {
                Some(ev) => w.tx.send(line(&ev)).is_ok(),
                None => true,
            }
        });
        self.log.push(change);
    }
}

/// What RBAC checks of a request: the API group and resource from the path
/// (`/api/v1/<resource>[/<name>]`, `/apis/<group>/<version>/<resource>[/<name>]`, with an
/// optional `namespaces/<ns>/` before the resource), and the verb from the method and
/// whether one object, a list or a watch is asked for.
fn rbac_request(req: &hyper::Request<hyper::body::Incoming>) -> (String, String, String) {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let (group, mut rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("?", &parts[..0]),
    };
    if let ["namespaces", _, more @ ..] = rest {
        if !more.is_empty() {
            rest = more;
        }
    }
    let (resource, named) = match rest {
        [resource] => (*resource, false),
        [resource, _name, ..] => (*resource, true),
        _ => ("?", false),
    };
    let watch = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (req.method().as_str(), named, watch) {
        ("GET", true, _) => "get",
        ("GET", false, true) => "watch",
        ("GET", false, false) => "list",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", ..) => "delete",
        (other, ..) => other,
    };
    (group.to_owned(), resource.to_owned(), verb.to_owned())
}

fn handle(
    state: &Mutex<Inner>,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<ChanBody> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let respond = |status: u16, rx| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(ChanBody(rx))
            .unwrap()
    };
    let request = rbac_request(req);
    state.lock().unwrap().requests.insert(request);
    let Some(kind) = Kind::of(req.uri().path()) else {
        let _ = tx.send(line(&json!({"kind": "Status", "code": 404})));
        return respond(404, rx);
    };
    let mut selector = Selector::default();
    let mut watch = false;
    let mut since: Option<u64> = None;
    for pair in req.uri().query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        let terms = || v.split(',').filter(|t| !t.is_empty()).map(str::to_owned);
        match k {
            "labelSelector" => selector.labels = terms().collect(),
            "fieldSelector" => selector.fields = terms().collect(),
            "watch" => watch = v == "true" || v == "1",
            "resourceVersion" => since = v.parse().ok(),
            _ => {}
        }
    }
    let mut inner = state.lock().unwrap();
    if !watch {
        let items: Vec<&Value> = inner
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && selector.matches(o))
            .map(|(_, o)| o)
            .collect();
        let list = json!({
            "kind": kind.list_kind(),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        });
        let _ = tx.send(line(&list));
        return respond(200, rx);
    }
    *inner.watches.entry(kind).or_default() += 1;
    if inner.expire.remove(&kind) {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        let _ = tx.send(line(&gone));
        return respond(200, rx);
    }
    let since = since.unwrap_or(inner.rv);
    for c in inner.log.iter().filter(|c| c.kind == kind && c.rv > since) {
        if let Some(ev) = event_for(&selector, c) {
            let _ = tx.send(line(&ev));
        }
    }
    inner.watchers.push(Watcher { kind, selector, tx });
    respond(200, rx)
}
