//! `bluegreen fleet`: switch or roll back a service on every live host
//! through etcd, all or nothing, and show where each host stands.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use bluegreen::{
    clock::unix_now_ms,
    config::{DEFAULT_FLEET_PREFIX, FleetConfig, FleetTls, validate_fleet_prefix},
    endpoint::Color,
    fleet::{
        self, DesiredState, FLEET_SCHEMA_VERSION, HostRecord, Ignored, Progress,
        change::{FleetChange, Next, Outcome, Waited},
        client::{Change, FleetClient},
        describe,
    },
    health::Health,
    lifecycle::Phase,
};
use serde_json::json;

use super::args::{FleetAction, FleetChangeArgs, FleetConnection, FleetStatusArgs};

/// The change marker's lease: if the command dies, another operator can go
/// ahead this long after.
const CHANGE_TTL_SECS: i64 = 10;

pub fn execute(action: FleetAction) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match action {
            FleetAction::Switch(args) => {
                let (color, weight) = (args.color, args.weight.unwrap_or(100));
                let force = args.change.force;
                change(args.change, "switch", move |current, by| {
                    if weight < 100 && current.target == color && current.target_share == 100 {
                        bail!(
                            "{color} already serves every new flow: a weight is the share of the color that is not ({})",
                            color.other()
                        );
                    }
                    Ok(DesiredState::next(
                        current,
                        color,
                        weight,
                        force,
                        by,
                        unix_now_ms(),
                    ))
                })
                .await
            }
            FleetAction::Rollback(args) => {
                let force = args.change.force;
                change(args.change, "rollback", move |current, by| {
                    current
                        .rollback(force, by, unix_now_ms())
                        .ok_or_else(|| anyhow!("{current} has never been switched by the fleet: nothing to roll back to"))
                })
                .await
            }
            FleetAction::Status(args) => status(args).await,
        }
    })
}

/// The endpoints, prefix and TLS files from the flags, or from the config's
/// `[fleet]` for what the flags leave out (an operator's machine needs no
/// config file when it gives --etcd).
async fn connect(connection: &FleetConnection) -> anyhow::Result<FleetClient> {
    let (endpoints, prefix, mut tls) = if connection.etcd.is_empty() {
        let path = &connection.config;
        let fleet = FleetConfig::load(path).with_context(|| {
            format!(
                "no --etcd given, so the endpoints come from {}",
                path.display()
            )
        })?;
        let Some(fleet) = fleet else {
            bail!(
                "no --etcd given and {} has no [fleet] section: pass --etcd URL[,URL]",
                path.display()
            );
        };
        let prefix = connection.prefix.clone().unwrap_or(fleet.prefix);
        (fleet.endpoints, prefix, fleet.tls)
    } else {
        if let Some(url) = connection
            .etcd
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            bail!("--etcd {url:?} is not an http:// or https:// URL");
        }
        let prefix = connection
            .prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_FLEET_PREFIX.to_owned());
        (connection.etcd.clone(), prefix, FleetTls::default())
    };
    if connection.cacert.is_some() {
        tls.ca = connection.cacert.clone();
    }
    if connection.cert.is_some() {
        (tls.cert, tls.key) = (connection.cert.clone(), connection.key.clone());
    }
    validate_fleet_prefix(&prefix).map_err(|error| anyhow!("the fleet prefix {error}"))?;
    Ok(FleetClient::connect(&endpoints, &prefix, &tls).await?)
}

