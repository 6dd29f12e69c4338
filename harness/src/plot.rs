//! `--svg`: the latency percentiles of one or more runs (a target, each scheduler, each
//! proxy) as one SVG chart, a line per run, named in its legend.

use plotters::prelude::*;

use crate::stats::Latency;

/// The percentiles on the x axis, in order.
const POINTS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

/// The chart titled `title` of `series` (name and percentiles), in milliseconds.
pub fn percentiles(title: &str, series: &[(String, Latency)]) -> Result<String, PlotError> {
    let mut svg = String::new();
    draw(&mut svg, title, series).map_err(|e| PlotError(e.to_string()))?;
    Ok(svg)
}

fn values(l: &Latency) -> [f64; 5] {
    [l.p50, l.p90, l.p99, l.p999, l.max].map(|us| us as f64 / 1000.0)
}

fn draw(
    svg: &mut String,
    title: &str,
    series: &[(String, Latency)],
) -> Result<(), Box<dyn std::error::Error>> {
    let top = series
        .iter()
        .flat_map(|(_, l)| values(l))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let root = SVGBackend::with_string(svg, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..4i32).into_segmented(), 0f64..top)?;
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
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_well_formed_svg_naming_every_series_and_percentile() {
        let l = |p99| Latency {
            p50: 1_000,
            p90: 2_000,
            p99,
            p999: p99 * 2,
            max: p99 * 3,
            mean: 1_500.0,
        };
        let series = vec![("rr".to_owned(), l(40_000)), ("lc".to_owned(), l(20_000))];
        let svg = percentiles("schedulers", &series).unwrap();
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
        ] {
            assert!(texts.contains(&want), "{want} in {texts:?}");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .count();
        assert_eq!(lines, 4, "a line and a legend mark per series");
    }
}
