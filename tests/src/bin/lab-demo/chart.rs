//! The demo's chart (SVG): offered load and where it went, each server's
//! utilization against the policy's levels, and the pool's size, over the
//! run, with the scaling events marked.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Result, anyhow};
use plotters::{coord::types::RangedCoordf64, prelude::*};

use crate::story::Summary;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 900;

fn colour(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ][i % 4]
}

/// Writes the chart of `summary` to `path`.
pub fn draw(path: &Path, summary: &Summary, upper: f64, lower: f64) -> Result<()> {
    draw_svg(path, summary, upper, lower).map_err(|e| anyhow!("chart {}: {e}", path.display()))
}

fn draw_svg(
    path: &Path,
    summary: &Summary,
    upper: f64,
    lower: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("xdplb demo: the pool follows the load", ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    let samples = &summary.samples;
    let end = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let servers: BTreeSet<&String> = samples
        .iter()
        .flat_map(|s| s.utilization.keys().chain(s.served.keys()))
        .collect();

    // Offered load and where it went.
    let top = samples
        .iter()
        .flat_map(|s| std::iter::once(s.offered).chain(s.served.values().copied()))
        .fold(10.0, f64::max)
        * 1.15;
    let mut chart = panel(
        &panels[0],
        "requests a second: offered, and served by each server",
        end,
        top,
    )?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.offered)),
            BLACK.stroke_width(2),
        ))?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    per_server(&mut chart, &servers, |server| {
        samples
            .iter()
            .map(|s| (s.t, s.served.get(server).copied().unwrap_or(0.0)))
            .collect()
    })?;

    // Utilization against the levels.
    let mut chart = panel(
        &panels[1],
        &format!("utilization (the manager's view); levels {upper} and {lower}"),
        end,
        1.1,
    )?;
    for level in [upper, lower] {
        chart.draw_series(LineSeries::new(
            [(0.0, level), (end, level)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
    }
    per_server(&mut chart, &servers, |server| {
        samples
            .iter()
            .filter_map(|s| s.utilization.get(server).map(|u| (s.t, *u)))
            .collect()
    })?;

    // The pool's size, and the changes.
    let most = samples.iter().map(|s| s.pool).max().unwrap_or(1).max(3);
    let mut chart = panel(
        &panels[2],
        "servers in the pool (allocated or draining)",
        end,
        most as f64 + 0.5,
    )?;
    let mut steps = Vec::new();
    for pair in samples.windows(2) {
        steps.push((pair[0].t, pair[0].pool as f64));
        steps.push((pair[1].t, pair[0].pool as f64));
    }
    chart.draw_series(LineSeries::new(steps, BLACK.stroke_width(2)))?;
    for s in &summary.scaling {
        let c = if s.kind == "allocated" {
            colour(2)
        } else {
            colour(3)
        };
        chart.draw_series(LineSeries::new(
            [(s.at, 0.0), (s.at, most as f64 + 0.5)],
            c.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} {}", s.server, s.kind),
            (s.at, most as f64 + 0.2),
            ("sans-serif", 13).into_font().color(&c),
        )))?;
    }
    root.present()?;
    Ok(())
}

type Panel<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A panel over the run (seconds) from 0 to `top`, its grid drawn.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    end: f64,
    top: f64,
) -> Result<Panel<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(38)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart.configure_mesh().x_desc("seconds").draw()?;
    Ok(chart)
}

/// One line per server, `points(server)`, with the legend.
fn per_server<'a, 'b: 'a>(
    chart: &mut Panel<'a, 'b>,
    servers: &BTreeSet<&String>,
    points: impl Fn(&str) -> Vec<(f64, f64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    for (i, server) in servers.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points(server), c.stroke_width(2)))?
            .label(server.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
