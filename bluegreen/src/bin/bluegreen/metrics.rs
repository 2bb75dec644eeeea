//! Prometheus metrics for `bluegreen daemon --metrics ADDR`, read from the
//! kernel's maps at every scrape.

use std::{net::SocketAddr, sync::atomic::AtomicU64};

use anyhow::Context as _;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use bluegreen::{
    endpoint::Color,
    health::Health,
    host::{Host, StatusReport},
    shadow::record::ShadowRecord,
    verify::Verdict,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::observations::{Observations, Shared};

type Labels = Vec<(&'static str, String)>;

pub async fn serve(host: Host, observations: Shared, address: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on {address}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (host, observations) = (host.clone(), observations.clone());
            async move {
                let body = tokio::task::spawn_blocking(move || {
                    let status = host.status(None).map_err(|error| error.to_string())?;
                    // A damaged record must not take the other metrics down.
                    let shadows = host.shadow_records().unwrap_or_else(|error| {
                        log::warn!("metrics: shadowing records: {error}");
                        Vec::new()
                    });
                    let observations = observations.lock().expect("observations lock");
                    Ok::<_, String>(render(&status, &observations, &shadows))
                })
                .await
                .unwrap_or_else(|error| Err(error.to_string()));
                match body {
                    Ok(body) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(error) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot read bluegreen's maps: {error}\n"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            log::error!("metrics server stopped: {error}");
        }
    });
    Ok(())
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn float_gauge_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

fn health_value(health: Health) -> i64 {
    match health {
        Health::Healthy => 1,
        Health::Unhealthy => 0,
        Health::Unknown => -1,
    }
}

/// Builds the exposition from a status report: the kernel's counters are
/// the source of truth, so each scrape starts from a fresh registry.
pub fn render(
    status: &StatusReport,
    observations: &Observations,
    shadows: &[ShadowRecord],
) -> String {
    let mut registry = Registry::default();
    let packets = counter_family(
        &mut registry,
        "bluegreen_packets",
        "Packets steered to a color",
    );
    let bytes = counter_family(&mut registry, "bluegreen_bytes", "Bytes steered to a color");
    let new_flows = counter_family(
        &mut registry,
        "bluegreen_new_flows",
        "Flows started on a color",
    );
    let active_flows = gauge_family(
        &mut registry,
        "bluegreen_active_flows",
        "Live flows on a color",
    );
    let closing_flows = gauge_family(
        &mut registry,
        "bluegreen_closing_flows",
        "Flows on a color that saw FIN or RST and are not expired yet",
    );
    let local_connections = gauge_family(
        &mut registry,
        "bluegreen_local_connections",
        "Connected sockets of host-local clients on a color (absent when local clients are not steered)",
    );
    let active_color = gauge_family(&mut registry, "bluegreen_active", "1 for the active color");
    let share = gauge_family(
        &mut registry,
        "bluegreen_new_flow_share_percent",
        "Share of new flows a color receives (weighted shifts), preview clients aside",
    );
    let healthy = gauge_family(
        &mut registry,
        "bluegreen_backend_healthy",
        "Health check state: 1 healthy, 0 unhealthy, -1 not known yet",
    );
    let backend_up = gauge_family(
        &mut registry,
        "bluegreen_backend_up",
        "One backend's health check state: 1 healthy, 0 unhealthy (no new flows), -1 not known yet",
    );
    let backend_flows = gauge_family(
        &mut registry,
        "bluegreen_backend_active_flows",
        "Live flows kept on one backend of a color's pool",
    );
    let backend_packets = counter_family(
        &mut registry,
        "bluegreen_backend_packets",
        "Packets steered to one backend of a color's pool, since it joined the pool",
    );
    let backend_bytes = counter_family(
        &mut registry,
        "bluegreen_backend_bytes",
        "Bytes steered to one backend of a color's pool, since it joined the pool",
    );
    let backend_new_flows = counter_family(
        &mut registry,
        "bluegreen_backend_new_flows",
        "Flows started on one backend of a color's pool, since it joined the pool",
    );
    let queue_depth = float_gauge_family(
        &mut registry,
        "bluegreen_backend_queue_depth",
        "The queue depth a backend last reported ([service.load] metric)",
    );
    let effective_weight = gauge_family(
        &mut registry,
        "bluegreen_backend_effective_weight",
        "The weight the daemon gives a backend under load, in tenths of its operator weight (0: drained or unhealthy)",
    );
    let scrape_errors = counter_family(
        &mut registry,
        "bluegreen_backend_load_scrape_errors",
        "Failed scrapes of a backend's load; its weight was kept",
    );
    let switches = counter_family(
        &mut registry,
        "bluegreen_switches",
        "Changes of the active color, by cause: operator, shift, auto_rollback, fleet, analysis",
    );
    let rollbacks = counter_family(
        &mut registry,
        "bluegreen_rollbacks",
        "Rollbacks, by cause: operator, shift (a failed check or analysis), unhealthy (the daemon's automatic rollback on health), fleet, analysis (the daemon's automatic rollback on a failed metric analysis)",
    );
    let last_switch = float_gauge_family(
        &mut registry,
        "bluegreen_last_switch_timestamp_seconds",
        "When the active color last changed (Unix time; 0 until its first change)",
    );
    let passed = counter_family(
        &mut registry,
        "bluegreen_passed_packets",
        "Packets passed untouched, by reason",
    );

    for interface in &status.interfaces {
        for service in &interface.services {
            for (color, counts) in [(Color::Blue, &service.blue), (Color::Green, &service.green)] {
                let labels = vec![
                    ("service", service.name.clone()),
                    ("color", color.to_string()),
                ];
                packets.get_or_create(&labels).inc_by(counts.packets);
                bytes.get_or_create(&labels).inc_by(counts.bytes);
                new_flows.get_or_create(&labels).inc_by(counts.new_flows);
                active_flows
                    .get_or_create(&labels)
                    .set(counts.active_flows as i64);
                closing_flows
                    .get_or_create(&labels)
                    .set(counts.closing_flows as i64);
                if let Some(local) = counts.local_connections {
                    local_connections.get_or_create(&labels).set(local as i64);
                }
                active_color
                    .get_or_create(&labels)
                    .set(i64::from(service.active == color));
                let weight = i64::from(service.weight);
                share
                    .get_or_create(&labels)
                    .set(if service.active == color {
                        100 - weight
                    } else {
                        weight
                    });
                if let Some(health) = observations.health.get(&(service.name.clone(), color)) {
                    healthy.get_or_create(&labels).set(health_value(*health));
                }
                for backend in &counts.backends {
                    let mut labels = labels.clone();
                    labels.push(("backend", backend.addr.clone()));
                    backend_flows
                        .get_or_create(&labels)
                        .set(backend.active_flows as i64);
                    backend_packets
                        .get_or_create(&labels)
                        .inc_by(backend.packets);
                    backend_bytes.get_or_create(&labels).inc_by(backend.bytes);
                    backend_new_flows
                        .get_or_create(&labels)
                        .inc_by(backend.new_flows);
                    let seen = backend.addr.parse().ok().and_then(|addr| {
                        observations
                            .backends
                            .get(&(service.name.clone(), color, addr))
                    });
                    if let Some(health) = seen {
                        backend_up.get_or_create(&labels).set(health_value(*health));
                    }
                    let load = backend.addr.parse().ok().and_then(|addr| {
                        observations.load.get(&(service.name.clone(), color, addr))
                    });
                    if let Some(load) = load {
                        if let Some(depth) = load.queue_depth {
                            queue_depth.get_or_create(&labels).set(depth);
                        }
                        effective_weight
                            .get_or_create(&labels)
                            .set(i64::from(load.effective_weight));
                        scrape_errors
                            .get_or_create(&labels)
                            .inc_by(load.scrape_errors);
                    }
                }
            }
            // Every cause's series exists from the start, at 0: increase()
            // then sees the first event, and panels show 0, not "no data".
            for (family, counts) in [
                (&switches, &service.switches),
                (&rollbacks, &service.rollbacks),
            ] {
                for (cause, count) in counts {
                    family
                        .get_or_create(&vec![
                            ("service", service.name.clone()),
                            ("cause", (*cause).to_owned()),
                        ])
                        .inc_by(*count);
                }
            }
            last_switch
                .get_or_create(&vec![("service", service.name.clone())])
                .set(service.switched_at_unix_ms.unwrap_or(0) as f64 / 1000.0);
        }
        for (reason, count) in &interface.passed {
            passed
                .get_or_create(&vec![
                    ("interface", interface.interface.clone()),
                    ("reason", reason.clone()),
                ])
                .inc_by(*count);
        }
    }
    if let Some(connected) = observations.fleet_connected {
        let gauge = Gauge::<i64>::default();
        registry.register(
            "bluegreen_fleet_connected",
            "1 while the daemon follows the fleet through etcd, 0 while etcd is unreachable (traffic keeps its last applied state)",
            gauge.clone(),
        );
        gauge.set(i64::from(connected));
    }
    if !observations.fleet_unreadable.is_empty() {
        let unreadable = gauge_family(
            &mut registry,
            "bluegreen_fleet_desired_unreadable",
            "1 while the service's desired state in etcd cannot be read by this host, which refuses it and keeps the last applied state (see LAST ERROR in `bluegreen fleet status`)",
        );
        for (service, refused) in &observations.fleet_unreadable {
            unreadable
                .get_or_create(&vec![("service", service.clone())])
                .set(i64::from(*refused));
        }
    }
    register_lifecycles(&mut registry, status);
    if !observations.analyses.is_empty() {
        register_analyses(&mut registry, observations);
    }
    if !shadows.is_empty() {
        register_shadows(&mut registry, shadows);
    }
    let mut body = String::new();
    encode(&mut body, &registry).expect("writing to a String cannot fail");
    body
}

/// Each color's lifecycle, for services with `[service.lifecycle]`: its
/// state (every state's series, 1 for the current one, so a change shows
/// as one going to 0), and its starts, stops and failures.
fn register_lifecycles(registry: &mut Registry, status: &StatusReport) {
    let colors: Vec<_> = status
        .interfaces
        .iter()
        .flat_map(|interface| &interface.services)
        .flat_map(|service| {
            Color::BOTH.into_iter().filter_map(move |color| {
                service
                    .color(color)
                    .lifecycle
                    .as_ref()
                    .map(|lifecycle| (&service.name, color, lifecycle))
            })
        })
        .collect();
    if colors.is_empty() {
        return;
    }
    let state = gauge_family(
        registry,
        "bluegreen_lifecycle_state",
        "1 for the lifecycle state a color is in ([service.lifecycle]): running, starting, draining, stopping, stopped",
    );
    let actions = counter_family(
        registry,
        "bluegreen_lifecycle_actions",
        "Starts and stops of a color by bluegreen, and those that failed (action: start, stop, failed)",
    );
    for (service, color, lifecycle) in colors {
        for name in ["running", "starting", "draining", "stopping", "stopped"] {
            state
                .get_or_create(&vec![
                    ("service", service.clone()),
                    ("color", color.to_string()),
                    ("state", name.to_owned()),
                ])
                .set(i64::from(lifecycle.state == name));
        }
        for (action, count) in [
            ("start", lifecycle.starts),
            ("stop", lifecycle.stops),
            ("failed", lifecycle.failures),
        ] {
            actions
                .get_or_create(&vec![
                    ("service", service.clone()),
                    ("color", color.to_string()),
                    ("action", action.to_owned()),
                ])
                .inc_by(count);
        }
    }
}

/// Each analysis's last measurement: the figures of both colors it
/// compared, its threshold, its verdict and its failures since the last
/// switch.
fn register_analyses(registry: &mut Registry, observations: &Observations) {
    let value = float_gauge_family(
        registry,
        "bluegreen_analysis_value",
        "The figure a metric analysis last measured for a color (the active one, and the previous one it is compared with)",
    );
    let threshold = float_gauge_family(
        registry,
        "bluegreen_analysis_threshold",
        "A bound of a metric analysis: min, max, or max_ratio (of the active color's figure over the previous one's)",
    );
    let verdict = gauge_family(
        registry,
        "bluegreen_analysis_verdict",
        "A metric analysis's last verdict on the active color: 1 pass, 0 fail, -1 no data",
    );
    let failures = gauge_family(
        registry,
        "bluegreen_analysis_failures",
        "Failed measurements of a metric analysis since the last switch (the daemon rolls back at its failure_limit with auto_rollback.analysis)",
    );
    let limit = gauge_family(
        registry,
        "bluegreen_analysis_failure_limit",
        "The failed measurements at which a metric analysis fails",
    );
    for (service, statuses) in &observations.analyses {
        for status in statuses {
            let last = &status.last;
            let labels = |extra: (&'static str, String)| {
                vec![
                    ("service", service.clone()),
                    ("analysis", last.analysis.clone()),
                    extra,
                ]
            };
            let figures = [
                (last.color, last.value),
                (last.baseline, last.baseline_value),
            ];
            for (color, figure) in figures {
                if let Some(figure) = figure.filter(|figure| figure.is_finite()) {
                    value
                        .get_or_create(&labels(("color", color.to_string())))
                        .set(figure);
                }
            }
            let bounds = [
                ("min", last.threshold.min),
                ("max", last.threshold.max),
                ("max_ratio", last.threshold.max_ratio),
            ];
            for (bound, set) in bounds {
                if let Some(set) = set {
                    threshold
                        .get_or_create(&labels(("bound", bound.to_owned())))
                        .set(set);
                }
            }
            verdict
                .get_or_create(&labels(("color", last.color.to_string())))
                .set(match last.verdict {
                    Verdict::Pass => 1,
                    Verdict::Fail => 0,
                    Verdict::NoData => -1,
                });
            let plain = vec![
                ("service", service.clone()),
                ("analysis", last.analysis.clone()),
            ];
            failures
                .get_or_create(&plain)
                .set(i64::from(status.failures));
            limit
                .get_or_create(&plain)
                .set(i64::from(status.failure_limit));
        }
    }
}

/// Each service's last shadowing run: whether it runs, and the two colors
/// side by side (the live one's answers, and the idle one's to the same
/// requests), with what was lost and why. Gauges: a new run starts from 0.
fn register_shadows(registry: &mut Registry, shadows: &[ShadowRecord]) {
    let running = gauge_family(
        registry,
        "bluegreen_shadow_running",
        "1 while a sample of the service's new flows is replayed to its idle color",
    );
    let requests = gauge_family(
        registry,
        "bluegreen_shadow_requests",
        "Requests of the current (or last) shadowing run, per color: role live (as clients were answered) or idle (replayed)",
    );
    let statuses = gauge_family(
        registry,
        "bluegreen_shadow_responses",
        "Answers of the shadowing run by status class (1xx..5xx, failed: none or cut short), per color and role",
    );
    let ttfb = float_gauge_family(
        registry,
        "bluegreen_shadow_ttfb_seconds",
        "Time to first byte of the answers of the shadowing run, by quantile, per color and role",
    );
    let total = float_gauge_family(
        registry,
        "bluegreen_shadow_total_seconds",
        "Total time of the answers of the shadowing run, by quantile, per color and role",
    );
    let errors = float_gauge_family(
        registry,
        "bluegreen_shadow_error_ratio",
        "Share of the shadowing run's requests answered 5xx or not at all, per color and role",
    );
    let mismatched = gauge_family(
        registry,
        "bluegreen_shadow_mismatched_statuses",
        "Requests of the shadowing run whose two answers differ in status class",
    );
    let lost = gauge_family(
        registry,
        "bluegreen_shadow_lost",
        "Sampled flows or records of the shadowing run not replayed, by reason",
    );
    for record in shadows {
        let service = || ("service", record.service.clone());
        running
            .get_or_create(&vec![service()])
            .set(i64::from(record.is_running()));
        let summary = &record.report.comparison;
        for (color, role, figures) in [
            (record.live, "live", &summary.live),
            (record.idle, "idle", &summary.shadow),
        ] {
            let labels = |extra: Option<(&'static str, String)>| {
                let mut labels = vec![
                    service(),
                    ("color", color.to_string()),
                    ("role", role.to_owned()),
                ];
                labels.extend(extra);
                labels
            };
            requests
                .get_or_create(&labels(None))
                .set(figures.requests as i64);
            for (class, count) in [
                ("1xx", figures.status_1xx),
                ("2xx", figures.status_2xx),
                ("3xx", figures.status_3xx),
                ("4xx", figures.status_4xx),
                ("5xx", figures.status_5xx),
                ("failed", figures.failed),
            ] {
                statuses
                    .get_or_create(&labels(Some(("class", class.to_owned()))))
                    .set(count as i64);
            }
            let quantiles = [
                ("0.5", figures.ttfb_p50_ms, figures.total_p50_ms),
                ("0.95", figures.ttfb_p95_ms, figures.total_p95_ms),
                ("0.99", figures.ttfb_p99_ms, figures.total_p99_ms),
            ];
            for (quantile, first_byte, whole) in quantiles {
                let labels = labels(Some(("quantile", quantile.to_owned())));
                if let Some(ms) = first_byte {
                    ttfb.get_or_create(&labels).set(ms / 1000.0);
                }
                if let Some(ms) = whole {
                    total.get_or_create(&labels).set(ms / 1000.0);
                }
            }
            if let Some(ratio) = figures.error_ratio {
                errors.get_or_create(&labels(None)).set(ratio);
            }
        }
        mismatched
            .get_or_create(&vec![service()])
            .set(summary.mismatched_status as i64);
        let report = &record.report;
        let capture = |name: &str| report.capture.get(name).copied().unwrap_or(0);
        for (reason, count) in [
            ("ring_full", capture("ring_full")),
            ("truncated", capture("truncated")),
            ("malformed", capture("malformed")),
            ("table_full", capture("table_full")),
            ("gap", report.reassembly.abandoned_gap),
            ("truncated_flow", report.reassembly.abandoned_truncated),
            (
                "memory",
                report.reassembly.abandoned_memory + report.engine.flows_over_memory,
            ),
            ("flow_limit", report.reassembly.abandoned_flows),
            ("backlog", report.engine.flows_backlogged),
            ("over_inflight", report.engine.flows_over_inflight),
            ("no_backend", report.engine.flows_without_backend),
            ("not_http", report.engine.flows_not_http),
            ("idle", report.engine.flows_idle),
            ("not_allowed", report.engine.requests_not_allowed),
        ] {
            lost.get_or_create(&vec![service(), ("reason", reason.to_owned())])
                .set(count as i64);
        }
    }
}
