//! What the commands print for an operator: one line per change, and a
//! status table.

use bluegreen::{
    clock::{unix_now_ms, utc_time_of_day},
    endpoint::Color,
    health::Health,
    host::{
        BackendAction, BackendOutcome, Checked, LocalReset, StatusReport, SwitchOutcome, UpOutcome,
    },
    lifecycle::Plan,
    load,
    shadow::record::ShadowRecord,
    verify::VerifyReport,
};

pub fn print_up(outcome: &UpOutcome) {
    let state = &outcome.state;
    let verb = if outcome.hot_upgrade {
        "hot-upgraded (programs replaced, maps and flows kept)"
    } else {
        "up"
    };
    println!(
        "bluegreen {verb} on {} (XDP {} mode, flow table {} flows)",
        state.interface, state.xdp_mode, state.flow_capacity
    );
    for record in &state.services {
        let spec = &record.spec;
        println!(
            "  {} {} {} -> {} (blue {}; green {})",
            spec.name, spec.proto, spec.vip, spec.active, spec.blue, spec.green
        );
    }
    for note in &outcome.notes {
        println!("  note: {note}");
    }
}

pub fn print_backend(
    outcome: &BackendOutcome,
    backend: std::net::SocketAddr,
    action: BackendAction,
) {
    let BackendOutcome {
        service,
        color,
        pool,
        changed,
        rebound,
    } = outcome;
    let what = match action {
        _ if !changed => "already so, nothing to do".to_owned(),
        BackendAction::Add { .. } => "added".to_owned(),
        BackendAction::Remove => {
            format!("removed; {rebound} open connection(s) moved to the backends left")
        }
        BackendAction::Drain => "drained: no new flows, open ones finish there".to_owned(),
        BackendAction::Undrain => "takes new flows again".to_owned(),
    };
    println!("{service}: {color} backend {backend} {what}");
    println!("  {color} pool: {pool}");
}

pub fn print_switch(outcome: &SwitchOutcome) {
    let SwitchOutcome {
        service,
        from,
        to,
        forced,
        changed,
        elapsed,
        weight_before,
        weight,
        active_changed,
        checked,
        local_reset,
        gates,
        ..
    } = outcome;
    if let Some(report) = gates {
        for gate in &report.gates {
            println!(
                "{to} passed its {} gate in {:.1?}: {}",
                gate.gate, gate.duration, gate.detail
            );
        }
    }
    match checked {
        Some(Checked::HealthCheck) => println!("{to} passed its health check"),
        Some(Checked::Connect) => println!("{to} accepts connections (no health check configured)"),
        None => {}
    }
    if !changed {
        if *weight > 0 {
            println!("{service}: {to} already gets {weight}% of new flows, nothing to do");
        } else {
            println!("{service}: already {to}, nothing to do");
        }
    } else if *weight > 0 {
        println!(
            "{service}: {to} gets {weight}% of new flows ({from} keeps {}%) in {elapsed:.0?}; established flows keep their color",
            100 - weight
        );
    } else if !active_changed && *weight_before > 0 {
        println!(
            "{service}: {from} {weight_before}% -> 0%, every new flow to {to} in {elapsed:.0?}"
        );
    } else if *forced {
        println!(
            "{service}: {from} -> {to} in {elapsed:.0?} (forced: every flow follows {to} now)"
        );
        match local_reset {
            LocalReset::Reset(0) | LocalReset::NotApplicable => {}
            LocalReset::Reset(count) => println!(
                "  {count} local connections to {} reset: their applications reconnect to {to}",
                to.other()
            ),
            LocalReset::Elsewhere => println!(
                "  local connections were not reset: they live in the network namespace `up` ran in; run the switch there"
            ),
            LocalReset::Failed(reason) => println!(
                "  local connections to {} were not reset ({reason}): they stay there until they close",
                to.other()
            ),
        }
    } else {
        println!(
            "{service}: {from} -> {to} in {elapsed:.0?} (graceful: established flows finish on {from})"
        );
    }
}

/// `verify`: each gate run, its verdict and detail; a failed one with
/// the last lines of its output and where the rest is.
pub fn print_verify(report: &VerifyReport) {
    let VerifyReport {
        service,
        color,
        gates,
    } = report;
    if gates.is_empty() {
        println!(
            "{service}: no release gate configured ([service.verify], [service.warmup], [[service.analysis]]): nothing to run against {color}"
        );
        return;
    }
    for gate in gates {
        let verdict = if gate.passed { "passed" } else { "FAILED" };
        println!(
            "{service}: {color} {verdict} its {} gate in {:.1?}: {}",
            gate.gate, gate.duration, gate.detail
        );
        if let Some(log) = &gate.log {
            println!("  output: {}", log.display());
        }
        for line in &gate.tail {
            println!("  | {line}");
        }
    }
    if report.passed() {
        println!("{service}: {color} passed every release gate");
    } else {
        println!("{service}: {color} would be refused by a switch");
    }
}

