//! `--svg`: one or more runs (a target, each scheduler, each proxy) as one SVG picture of two
//! charts, a line per run named in the legends: the latency percentiles, and the
//! throughput over time with the moments marked when something happened (a backend slowed,
//! stalled or died).

use plotters::prelude::*;

use crate::stats::{Latency, Report, Timeline};

/// The percentiles on the x axis, in order.
const POINTS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

/// Something that happened during the runs, `at_s` seconds into the measured window.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at_s: f64,
    pub what: String,
}

/// The picture titled `title` of `runs` (name and report), with `events` marked on the
/// throughput chart.
pub fn runs(
    title: &str,
    runs: &[(String, &Report)],
    events: &[Event],
) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 900)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| PlotError(e.to_string()))
            .and_then(|()| {
                let (top, bottom) = root.split_vertically(480);
                let latencies: Vec<_> = runs
                    .iter()
                    .map(|(n, r)| (n.clone(), r.latency_us))
                    .collect();
                draw_percentiles(&top, title, &latencies).map_err(|e| PlotError(e.to_string()))?;
                let timelines: Vec<_> = runs
                    .iter()
                    .map(|(n, r)| (n.as_str(), &r.timeline))
                    .collect();
                draw_throughput(&bottom, &timelines, events).map_err(|e| PlotError(e.to_string()))
            });
        drawn?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    Ok(svg)
}

fn values(l: &Latency) -> [f64; 5] {
    [l.p50, l.p90, l.p99, l.p999, l.max].map(|us| us as f64 / 1000.0)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A chart's frame: its caption and the room for its axes' labels.
fn frame<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60);
    builder
}

/// Draws the legend of `chart`'s named series.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_percentiles(
    area: &Area<'_>,
    title: &str,
    series: &[(String, Latency)],
) -> Result<(), Box<dyn std::error::Error>> {
    let top = series
        .iter()
        .flat_map(|(_, l)| values(l))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = frame(area, title).build_cartesian_2d((0..4i32).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| POINTS.get(i))
                .map_or_else(String::new, |s| (*s).to_owned()),
            SegmentValue::Last => String::new(),
        })
        .draw()?;
    for (k, (name, latency)) in series.iter().enumerate() {
        let color = Palette99::pick(k).stroke_width(2);
        let points = values(latency)
            .into_iter()
            .zip(0i32..)
            .map(|(ms, i)| (SegmentValue::CenterOf(i), ms));
        chart
            .draw_series(LineSeries::new(points, color))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart)
}

fn draw_throughput(
    area: &Area<'_>,
    series: &[(&str, &Timeline)],
    events: &[Event],
) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, t)| t.throughput().collect())
        .collect();
    let right = series
        .iter()
        .map(|(_, t)| t.interval_s * t.answered.len() as f64)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let top = points
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart =
        frame(area, "throughput over time").build_cartesian_2d(0f64..right, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the warm-up")
        .y_desc("answered a second")
        .draw()?;
    for (k, ((name, _), points)) in series.iter().zip(points).enumerate() {
        let color = Palette99::pick(k).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, color))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    for event in events {
        let mark = RED.stroke_width(3);
        let line = vec![(event.at_s, 0.0), (event.at_s, top)];
        chart
            .draw_series(LineSeries::new(line, mark))?
            .label(format!("{} at {:.1}s", event.what, event.at_s))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], mark));
    }
    legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_is_well_formed_svg_naming_every_series_percentile_and_event() {
        let report = |p99, rps: u64| Report {
            target: "127.0.0.1:1".to_owned(),
            scenario: "cps".to_owned(),
            mode: "open".to_owned(),
            rate: Some(100.0),
            connections: 4,
            threads: 1,
            duration_s: 1.0,
            warmup_s: 0.0,
            requests: rps,
            throughput_rps: rps as f64,
            bytes: 0,
            throughput_gbps: 0.0,
            errors: Default::default(),
            latency_us: Latency {
                p50: 1_000,
                p90: 2_000,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
                mean: 1_500.0,
            },
            steps: Vec::new(),
            timeline: Timeline {
                interval_s: 0.1,
                answered: vec![rps / 10; 10],
                failed: vec![0; 10],
            },
            client_cpu_us_per_request: 5.0,
        };
        let (rr, lc) = (report(40_000, 100), report(20_000, 90));
        let runs = vec![("rr".to_owned(), &rr), ("lc".to_owned(), &lc)];
        let events = [Event {
            at_s: 0.5,
            what: "backend 1 dies".to_owned(),
        }];
        let svg = super::runs("schedulers", &runs, &events).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for want in [
            "schedulers",
            "rr",
            "lc",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "throughput over time",
            "answered a second",
            "backend 1 dies at 0.5s",
        ] {
            assert!(texts.contains(&want), "{want} in {texts:?}");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| matches!(n.attribute("stroke-width"), Some("2" | "3")))
            .count();
        assert_eq!(
            lines,
            4 + 4 + 2,
            "a line and a legend mark per series and event"
        );
    }
}
