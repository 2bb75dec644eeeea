//! `bluegreen status --watch`: per-color rates computed from the kernel's
//! counters between two refreshes, redrawn in place like `watch`, or
//! printed frame after frame when stdout is not a terminal.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use bluegreen::{
    endpoint::Color,
    host::{ColorStatus, Host, ServiceStatus, ServiceView, StatusReport},
};

/// Counters of one service's color at one refresh: packets, new flows.
type Sample = (u64, u64);

/// One refresh's samples by (interface, service, color).
type Samples = BTreeMap<(String, String, Color), Sample>;

fn samples(report: &StatusReport) -> Samples {
    report
        .interfaces
        .iter()
        .flat_map(|interface| {
            interface.services.iter().flat_map(move |service| {
                Color::BOTH.map(|color| {
                    let status = color_status(service, color);
                    (
                        (interface.interface.clone(), service.name.clone(), color),
                        (status.packets, status.new_flows),
                    )
                })
            })
        })
        .collect()
}

fn color_status(service: &ServiceStatus, color: Color) -> &ColorStatus {
    match color {
        Color::Blue => &service.blue,
        Color::Green => &service.green,
    }
}

/// Per second, from two readings of a counter `elapsed` apart (a counter
/// that went down was reset by a re-added service: no rate yet).
fn rate(before: u64, now: u64, elapsed: Duration) -> Option<f64> {
    now.checked_sub(before)
        .map(|delta| delta as f64 / elapsed.as_secs_f64().max(f64::EPSILON))
}

/// The health check's verdict on one color, when the service has one
/// (`None`: its state could not be read).
fn health(view: Option<&ServiceView>, color: Color) -> String {
    let Some(view) = view else {
        return "?".to_owned();
    };
    match &view.record.spec.health {
        None => "-".to_owned(),
        Some(check) => match check.probe_pool(&view.pool(color).serving()) {
            Ok(()) => "healthy".to_owned(),
            Err(_) => "FAILING".to_owned(),
        },
    }
}

fn frame(host: &Host, report: &StatusReport, previous: Option<(&Samples, Duration)>) -> String {
    let mut text = String::new();
    for interface in &report.interfaces {
        text += &format!(
            "{} (XDP {} mode)\n",
            interface.interface, interface.xdp_mode
        );
        text += "  service          color   packets/s  new flows/s  active flows  health\n";
        // Each service is on the interface the report found it on.
        let host = host.on_interface(&interface.interface);
        for service in &interface.services {
            let view = host.service_view(Some(&service.name)).ok();
            for color in Color::BOTH {
                let status = color_status(service, color);
                let key = (interface.interface.clone(), service.name.clone(), color);
                let rates = previous.and_then(|(samples, elapsed)| {
                    let &(packets, new_flows) = samples.get(&key)?;
                    Some((
                        rate(packets, status.packets, elapsed)?,
                        rate(new_flows, status.new_flows, elapsed)?,
                    ))
                });
                let (packets, new_flows) = match rates {
                    Some((packets, new_flows)) => {
                        (format!("{packets:.1}"), format!("{new_flows:.1}"))
                    }
                    None => ("...".to_owned(), "...".to_owned()),
                };
                let marker = if color == service.active { "*" } else { " " };
                text += &format!(
                    "  {:<16} {marker}{color:<6} {packets:>10} {new_flows:>12} {:>13}  {}\n",
                    service.name,
                    status.active_flows + status.closing_flows,
                    health(view.as_ref(), color),
                );
            }
        }
    }
    text
}

/// Redraws the status every `interval` until Ctrl-C, or `count` times.
pub fn show_live(
    host: &Host,
    service: Option<&str>,
    interval: Duration,
    count: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<(Samples, Instant)> = None;
    let mut drawn = 0;
    while count.is_none_or(|count| drawn < count) {
        let report = host.status(service)?;
        let now = Instant::now();
        let text = frame(
            host,
            &report,
            previous
                .as_ref()
                .map(|(samples, at)| (samples, now.duration_since(*at))),
        );
        let mut stdout = std::io::stdout().lock();
        if terminal {
            // Home and clear: the new frame replaces the old one in place.
            write!(stdout, "\x1b[H\x1b[2J")?;
        } else if drawn > 0 {
            writeln!(stdout)?;
        }
        write!(stdout, "{text}")?;
        stdout.flush()?;
        previous = Some((samples(&report), now));
        drawn += 1;
        if count.is_none_or(|count| drawn < count) {
            std::thread::sleep(interval);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_counter_deltas_and_skip_resets() {
        let second = Duration::from_secs(2);
        assert_eq!(rate(100, 300, second), Some(100.0));
        assert_eq!(rate(300, 300, second), Some(0.0));
        assert_eq!(rate(300, 10, second), None);
    }
}
