//! The timeline as an SVG chart: answers per 100 ms by color, stacked, with
//! a marker at every command. Plain SVG whose text names a generic font
//! family, so the file stays small and embeds no font.

use std::error::Error;

use plotters::{coord::Shift, prelude::*, style::FontStyle};

use super::{
    machine::Machine,
    timeline::{Buckets, Counts, TimelineReport},
};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;
const HEADER: u32 = 88;
/// The new-connection panel; the keep-alive panel takes the rest.
const MAIN_PANEL: u32 = 340;
const FONT: &str = "sans-serif";

const BLUE: RGBColor = RGBColor(0x1f, 0x6f, 0xd0);
const GREEN: RGBColor = RGBColor(0x2e, 0xa0, 0x43);
const RED: RGBColor = RGBColor(0xd7, 0x26, 0x28);
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);

type Drawn = Result<(), Box<dyn Error>>;

pub fn timeline_svg(timeline: &TimelineReport, machine: &Machine) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, timeline, machine).expect("drawing into a string cannot fail");
        root.present().expect("drawing into a string cannot fail");
    }
    svg
}

fn draw(
    root: &DrawingArea<SVGBackend, Shift>,
    timeline: &TimelineReport,
    machine: &Machine,
) -> Drawn {
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    let (main, keep_alive) = body.split_vertically(MAIN_PANEL);
    draw_header(&header, timeline, machine)?;
    let seconds = timeline.phase_ms * timeline.phases.len() as f64 / 1e3;
    panel(
        &main,
        timeline,
        &timeline.new_connections,
        Panel {
            caption: format!(
                "new connections ({} clients, one every {:.0} ms each): {}",
                timeline.clients,
                timeline.pace_ms,
                totals(timeline.new_connection_totals())
            ),
            labels: true,
            seconds,
        },
    )?;
    panel(
        &keep_alive,
        timeline,
        &timeline.keep_alive,
        Panel {
            caption: format!(
                "requests on {} keep-alive connections opened before the first command: {}",
                timeline.keep_alive_connections,
                totals(timeline.keep_alive_totals())
            ),
            labels: false,
            seconds,
        },
    )
}

fn draw_header(
    header: &DrawingArea<SVGBackend, Shift>,
    timeline: &TimelineReport,
    machine: &Machine,
) -> Drawn {
    header.draw(&Text::new(
        "bluegreen: who answers, per 100 ms, through a switch, a rollback and a weighted shift",
        (16, 12),
        (FONT, 19).into_font().style(FontStyle::Bold),
    ))?;
    let mut x = 16;
    for (color, name) in [(BLUE, "blue"), (GREEN, "green"), (RED, "failed")] {
        header.draw(&Rectangle::new([(x, 40), (x + 13, 53)], color.filled()))?;
        header.draw(&Text::new(name, (x + 18, 39), (FONT, 16)))?;
        x += 32 + 9 * name.len() as i32;
    }
    header.draw(&Text::new(
        format!(
            "{}, {} CPUs, kernel {}, {}",
            timeline.dataplane.label(),
            machine.nproc,
            machine.kernel,
            machine.date
        ),
        (x + 16, 39),
        (FONT, 15).into_font().color(&GREY),
    ))?;
    if let Some(first) = timeline.problems.first() {
        header.draw(&Text::new(
            format!(
                "CHECK FAILED: {first}{}",
                match timeline.problems.len() {
                    1 => String::new(),
                    more => format!(" (and {} more)", more - 1),
                }
            ),
            (16, 64),
            (FONT, 16).into_font().style(FontStyle::Bold).color(&RED),
        ))?;
    }
    Ok(())
}

fn totals(counts: Counts) -> String {
    format!(
        "{} blue, {} green, {} failed",
        counts.blue, counts.green, counts.failed
    )
}

struct Panel {
    caption: String,
    /// Whether the command markers carry their command.
    labels: bool,
    seconds: f64,
}

fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    timeline: &TimelineReport,
    buckets: &Buckets,
    panel: Panel,
) -> Drawn {
    let width = timeline.bucket_ms / 1e3;
    let blue: Vec<f64> = buckets.blue.iter().map(|&n| f64::from(n)).collect();
    let green: Vec<f64> = buckets.green.iter().map(|&n| f64::from(n)).collect();
    let failed: Vec<f64> = buckets.failed.iter().map(|&n| f64::from(n)).collect();
    let sum = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let blue_green = sum(&blue, &green);
    let all = sum(&blue_green, &failed);
    // Headroom above the highest bucket for the markers' labels.
    let top = all.iter().copied().fold(1.0, f64::max) * if panel.labels { 1.35 } else { 1.2 };
    let mut chart = ChartBuilder::on(area)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(6)
        .caption(panel.caption, (FONT, 16))
        .x_label_area_size(34)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..panel.seconds, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.08))
        .y_labels(5)
        .x_labels(panel.seconds.ceil() as usize + 1)
        .x_label_formatter(&|s| format!("{s:.0} s"))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .y_desc("per 100 ms")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 14))
        .draw()?;
    // Each area is drawn over the previous, taller one: stacked.
    for (values, color) in [(&all, RED), (&blue_green, GREEN), (&blue, BLUE)] {
        chart.draw_series(
            AreaSeries::new(steps(values, width), 0.0, color.mix(0.85)).border_style(color),
        )?;
    }
    for phase in timeline.phases.iter().skip(1) {
        let x = phase.at_ms / 1e3;
        chart.draw_series(std::iter::once(PathElement::new(
            [(x, 0.0), (x, top)],
            GREY.mix(0.7).stroke_width(1),
        )))?;
        if panel.labels {
            for (line, text) in phase.command.split(" --").enumerate() {
                let text = if line == 0 {
                    text.to_owned()
                } else {
                    format!("--{text}")
                };
                chart.plotting_area().draw(
                    &(EmptyElement::at((x, top))
                        + Text::new(text, (5, 4 + 16 * line as i32), (FONT, 15))),
                )?;
            }
        }
    }
    Ok(())
}

/// Bucket counts as a step line: flat across each bucket, so that no value
/// seems to exist between two buckets. A run of equal buckets is one flat
/// segment, which keeps the file small.
fn steps(values: &[f64], width: f64) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (index, &value) in values.iter().enumerate() {
        let (start, end) = (index as f64 * width, (index + 1) as f64 * width);
        match points.last_mut() {
            Some(last) if last.1 == value => last.0 = end,
            _ => points.extend([(start, value), (end, value)]),
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::{super::timeline::tests as timeline, *};

    fn machine() -> Machine {
        Machine {
            date: "2026-11-28 05:00:00 UTC".to_owned(),
            nproc: 2,
            cpu: "test".to_owned(),
            kernel: "6.18".to_owned(),
        }
    }

    #[test]
    fn a_broken_run_says_so_on_the_chart() {
        let mut report = timeline::report(timeline::good());
        let good = timeline_svg(&report, &machine());
        assert!(good.starts_with("<svg") && good.contains("switch green"));
        assert!(!good.contains("CHECK FAILED"));
        report.problems = vec![
            "after `rollback`: 2 requests failed".to_owned(),
            "x".to_owned(),
        ];
        let broken = timeline_svg(&report, &machine());
        assert!(
            broken.contains("CHECK FAILED: after `rollback`: 2 requests failed (and 1 more)"),
            "{broken}"
        );
    }

    #[test]
    fn steps_are_flat_across_each_bucket() {
        assert_eq!(
            steps(&[3.0, 5.0, 5.0, 2.0], 1.0),
            [
                (0.0, 3.0),
                (1.0, 3.0),
                (1.0, 5.0),
                (3.0, 5.0),
                (3.0, 2.0),
                (4.0, 2.0)
            ]
        );
    }
}
