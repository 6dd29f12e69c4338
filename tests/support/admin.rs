//! Test support for the admin API: plain HTTP/1.1 requests and a strict `/metrics` parse.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_parse::{HistogramCount, LineInfo, Scrape, Value};
use serde_json::Value as Json;

use super::{connect, Ringlb, PATIENCE};

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The header block, lower-cased.
    pub headers: String,
    pub body: String,
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole answer.
pub fn request(admin: SocketAddr, method: &str, target: &str) -> Reply {
    request_with(admin, method, target, "")
}

/// As [`request`] with `extra` header lines (each ending in `\r\n`).
pub fn request_with(admin: SocketAddr, method: &str, target: &str, extra: &str) -> Reply {
    let mut s = connect(admin);
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {admin}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of header in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// GETs `target` and asserts 200.
pub fn get(admin: SocketAddr, target: &str) -> String {
    let reply = request(admin, "GET", target);
    assert_eq!(reply.status, 200, "GET {target}: {reply:?}");
    reply.body
}

/// Sends `method target`, asserts 200 and a JSON answer, and parses it.
pub fn json_of(admin: SocketAddr, method: &str, target: &str) -> Json {
    let reply = request(admin, method, target);
    assert_eq!(reply.status, 200, "{method} {target}: {reply:?}");
    assert!(
        reply.headers.contains("content-type: application/json"),
        "{reply:?}"
    );
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{target}: {e}: {}", reply.body))
}

pub fn get_json(admin: SocketAddr, target: &str) -> Json {
    json_of(admin, "GET", target)
}

/// The admin address from the `admin addr=...` line printed after `ready`.
pub fn admin_addr(proxy: &Ringlb) -> SocketAddr {
    let line = proxy.wait_line("admin ");
    line.strip_prefix("admin addr=")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("bad admin line {line:?}"))
}

/// `/metrics`, parsed strictly: every line must be blank, `# HELP`, `# TYPE` or a sample with
/// a number; every family is one block (its lines never interleave with another's) whose
/// samples follow its `# TYPE`; counters end in `_total`; histograms have ascending `le`
/// buckets ending in `+Inf`, cumulative counts, and `_sum` and `_count` (equal to `+Inf`).
pub fn scrape(admin: SocketAddr) -> Scrape {
    let reply = request(admin, "GET", "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{reply:?}"
    );
    let text = reply.body;
    check_blocks(&text);
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!parsed.samples.is_empty(), "no samples in:\n{text}");
    let histograms: Vec<&str> = parsed
        .samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .map(|s| s.metric.as_str())
        .collect();
    for s in &parsed.samples {
        assert!(
            s.metric.starts_with("ringlb_"),
            "{} lacks the prefix",
            s.metric
        );
        match &s.value {
            Value::Counter(_) => assert!(s.metric.ends_with("_total"), "{}", s.metric),
            Value::Gauge(_) => assert!(!s.metric.ends_with("_total"), "{}", s.metric),
            Value::Histogram(buckets) => check_histogram(&parsed, &s.metric, &s.labels, buckets),
            // The parser leaves a histogram's _sum and _count untyped.
            Value::Untyped(_) => assert!(
                ["_sum", "_count"].iter().any(|suffix| s
                    .metric
                    .strip_suffix(suffix)
                    .is_some_and(|base| histograms.contains(&base))),
                "{} has no TYPE line",
                s.metric
            ),
            other => panic!("{}: unexpected {other:?}", s.metric),
        }
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| s.metric.strip_suffix(suffix))
            .filter(|base| histograms.contains(base))
            .unwrap_or(&s.metric);
        assert!(parsed.docs.contains_key(family), "{} has no HELP", s.metric);
    }
    parsed
}

/// Every line parses, each family's lines form one block, and samples follow a `# TYPE`.
fn check_blocks(text: &str) {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let family = match LineInfo::parse(line) {
            LineInfo::Ignored => panic!("malformed exposition line {line:?} in:\n{text}"),
            LineInfo::Empty => continue,
            LineInfo::Doc { metric_name, .. } => metric_name.to_owned(),
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                let kind = line.rsplit(' ').next().unwrap_or_default().to_owned();
                types.insert(family.clone(), kind);
                family
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                assert!(
                    value.parse::<f64>().is_ok() || value == "+Inf",
                    "sample value {value:?} in {line:?}"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| metric_name.strip_suffix(suffix))
                    .filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
                    .unwrap_or(metric_name);
                assert!(
                    types.contains_key(family),
                    "{line:?} comes before the TYPE of its family"
                );
                family.to_owned()
            }
        };
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !finished.contains(&family),
                "family {family} appears in two blocks:\n{text}"
            );
            if let Some(done) = current.replace(family) {
                finished.push(done);
            }
        }
    }
}

fn check_histogram(
    parsed: &Scrape,
    name: &str,
    labels: &prometheus_parse::Labels,
    buckets: &[HistogramCount],
) {
    assert!(
        buckets.windows(2).all(|w| w[0].less_than < w[1].less_than),
        "{name}{labels:?}: le not ascending: {buckets:?}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{name}{labels:?}: counts not cumulative: {buckets:?}"
    );
    let last = buckets.last().expect("a histogram has buckets");
    assert_eq!(last.less_than, f64::INFINITY, "{name}{labels:?} lacks +Inf");
    let untyped = |suffix: &str| {
        let metric = format!("{name}{suffix}");
        let found: Vec<f64> = parsed
            .samples
            .iter()
            .filter(|s| s.metric == metric && s.labels == *labels)
            .map(|s| match s.value {
                Value::Untyped(v) => v,
                ref other => panic!("{metric}: {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{metric}{labels:?} must appear once");
        found[0]
    };
    assert_eq!(
        untyped("_count"),
        last.count,
        "{name}{labels:?}: +Inf != _count"
    );
    assert!(untyped("_sum") >= 0.0, "{name}{labels:?}: negative _sum");
}

fn labels_are(s: &prometheus_parse::Sample, labels: &[(&str, &str)]) -> bool {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    *s.labels == want
}

/// The value of the series `name` with exactly `labels`; `None` when there is none.
pub fn series(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels_are(s, labels));
    let sample = found.next()?;
    assert!(found.next().is_none(), "{name}{labels:?} appears twice");
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

/// A histogram series as read from a scrape.
#[derive(Debug)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending, ending with `+Inf`.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// The histogram `name` with exactly `labels` (besides `le`); `None` when there is none.
pub fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
    let sample = scrape.samples.iter().find(|s| {
        s.metric == name && matches!(s.value, Value::Histogram(_)) && labels_are(s, labels)
    })?;
    let Value::Histogram(buckets) = &sample.value else {
        unreachable!()
    };
    Some(Histogram {
        buckets: buckets.iter().map(|b| (b.less_than, b.count)).collect(),
        sum: value(scrape, &format!("{name}_sum"), labels),
        count: value(scrape, &format!("{name}_count"), labels),
    })
}

/// Scrapes until `done` holds for the scrape (counters are updated as connections close).
pub fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = scrape(admin);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