/// The service a change is about: the one named, or the only one the live
/// hosts serve.
fn pick_service(wanted: Option<&str>, hosts: &[HostRecord]) -> anyhow::Result<String> {
    let served = fleet::served_services(hosts);
    match wanted {
        Some(name) => Ok(name.to_owned()),
        None if served.len() == 1 => Ok(served.into_iter().next().expect("one")),
        None if served.is_empty() => bail!(
            "no live host in the fleet: is a daemon with [fleet] running, and is the prefix right?"
        ),
        None => bail!(
            "the hosts serve several services ({}): pick one with --service NAME",
            served.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Who runs this command, for the change marker and the desired state.
fn operator() -> String {
    // SAFETY: getuid has no preconditions.
    let user =
        std::env::var("USER").unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{host} (pid {})", std::process::id())
}

/// Writes the desired state `next` makes of the current one, waits for the
/// live hosts, and undoes it on failure unless `--best-effort`.
async fn change(
    args: FleetChangeArgs,
    verb: &str,
    next: impl FnOnce(&DesiredState, String) -> anyhow::Result<DesiredState>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut client = connect(&args.connection).await?;
    let hosts = client.hosts().await?;
    for ignored in &hosts.ignored {
        eprintln!("warning: {}: {}", ignored.key, ignored.reason);
    }
    let hosts = hosts.live;
    let service = pick_service(args.service.as_deref(), &hosts)?;
    let (current, read_revision, unreadable) = match client.desired(&service).await? {
        Some((Ok(current), revision)) => (Some(current), revision, false),
        // The hosts refuse it and keep what they had: this change replaces
        // it as if it were the first.
        Some((Err(reason), revision)) => {
            eprintln!(
                "warning: {service}: the desired state in {} cannot be read ({reason}): replacing it",
                client.keys.service(&service)
            );
            (None, revision, true)
        }
        None => (None, 0, false),
    };
    let mut before = match current {
        Some(current) => current,
        // The first fleet change of the service: what every host serves
        // now is what a failure restores.
        None => match fleet::common_state(&service, &hosts) {
            Ok(common) => common,
            // Nothing is restored then; blue only stands in as the color a
            // later `fleet rollback` returns to.
            Err(reason) if args.best_effort => {
                log::warn!("{service}: the hosts disagree ({reason}); nothing to restore");
                DesiredState::initial(Color::Blue)
            }
            Err(reason) => {
                let known = if unreadable {
                    "has a desired state this bluegreen cannot read"
                } else {
                    "has no desired state in the fleet yet"
                };
                bail!(
                    "{service} {known} and the live hosts do not agree on one ({reason}): an all-or-nothing change needs a state to restore; pass --best-effort to set one anyway"
                )
            }
        },
    };
    // A state made up from the hosts starts its force epochs where they
    // are: from 0, a `--force` would not reach a host that applied one.
    before.force_epoch = before
        .force_epoch
        .max(fleet::applied_force_epoch(&service, &hosts));
    let by = operator();
    let desired = next(&before, by.clone())?;
    let mut change = client
        .begin_change(&service, read_revision, &desired, &by, CHANGE_TTL_SECS)
        .await?;
    let waiting = fleet::progress(&service, -1, &hosts);
    println!(
        "{service}: fleet {verb} to {desired} written (revision {}); waiting for the live hosts ({})",
        change.revision,
        waiting.pending.len()
    );
    let outcome = drive(&mut client, &mut change, &before, &desired, &args, started).await;
    if let Err(error) = client.end_change(change).await {
        log::warn!("{error}; the change marker expires with its lease within {CHANGE_TTL_SECS} s");
    }
    outcome
}

/// The rest of [`change`], while the change marker is held: waits for the
/// hosts and does what [`FleetChange`] decides of it.
async fn drive(
    client: &mut FleetClient,
    change: &mut Change,
    before: &DesiredState,
    desired: &DesiredState,
    args: &FleetChangeArgs,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let fleet_change = FleetChange {
        service: change.service.clone(),
        before: before.clone(),
        desired: desired.clone(),
        best_effort: args.best_effort,
        timeout: Duration::from_secs(args.timeout),
    };
    let waited = wait(client, change, fleet_change.timeout, !args.best_effort).await;
    let outcome = match fleet_change.waited(waited) {
        Next::Finish(outcome) => outcome,
        Next::RestoreBlind { lost } => {
            println!(
                "{}: lost track of the hosts ({lost}); restoring {before}",
                change.service
            );
            match client.replace(change, &before.as_undo()).await {
                Ok(()) => fleet_change.restored_blind(lost),
                Err(undo) => fleet_change.restore_failed(
                    format!("waiting for the hosts failed ({lost})"),
                    format!("{undo:#}"),
                ),
            }
        }
        Next::Restore { failures } => {
            println!("{}: restoring {before} on every live host", change.service);
            match client.replace(change, &before.as_undo()).await {
                Ok(()) => {
                    let back = wait(client, change, fleet_change.timeout, false).await;
                    fleet_change.restored(failures, back)
                }
                Err(undo) => fleet_change.restore_failed(failures.join("; "), format!("{undo:#}")),
            }
        }
    };
    let report = fleet_change.report(&outcome);
    if outcome.succeeded() {
        println!(
            "{report}: converged in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if matches!(outcome, Outcome::KeptInPart { .. }) {
        eprintln!("error: {report}");
        return Ok(ExitCode::FAILURE);
    }
    bail!("{report}")
}

/// Follows the live hosts until each has acted on `change`'s revision,
/// until the first refusal if `stop_on_refusal`, or until `timeout` (the
/// pending hosts then timed out). Prints each host as it acts. Every
/// change of a host record (an update, or a lease expiring) wakes it, so
/// it sees convergence as soon as etcd does.
async fn wait(
    client: &mut FleetClient,
    change: &Change,
    timeout: Duration,
    stop_on_refusal: bool,
) -> Waited {
    match follow(
        client,
        &change.service,
        change.revision,
        timeout,
        stop_on_refusal,
    )
    .await
    {
        Ok((progress, timed_out)) => Waited::Settled {
            progress,
            timed_out,
        },
        Err(error) => Waited::Lost(format!("{error:#}")),
    }
}

/// [`wait`], with its errors as they come.
async fn follow(
    client: &mut FleetClient,
    service: &str,
    revision: i64,
    timeout: Duration,
    stop_on_refusal: bool,
) -> anyhow::Result<(Progress, bool)> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    // Watching from just after the desired state was written, not from
    // whenever the watch happens to start: a host that answers before the
    // watch is in place is still seen.
    let hosts_dir = client.keys.hosts();
    let mut changes = client.watch(&hosts_dir, Some(revision + 1)).await?;
    let mut shown = BTreeSet::new();
    loop {
        // Held by this command's marker, so only a write that bypassed
        // bluegreen can move it.
        match client.desired(service).await? {
            Some((_, now)) if now == revision => {}
            _ => bail!(
                "{service}: its desired state changed under this command (written by something other than `bluegreen fleet`?): check `bluegreen fleet status`"
            ),
        }
        let hosts = client.hosts().await?.live;
        let progress = fleet::progress(service, revision, &hosts);
        let elapsed = started.elapsed().as_secs_f64();
        for host in &progress.applied {
            if shown.insert(host.clone()) {
                println!("  {host}: applied ({elapsed:.3} s)");
            }
        }
        for (host, reason) in &progress.refused {
            if shown.insert(host.clone()) {
                println!("  {host}: REFUSED ({elapsed:.3} s): {reason}");
            }
        }
        if progress.is_settled() || (stop_on_refusal && !progress.refused.is_empty()) {
            return Ok((progress, false));
        }
        match tokio::time::timeout_at(deadline, changes.message()).await {
            Err(_) => return Ok((progress, true)),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("etcd ended the watch of {hosts_dir}"),
            Ok(Err(error)) => {
                return Err(
                    bluegreen::Error::etcd(format!("cannot watch {hosts_dir}"))(error).into(),
                );
            }
        }
    }
}

async fn status(args: FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connection).await?;
    let (desired, _) = client.list_desired().await?;
    let fleet::Hosts {
        live: hosts,
        ignored,
    } = client.hosts().await?;
    let changes = client.changes().await?;
    let conflicts = client.conflicts().await?;
    let revision_of = |service: &str| desired.get(service).map_or(0, |(_, revision)| *revision);
    let services: BTreeMap<&String, serde_json::Value> = desired
        .iter()
        .map(|(name, (state, revision))| {
            let value = json!({
                "desired": state.as_ref().ok(),
                "unreadable": state.as_ref().err(),
                "revision": revision,
                "change_in_progress": changes.get(name),
            });
            (name, value)
        })
        .collect();
    let conflict_rows: Vec<serde_json::Value> = conflicts
        .iter()
        .map(|(key, conflict)| match conflict {
            Ok(conflict) => json!({"key": key, "conflict": conflict}),
            Err(reason) => json!({"key": key, "unreadable": reason}),
        })
        .collect();
    let host_rows: Vec<serde_json::Value> = hosts
        .iter()
        .map(|record| {
            let services: BTreeMap<&String, serde_json::Value> = record
                .services
                .iter()
                .map(|(name, applied)| {
                    let wanted = revision_of(name);
                    let mut value = serde_json::to_value(applied).expect("serialises");
                    value["desired_revision"] = json!(wanted);
                    value["lag"] = json!((wanted - applied.revision).max(0));
                    value["in_sync"] = json!(
                        applied.revision == wanted
                            && applied.refused.is_none()
                            && applied.drift.is_none()
                    );
                    (name, value)
                })
                .collect();
            json!({
                "host": record.host,
                "owner": record.owner,
                "updated_unix_ms": record.updated_unix_ms,
                "services": services,
            })
        })
        .collect();
    if args.json {
        let report = json!({
            "schema_version": FLEET_SCHEMA_VERSION,
            "services": services,
            "hosts": host_rows,
            "ignored": ignored,
            "conflicts": conflict_rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (name, (state, revision)) in &desired {
        let busy = changes
            .get(name)
            .map(|holder| format!("; change in progress by {holder}"))
            .unwrap_or_default();
        match state {
            Ok(state) => println!(
                "{name}: desired {state} (revision {revision}, by {}){busy}",
                state.by
            ),
            Err(reason) => println!(
                "{name}: desired state UNREADABLE (revision {revision}): {reason}; the hosts keep what they had{busy}"
            ),
        }
    }
    for Ignored { key, reason } in &ignored {
        println!("ignored {key}: {reason}");
    }
    for (key, conflict) in &conflicts {
        match conflict {
            Ok(conflict) => println!(
                "CONFLICT {key}: {} refused to start as host {}, which {} holds (lease {:x})",
                conflict.claimant, conflict.host, conflict.holder, conflict.holder_lease
            ),
            Err(reason) => println!("CONFLICT {key}: (unreadable: {reason})"),
        }
    }
    if hosts.is_empty() {
        println!("no live host (a host is listed while its daemon keeps its lease)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "HOST".to_owned(),
        "SERVICE".to_owned(),
        "APPLIED".to_owned(),
        "BLUE".to_owned(),
        "GREEN".to_owned(),
        "LAG".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for record in &hosts {
        for (name, applied) in &record.services {
            let health = |health: Health| {
                serde_json::to_value(health)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            let error = applied
                .drift
                .clone()
                .or_else(|| applied.last_error.clone())
                .unwrap_or_else(|| "-".to_owned());
            // Health, and where the color is in its lifecycle when
            // bluegreen starts and stops it.
            let color = |health_of: Health, phase: Option<Phase>| match phase {
                Some(phase) => format!("{}, {phase}", health(health_of)),
                None => health(health_of),
            };
            let phases = applied.lifecycle;
            rows.push([
                record.host.clone(),
                name.clone(),
                describe(applied.active, applied.idle_share),
                color(applied.health.blue, phases.map(|phases| phases.blue)),
                color(applied.health.green, phases.map(|phases| phases.green)),
                (revision_of(name) - applied.revision).max(0).to_string(),
                error,
            ]);
        }
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
