//! The daemon's part in a fleet: keep this host's record in etcd under a
//! lease, follow every desired state, apply each through the same
//! health-gated switch as the CLI, and report what happened.
//!
//! A session lists the desired states, applies them, publishes the record
//! and then watches from the listed revision, so no update is missed; any
//! failure (etcd gone, lease lost, watch cancelled) ends the session, and
//! the next one starts over with a fresh list. Between sessions nothing
//! changes locally: traffic keeps the last applied state.
//!
//! The host's name is its own: the record is created only where no other
//! live daemon's lease holds it, and a daemon that finds it taken at start
//! refuses to start (two daemons under one name would each answer for the
//! other, and a switch could count one host's success as both's).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail};
use bluegreen::{
    clock::unix_now_ms,
    config::FleetConfig,
    endpoint::Color,
    fleet::{
        self, AppliedService, ColorHealth, ColorPhases, Conflict, DesiredState,
        FLEET_SCHEMA_VERSION, HostRecord,
        client::{Desired, FleetClient},
        describe,
    },
    health::Health,
    host::Host,
    state::{FleetMarker, StateStore},
    task::AbortOnDrop,
};
use etcd_client::EventType;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::observations::Shared;

/// Retries after a failed session: from the first to the last, doubling.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// How often the live colors and health are compared with the record.
const REFRESH: Duration = Duration::from_secs(1);

/// One service as the agent follows it.
struct Tracked {
    /// The last desired state seen, and its revision.
    desired: Option<(DesiredState, i64)>,
    applied: AppliedService,
}

struct Agent {
    config: FleetConfig,
    host: Host,
    iface: String,
    store: StateStore,
    observations: Shared,
    services: BTreeMap<String, Tracked>,
    marker: FleetMarker,
    /// The lease of the last session's record: after a reconnect, the
    /// record still under it is this daemon's, not another's.
    lease: Option<i64>,
    /// This daemon, as the record names it to another claiming its name.
    owner: String,
}

/// How the first session ended for [`start`]: registered (or failed in a
/// way worth retrying), or refused because the host name is taken.
type Started = Result<(), String>;

/// Starts the agent and waits until it has converged to the fleet's desired
/// states (or failed its first attempt, so that an unreachable etcd cannot
/// keep the daemon from serving: it keeps retrying in the background).
pub(super) async fn start(
    config: FleetConfig,
    host: Host,
    iface: String,
    store: StateStore,
    services: Vec<String>,
    observations: Shared,
) -> anyhow::Result<JoinHandle<()>> {
    // Checked once here, where a mistake stops the daemon: the sessions'
    // retries could not fix a missing or mismatched file.
    fleet::tls::load(&config.tls).context("fleet")?;
    let marker = FleetMarker {
        host: config.host.clone(),
        prefix: config.prefix.clone(),
        endpoints: config.endpoints.clone(),
        services: services.clone(),
        connected: false,
        since_unix_ms: unix_now_ms(),
        last_error: None,
    };
    // Before anything else: from now on a local switch is refused.
    store
        .save_fleet(&iface, &marker)
        .context("cannot write the fleet marker")?;
    {
        let mut observations = observations.lock().expect("observations lock");
        observations.fleet_connected = Some(false);
        observations.fleet_unreadable = services.iter().map(|name| (name.clone(), false)).collect();
    }
    let tracked = services
        .into_iter()
        .map(|name| {
            let applied = AppliedService {
                active: Color::Blue,
                idle_share: 0,
                force_epoch: 0,
                revision: 0,
                refused: None,
                health: ColorHealth::default(),
                last_error: None,
                drift: None,
                lifecycle: None,
            };
            (
                name,
                Tracked {
                    desired: None,
                    applied,
                },
            )
        })
        .collect();
    let mut agent = Agent {
        config,
        host,
        iface,
        store,
        observations,
        services: tracked,
        marker,
        lease: None,
        owner: owner(),
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move { agent.keep_session(ready_tx).await });
    if let Ok(Err(refused)) = ready_rx.await {
        bail!("fleet: {refused}");
    }
    Ok(task)
}