pub fn print_status(report: &StatusReport) {
    for interface in &report.interfaces {
        println!(
            "{}: XDP {} mode, flow table {} flows",
            interface.interface, interface.xdp_mode, interface.flow_capacity
        );
        if !interface.interface_present {
            println!(
                "  not attached: interface {0} does not exist (nothing is steered; once it is back, `bluegreen up --iface {0} ...` attaches again)",
                interface.interface
            );
        } else if !interface.attached {
            println!(
                "  not attached: run `bluegreen up --iface {} ...` to attach again",
                interface.interface
            );
        }
        if let Some(fleet) = &interface.fleet {
            let state = if fleet.connected {
                "connected".to_owned()
            } else {
                format!(
                    "NOT connected to etcd ({}); traffic keeps its last applied state",
                    fleet.last_error.as_deref().unwrap_or("not yet")
                )
            };
            println!(
                "  fleet: host {} of {} at {}: {state}",
                fleet.host,
                fleet.prefix,
                fleet.endpoints.join(",")
            );
        }
        for service in &interface.services {
            println!(
                "  {} {} {}: active {} (previous {}, generation {})",
                service.name,
                service.proto,
                service.vip,
                service.active,
                service.previous,
                service.generation
            );
            if service.weight > 0 {
                println!(
                    "    weighted: {} gets {}% of new flows",
                    service.active.other(),
                    service.weight
                );
            }
            if !service.preview.is_empty() {
                println!(
                    "    preview clients ({}) reach {}",
                    service.preview.join(", "),
                    service.active.other()
                );
            }
            for (color, status) in [(Color::Blue, &service.blue), (Color::Green, &service.green)] {
                let marker = if color == service.active { "*" } else { " " };
                let pool = status.backends.len() > 1
                    || status
                        .backends
                        .iter()
                        .any(|backend| backend.state != "active");
                let backend = if pool {
                    format!("pool of {}", status.backends.len())
                } else {
                    status.backend.clone()
                };
                let local = status
                    .local_connections
                    .map(|count| format!("  local connections {count:>5}"))
                    .unwrap_or_default();
                println!(
                    "   {marker}{color:<5} {backend:<24} packets {:>10}  bytes {:>12}  new flows {:>8}  active flows {:>6} (+{} closing){local}",
                    status.packets,
                    status.bytes,
                    status.new_flows,
                    status.active_flows,
                    status.closing_flows
                );
                for backend in status.backends.iter().filter(|_| pool) {
                    let load = match (backend.load_weight, backend.load_unreadable) {
                        (_, true) => " (load unreadable: weight kept)".to_owned(),
                        (Some(tenths), false) => {
                            format!(
                                " (under load {})",
                                f64::from(tenths) / f64::from(load::SCALE)
                            )
                        }
                        (None, false) => String::new(),
                    };
                    println!(
                        "          {:<24} packets {:>10}  bytes {:>12}  new flows {:>8}  active flows {:>6}  weight {}{load}  {}{}",
                        backend.addr,
                        backend.packets,
                        backend.bytes,
                        backend.new_flows,
                        backend.active_flows,
                        backend.weight,
                        backend.state,
                        if backend.health == Health::Unhealthy {
                            "  unhealthy: no new flows"
                        } else {
                            ""
                        }
                    );
                }
            }
            for color in Color::BOTH {
                if let Some(lifecycle) = &service.color(color).lifecycle {
                    let since = match lifecycle.since_unix_ms {
                        0 => String::new(),
                        at => format!(" since {}", utc_time_of_day(at)),
                    };
                    println!(
                        "    {color}: {}{since}{}{}",
                        lifecycle.state,
                        if lifecycle.held { ", held" } else { "" },
                        lifecycle
                            .last_error
                            .as_ref()
                            .map(|error| format!("; last error: {error}"))
                            .unwrap_or_default()
                    );
                }
            }
            match &service.next_action {
                Some(Plan::StopAt { color, at_unix_ms }) => println!(
                    "    next: stop {color} once drained, from {}",
                    utc_time_of_day(*at_unix_ms)
                ),
                Some(Plan::StopAfter { color, reason }) => {
                    println!("    next: stop {color} later: {reason}")
                }
                Some(Plan::Draining { color, flows }) => {
                    println!("    next: stop {color} once its {flows} live flows have ended")
                }
                Some(Plan::Stop { color } | Plan::ResumeStop { color }) => {
                    println!("    next: stop {color} (due now: the daemon does it)")
                }
                Some(Plan::AbandonStart { color }) => {
                    println!("    next: {color}'s interrupted start is counted stopped")
                }
                Some(Plan::None) | None => {}
            }
            for analysis in &service.analyses {
                let last = &analysis.last;
                let age = unix_now_ms().saturating_sub(last.at_unix_ms) / 1000;
                println!(
                    "    analysis {}: {} {}: {} (failures {}/{}, measured {age} s ago)",
                    last.analysis,
                    last.color,
                    last.verdict,
                    last.detail,
                    analysis.failures,
                    analysis.failure_limit
                );
            }
        }
        let passed: Vec<String> = interface
            .passed
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        println!("  passed untouched: {}", passed.join(", "));
    }
}

