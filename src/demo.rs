//! `ringlb demo`: the main job on an embedded default config, with local backends and a
//! burst of requests through it ([`traffic`]).

mod traffic;

use anyhow::Context;

use crate::cli::{DemoArgs, ReloadArgs};
use crate::serve::serve;

const DEMO_CONFIG: &str = include_str!("demo.yaml");

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = config::parse_yaml("embedded demo config", DEMO_CONFIG)?;
    let svc = &mut config.services[0];
    if let Some(listen) = args.listen {
        svc.listen = vec![listen];
        if listen.port() == 0 {
            for b in &mut svc.backends {
                b.address.set_port(0);
            }
        }
    }
    let wanted: Vec<_> = svc.backends.iter().map(|b| b.address).collect();
    let backends = traffic::start_backends(&wanted).context("cannot start the demo backends")?;
    for (b, addr) in svc.backends.iter_mut().zip(&backends.addrs) {
        b.address = *addr;
    }
    println!(
        "demo backends: {}",
        backends
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut burst_result = Ok(());
    serve(
        config,
        None,
        &ReloadArgs::default(),
        &args.data_plane,
        None,
        |proxy| {
            let target = proxy.frontends()[0].local_addr;
            println!(
                "sending {} requests ({} at a time) through ringlb at {target} ...",
                args.requests, args.concurrency
            );
            burst_result = traffic::burst(
                target,
                args.requests as usize,
                usize::from(args.concurrency),
            )
            .map(|report| print_report(&report))
            .context("demo burst failed");
            if args.once {
                // Ends the serve loop exactly like Ctrl-C would.
                signal_hook::low_level::raise(signal_hook::consts::SIGTERM).ok();
            } else {
                println!("\nringlb keeps serving; try:\n  curl http://{target}/\n  echo hello | nc -q1 {} {}\nCtrl-C to stop.", target.ip(), target.port());
            }
        },
    )?;
    burst_result
}

fn print_report(r: &traffic::BurstReport) {
    let total: u64 = r.per_backend.iter().map(|(_, n)| n).sum();
    println!("\nconnections per backend (scheduler rr):");
    for (name, n) in &r.per_backend {
        let pct = 100.0 * *n as f64 / total.max(1) as f64;
        println!(
            "  {name:<10} {n:>7}  {pct:5.1}%  {}",
            "#".repeat((pct / 2.0).round() as usize)
        );
    }
    println!("  failed     {:>7}", r.failed);
    let h = &r.latency_us;
    println!(
        "\nlatency per request (new connection + request + answer), {} requests in {:.2}s ({:.0} req/s):",
        h.len(),
        r.elapsed.as_secs_f64(),
        h.len() as f64 / r.elapsed.as_secs_f64().max(1e-9)
    );
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!("  {label:<6} {:>8} us", h.value_at_quantile(q));
    }
    println!("  max    {:>8} us", h.max());
}