/// `pid N on MACHINE`.
fn owner() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "an unknown machine".to_owned());
    format!("pid {} on {machine}", std::process::id())
}

impl Agent {
    async fn keep_session(&mut self, ready: oneshot::Sender<Started>) {
        let mut ready = Some(ready);
        let mut retry = FIRST_RETRY;
        loop {
            let Err(error) = self.session(&mut ready).await;
            let message = format!("{error:#}");
            // Only at start: later, the name was this daemon's first, and
            // it keeps trying to take it back.
            if let Some(bluegreen::Error::FleetHostTaken { .. }) = error.downcast_ref()
                && let Some(ready) = ready.take()
            {
                self.set_connected(false, Some(message.clone()));
                let _ = ready.send(Err(message));
                return;
            }
            if self.marker.connected {
                retry = FIRST_RETRY;
            }
            log::warn!(
                "fleet: etcd session ended ({message}); traffic keeps its last applied state, retrying in {retry:?}"
            );
            self.set_connected(false, Some(message));
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(LAST_RETRY);
        }
    }

    /// Connects, converges, registers and follows until something fails.
    async fn session(
        &mut self,
        ready: &mut Option<oneshot::Sender<Started>>,
    ) -> anyhow::Result<std::convert::Infallible> {
        let config = &self.config;
        let mut client =
            FleetClient::connect(&config.endpoints, &config.prefix, &config.tls).await?;
        // A crashed daemon's record outlives it by one TTL: its restart
        // waits that long before calling the name someone else's. The name
        // is claimed before anything is applied: a daemon that refuses to
        // start must not have moved traffic.
        let patience = Duration::from_secs(config.lease_ttl_secs + 1);
        let claimed = client.await_name(&config.host, self.lease, patience).await;
        if let Err(bluegreen::Error::FleetHostTaken { lease, owner, .. }) = &claimed {
            let conflict = Conflict {
                schema_version: FLEET_SCHEMA_VERSION,
                host: config.host.clone(),
                claimant: self.owner.clone(),
                holder: owner.clone(),
                holder_lease: *lease,
                at_unix_ms: unix_now_ms(),
            };
            if let Err(report) = client.report_conflict(&conflict).await {
                log::warn!("fleet: cannot report the conflict: {report}");
            }
        }
        claimed?;
        let ttl = config.lease_ttl_secs as i64;
        let lease = client.grant(ttl).await?;
        let (keeper, renewals) = client.keep_alive(lease).await?;
        // Renewed in a task of its own: applying a desired state runs the
        // host's release gates (an evaluation, an analysis window) for
        // longer than the lease lives, and the lease must outlive them.
        let (lost, mut lease_lost) = oneshot::channel();
        let _renewing = AbortOnDrop(tokio::spawn(keep_lease(
            keeper,
            renewals,
            Duration::from_millis(ttl as u64 * 1000 / 3),
            lost,
        )));
        let previous = self.lease.replace(lease);
        let (desired, revision) = client.list_desired().await?;
        self.refresh().await;
        client.register(&self.record(), lease, previous).await?;
        for (name, (state, at)) in desired {
            self.follow(&name, state, at).await;
        }
        self.refresh().await;
        let registered = client.register(&self.record(), lease, None).await?;
        self.set_connected(true, None);
        log::info!(
            "fleet: host {} registered in {} (lease {ttl} s), following from revision {revision}",
            self.config.host,
            self.config.prefix
        );
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let services = client.keys.services();
        let mut watch = client.watch(&services, Some(revision + 1)).await?;
        let own_key = client.keys.host(&self.config.host);
        let mut own = client.watch_key(&own_key, registered + 1).await?;
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                lost = &mut lease_lost => {
                    return Err(lost.unwrap_or_else(|_| anyhow::anyhow!("the lease's renewal stopped")));
                }
                message = watch.message() => {
                    let Some(response) = message.context("the watch failed")? else {
                        bail!("etcd ended the watch");
                    };
                    if response.canceled() {
                        bail!("etcd cancelled the watch: {}", response.cancel_reason());
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        if let Some((name, state)) = client.watched(kv) {
                            self.follow(&name, state, kv.mod_revision()).await;
                        }
                    }
                    self.refresh().await;
                    client.register(&self.record(), lease, None).await?;
                }
                message = own.message() => {
                    let Some(response) = message.context("the watch of this host's record failed")? else {
                        bail!("etcd ended the watch of this host's record");
                    };
                    if response.canceled() {
                        bail!("etcd cancelled the watch of this host's record: {}", response.cancel_reason());
                    }
                    // This daemon's own writes keep the lease; anything
                    // else was written over it (by hand, say): a record
                    // left without a lease would outlive this daemon.
                    let foreign = response.events().iter().any(|event| {
                        event.event_type() == EventType::Delete
                            || event.kv().is_some_and(|kv| kv.lease() != lease)
                    });
                    if foreign {
                        log::warn!("fleet: {own_key} was overwritten or deleted by someone else; writing it again under this daemon's lease");
                        client.register(&self.record(), lease, None).await?;
                    }
                }
                _ = refresh.tick() => {
                    if self.refresh().await {
                        client.register(&self.record(), lease, None).await?;
                    }
                }
            }
        }
    }

    /// Applies a desired state of a service this host serves, and records
    /// the outcome (a refusal included) against its revision. One that
    /// cannot be read is refused, for that service alone.
    async fn follow(&mut self, name: &str, desired: Desired, revision: i64) {
        let Some(tracked) = self.services.get_mut(name) else {
            return;
        };
        let desired = match desired {
            Ok(desired) => desired,
            Err(reason) => {
                let key = fleet::Keys::new(&self.config.prefix).service(name);
                let error = format!(
                    "cannot read the desired state in {key} (revision {revision}): {reason}; traffic keeps its last applied state"
                );
                if tracked.applied.revision != revision {
                    log::warn!("fleet: {name}: {error}");
                }
                tracked.applied.revision = revision;
                tracked.applied.refused = Some(error.clone());
                tracked.applied.last_error = Some(error);
                self.set_unreadable(name, true);
                return;
            }
        };
        self.set_unreadable(name, false);
        let Some(tracked) = self.services.get_mut(name) else {
            return;
        };
        if tracked.applied.revision == revision && tracked.desired.is_some() {
            return;
        }
        let first = tracked.desired.is_none();
        let applied = {
            let (host, name, wanted) = (self.host.clone(), name.to_owned(), desired.clone());
            let before = tracked.applied.clone();
            tokio::task::spawn_blocking(move || {
                let met = host
                    .service_view(Some(&name))
                    .is_ok_and(|view| wanted.is_met_by(view.active, view.record.weight));
                fleet::apply(
                    &host,
                    &name,
                    &wanted,
                    before.must_force(&wanted, first, met),
                )
            })
            .await
        };
        let applied_state = &mut tracked.applied;
        applied_state.revision = revision;
        match applied {
            Ok(Ok(outcome)) => {
                if let Some(outcome) = outcome {
                    log::info!(
                        "fleet: {name}: applied revision {revision}: {desired} (was {})",
                        describe(outcome.from, outcome.weight_before)
                    );
                }
                applied_state.force_epoch = desired.force_epoch;
                applied_state.refused = None;
                applied_state.last_error = None;
            }
            Ok(Err(error)) => {
                log::warn!("fleet: {name}: refused revision {revision} ({desired}): {error}");
                applied_state.refused = Some(error.to_string());
                applied_state.last_error = Some(error.to_string());
            }
            Err(error) => {
                applied_state.refused = Some(format!("the apply task failed: {error}"));
                applied_state.last_error = applied_state.refused.clone();
            }
        }
        tracked.desired = Some((desired, revision));
    }

    /// Reads each service's live colors and health into its record; true
    /// when something changed.
    async fn refresh(&mut self) -> bool {
        let mut changed = false;
        for (name, tracked) in &mut self.services {
            let view = {
                let (host, name) = (self.host.clone(), name.clone());
                tokio::task::spawn_blocking(move || host.service_view(Some(&name))).await
            };
            let Ok(Ok(view)) = view else { continue };
            let lifecycle = if view.record.spec.lifecycle.is_some() {
                let (host, name) = (self.host.clone(), name.clone());
                match tokio::task::spawn_blocking(move || host.lifecycle(Some(&name))).await {
                    Ok(Ok((_, record))) => Some(ColorPhases {
                        blue: record.blue.phase,
                        green: record.green.phase,
                    }),
                    _ => tracked.applied.lifecycle,
                }
            } else {
                None
            };
            let health = {
                let observations = self.observations.lock().expect("observations lock");
                let of = |color| {
                    observations
                        .health
                        .get(&(name.clone(), color))
                        .copied()
                        .unwrap_or(Health::Unknown)
                };
                ColorHealth {
                    blue: of(Color::Blue),
                    green: of(Color::Green),
                }
            };
            let applied = &mut tracked.applied;
            let drift = tracked.desired.as_ref().and_then(|(desired, revision)| {
                applied.drift(desired, *revision, view.active, view.record.weight)
            });
            let before = (
                applied.active,
                applied.idle_share,
                applied.health,
                &applied.drift,
                applied.lifecycle,
            );
            if before != (view.active, view.record.weight, health, &drift, lifecycle) {
                if drift.is_some() && applied.drift.is_none() {
                    log::warn!("fleet: {name}: {}", drift.as_deref().unwrap_or_default());
                }
                applied.active = view.active;
                applied.idle_share = view.record.weight;
                applied.health = health;
                applied.drift = drift;
                applied.lifecycle = lifecycle;
                changed = true;
            }
        }
        changed
    }

    fn record(&self) -> HostRecord {
        HostRecord {
            schema_version: FLEET_SCHEMA_VERSION,
            host: self.config.host.clone(),
            owner: self.owner.clone(),
            services: self
                .services
                .iter()
                .map(|(name, tracked)| (name.clone(), tracked.applied.clone()))
                .collect(),
            updated_unix_ms: unix_now_ms(),
        }
    }

    /// Shows in the metrics whether `service`'s desired state is one this
    /// host cannot read.
    fn set_unreadable(&self, service: &str, unreadable: bool) {
        self.observations
            .lock()
            .expect("observations lock")
            .fleet_unreadable
            .insert(service.to_owned(), unreadable);
    }

    /// Shows the connection in the metrics, the log and the marker that
    /// `status` reads.
    fn set_connected(&mut self, connected: bool, error: Option<String>) {
        self.observations
            .lock()
            .expect("observations lock")
            .fleet_connected = Some(connected);
        if self.marker.connected != connected || self.marker.last_error != error {
            if connected != self.marker.connected {
                self.marker.since_unix_ms = unix_now_ms();
            }
            self.marker.connected = connected;
            self.marker.last_error = error;
            if let Err(error) = self.store.save_fleet(&self.iface, &self.marker) {
                log::warn!("fleet: cannot update the fleet marker: {error}");
            }
        }
    }
}

/// Renews the lease every `every` until a renewal fails, which it reports
/// on `lost`.
async fn keep_lease(
    mut keeper: etcd_client::LeaseKeeper,
    mut renewals: etcd_client::LeaseKeepAliveStream,
    every: Duration,
    lost: oneshot::Sender<anyhow::Error>,
) {
    let mut renew = tokio::time::interval(every);
    loop {
        renew.tick().await;
        let renewed: anyhow::Result<()> = async {
            keeper
                .keep_alive()
                .await
                .context("cannot renew the lease")?;
            match renewals.message().await.context("cannot renew the lease")? {
                Some(renewal) if renewal.ttl() > 0 => Ok(()),
                _ => bail!("the lease expired: etcd dropped this host's record"),
            }
        }
        .await;
        if let Err(error) = renewed {
            let _ = lost.send(error);
            return;
        }
    }
}