pub fn print_preview(report: &StatusReport) {
    for service in report
        .interfaces
        .iter()
        .flat_map(|interface| &interface.services)
    {
        let idle = service.active.other();
        if service.preview.is_empty() {
            println!("{}: no preview prefixes", service.name);
        } else {
            println!("{} (preview clients reach {idle}):", service.name);
            for prefix in &service.preview {
                println!("  {prefix}");
            }
        }
    }
}

/// A shadowing run: who runs it and until when, the two colors side by
/// side, then what the capture and the replay dropped and why.
pub fn print_shadow(record: &ShadowRecord) {
    let ShadowRecord {
        service,
        live,
        idle,
        settings,
        owner,
        started_unix_ms,
        report,
        ..
    } = record;
    let who = if owner.daemon {
        format!("the daemon (pid {})", owner.pid)
    } else {
        format!("`shadow run` (pid {})", owner.pid)
    };
    let state = match (&record.stopped, record.owner.is_alive()) {
        (Some(stopped), _) => format!(
            "stopped at {}: {}",
            utc_time_of_day(stopped.at_unix_ms),
            stopped.reason
        ),
        (None, true) => match record.until_unix_ms {
            Some(until) => format!("running until {}", utc_time_of_day(until)),
            None => "running until stopped".to_owned(),
        },
        (None, false) => "its owner is gone: `bluegreen shadow stop` turns capture off".to_owned(),
    };
    println!(
        "{service}: {} of new flows on {live} (live) replayed to {idle}, by {who} since {}; {state}",
        settings.sample,
        utc_time_of_day(*started_unix_ms),
    );
    let summary = &report.comparison;
    println!(
        "  {:<12} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7}  {:>24}  {:>24} {:>10}",
        "",
        "requests",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "failed",
        "errors",
        "ttfb p50/p95/p99 ms",
        "total p50/p95/p99 ms",
        "bytes"
    );
    for (label, color) in [
        (format!("{live} (live)"), &summary.live),
        (format!("{idle} (idle)"), &summary.shadow),
    ] {
        let ms = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("{ms:.1}"));
        let quantiles = |p50, p95, p99| format!("{} / {} / {}", ms(p50), ms(p95), ms(p99));
        println!(
            "  {label:<12} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7}  {:>24}  {:>24} {:>10}",
            color.requests,
            color.status_2xx,
            color.status_3xx,
            color.status_4xx,
            color.status_5xx,
            color.failed,
            color
                .error_ratio
                .map_or("-".to_owned(), |ratio| format!("{:.1}%", ratio * 100.0)),
            quantiles(color.ttfb_p50_ms, color.ttfb_p95_ms, color.ttfb_p99_ms),
            quantiles(color.total_p50_ms, color.total_p95_ms, color.total_p99_ms),
            color.response_bytes,
        );
    }
    println!(
        "  paired requests {}, status class differs in {}",
        summary.paired, summary.mismatched_status
    );
    let capture = |name: &str| report.capture.get(name).copied().unwrap_or(0);
    println!(
        "  capture: {} flows sampled, {} client records ({} bytes), {} live replies; lost: {} ring full, {} truncated, {} malformed, {} flow table full",
        capture("sampled_flows"),
        capture("client_records"),
        capture("client_bytes"),
        capture("live_records"),
        capture("ring_full"),
        capture("truncated"),
        capture("malformed"),
        capture("table_full"),
    );
    let engine = &report.engine;
    let reassembly = &report.reassembly;
    println!(
        "  replay: {} flows, {} requests ({} not on the allow-list), {} in flight, {} bytes held; not replayed: {} over max-inflight, {} without an idle backend",
        engine.flows_replayed,
        report.replay.requests,
        engine.requests_not_allowed,
        report.inflight,
        report.buffered_bytes,
        engine.flows_over_inflight,
        engine.flows_without_backend,
    );
    println!(
        "  abandoned flows: {} gap, {} truncated, {} memory, {} over the flow limit, {} backlog, {} not HTTP, {} idle; {} connect failures, {} timeouts",
        reassembly.abandoned_gap,
        reassembly.abandoned_truncated,
        reassembly.abandoned_memory + engine.flows_over_memory,
        reassembly.abandoned_flows,
        engine.flows_backlogged,
        engine.flows_not_http,
        engine.flows_idle,
        report.replay.connect_failures,
        report.replay.timeouts,
    );
    if report.replay.datagrams > 0 {
        println!(
            "  udp: {} datagrams replayed, {} answers from the idle color (counted, not compared)",
            report.replay.datagrams, report.replay.datagram_answers
        );
    }
}
