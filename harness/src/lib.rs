//! `ringlb bench`'s machinery: a load generator built for measuring and the synthetic
//! backends it measures against.
//!
//! - [`load`]: one load against one address, open loop (requests on a timetable, each
//!   latency measured from the time it was *scheduled*, so that a stalled target cannot hide
//!   its stall by slowing the client down: wrk2's correction of coordinated omission) or
//!   closed loop (N connections as fast as they go); HTTP/1.1 `GET` over keep-alive
//!   connections (`rr`) or a new connection per request (`cps`), as wrk speaks it, and UDP
//!   request/response (`udp`). Client threads each run their own runtime, pinned to the CPUs
//!   asked for.
//! - [`stats`]: what a load measured: latency percentiles from an HdrHistogram, throughput,
//!   errors by kind; the JSON report, every latency field in microseconds (`latency_us`).
//! - [`plot`]: the percentiles of runs as an SVG chart.
//! - [`backends`]: HTTP and UDP backends with a service-time model each (constant,
//!   exponential, bimodal, N times slower, a stall or a death at a given time).
//! - [`usage`]: what a measured system spends: its processes' CPU time and memory, and the
//!   whole machine's busy CPU time; [`idle`]: idle connections held through a proxy, to
//!   measure its memory per connection.
//!
//! Nothing here knows ringlb: a target is any address.

pub mod backends;
mod bulk;
mod client;
mod drive;
mod http;
pub mod idle;
pub mod load;
pub mod plot;
pub mod progress;
pub mod stats;
mod udp;
pub mod usage;
mod window;

pub use bulk::CHUNK;
pub use client::{pin, pin_set};
pub use drive::run;
pub use load::{Load, LoadError, Mode, Scenario};
pub use stats::{ErrorCounts, Latency, Report, StepReport, Timeline};
