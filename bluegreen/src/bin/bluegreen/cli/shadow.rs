//! `bluegreen shadow`: run a shadowing here, have the daemon run one, stop
//! it, or show its figures.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use bluegreen::{
    host::{Host, ShadowStopped},
    shadow::{
        engine::StopReason,
        options::{ShadowConfig, ShadowOptions},
        record::ShadowRecord,
    },
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use super::args::{ShadowAction, ShadowArgs};
use crate::output::print_shadow;

/// How long `shadow start` waits for the daemon to take its order: the
/// daemon looks once a second.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long `shadow stop` waits for the run to end: it looks once a second,
/// then lets the requests in replay finish (at most 12 s).
const STOP_WAIT: Duration = Duration::from_secs(20);

pub fn execute(host: &Host, action: ShadowAction) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match action {
        ShadowAction::Run(args) => {
            let (name, options) = options(host, &args)?;
            let (stop, stopped) = watch::channel(None);
            let record = runtime.block_on(async {
                // Each signal that ends a foreground process stops the run
                // first: unhandled, it would leave capture on.
                let watch = |kind| signal(kind).context("cannot watch signals");
                let mut interrupt = watch(SignalKind::interrupt())?;
                let mut terminate = watch(SignalKind::terminate())?;
                let mut hangup = watch(SignalKind::hangup())?;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                        _ = hangup.recv() => {}
                    }
                    let _ = stop.send(Some(StopReason::Requested));
                });
                eprintln!(
                    "{name}: shadowing {} of new flows to the idle color until {}; Ctrl-C stops",
                    options.sample,
                    match options.duration {
                        Some(duration) => format!("{duration:?} have passed"),
                        None => "stopped".to_owned(),
                    }
                );
                Ok::<_, anyhow::Error>(host.shadow(Some(&name), options, false, stopped).await?)
            })?;
            show(&record, args.json)?;
        }
        ShadowAction::Start(args) => {
            let (name, options) = options(host, &args)?;
            let asked = bluegreen::clock::unix_now_ms();
            host.order_shadow(Some(&name), &options)?;
            let record = runtime.block_on(wait_for_daemon(host, &name, asked))?;
            show(&record, args.json)?;
        }
        ShadowAction::Stop { service, json } => {
            match runtime.block_on(host.stop_shadow(service.as_deref(), STOP_WAIT))? {
                ShadowStopped::Stopped(record) => show(&record, json)?,
                ShadowStopped::Abandoned(record) => {
                    eprintln!(
                        "{}: its run's owner (pid {}) was gone; capture is off now",
                        record.service, record.owner.pid
                    );
                    show(&record, json)?;
                }
            }
        }
        ShadowAction::Status { service, json } => {
            let records = match service.as_deref() {
                Some(name) => match host.shadow_record(Some(name))? {
                    Some(record) => vec![record],
                    None => bail!(
                        "{name} has never been shadowed: `bluegreen shadow run {name} --sample 5%` starts"
                    ),
                },
                None => host.shadow_records()?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "schema_version": ShadowRecord::SCHEMA_VERSION,
                        "shadows": records,
                    }))?
                );
            } else if records.is_empty() {
                println!("no service has been shadowed");
            }
            if !json {
                for record in &records {
                    print_shadow(record);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's options: the service's `[service.shadow]`, then the
/// command's flags over them; all checked before anything starts.
fn options(host: &Host, args: &ShadowArgs) -> anyhow::Result<(String, ShadowOptions)> {
    let (name, config) = host.shadow_config(args.service.as_deref())?;
    let mut options = match config {
        Some(ShadowConfig { settings, .. }) => settings
            .options()
            .map_err(|error| anyhow::anyhow!("{name}: its [service.shadow]: {error}"))?,
        None => ShadowOptions::new(ShadowConfig::DEFAULT_SAMPLE),
    };
    if let Some(sample) = args.sample {
        options.sample = sample;
    }
    if let Some(duration) = args.duration {
        options.duration = Some(duration);
    }
    if let Some(max_inflight) = args.max_inflight {
        options.max_inflight = max_inflight;
    }
    if !args.allow.is_empty() {
        options.allow = bluegreen::shadow::http::AllowList::parse(&args.allow)
            .map_err(|error| anyhow::anyhow!("--allow: {error}"))?;
    }
    if let Some(timeout) = args.response_timeout {
        options.response_timeout = timeout;
    }
    options.validate().map_err(anyhow::Error::msg)?;
    Ok((name, options))
}

/// The daemon's run, once it has taken the order.
async fn wait_for_daemon(host: &Host, name: &str, asked: u64) -> anyhow::Result<ShadowRecord> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        if let Some(record) = host.shadow_record(Some(name))?
            && record.started_unix_ms >= asked
            && record.owner.daemon
        {
            return Ok(record);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{name}: the daemon has not started shadowing within {}s: its log says why (`journalctl -u bluegreen`)",
                START_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn show(record: &ShadowRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(record)?);
    } else {
        print_shadow(record);
    }
    Ok(())
}
