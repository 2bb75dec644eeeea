//! Shadowing on this host: a run owns the interface's capture ring, turns
//! capture on for one service, feeds the engine (see [`crate::shadow`]),
//! and turns capture off however it ends. `shadow start` and `shadow stop`
//! leave orders for the run's owner; `shadow status` reads its record.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bluegreen_common::{
    ServiceKey, ServiceState, ShadowCount, ShadowSettings, shadow_sample_below,
};
use tokio::sync::watch;

use super::{Host, Lock, OpenService};
use crate::{
    clock::unix_now_ms,
    endpoint::{Color, from_wire},
    error::{Error, Result},
    health::{Health, HealthCheck, HealthTracker},
    pinned::{PinnedMaps, ShadowMaps},
    shadow::{
        capture::RingReader,
        engine::{Control, Engine, ShadowReport, StopReason},
        options::{ShadowConfig, ShadowOptions},
        record::{Owner, ShadowOrder, ShadowRecord, Stopped},
    },
    state::{InterfaceLock, StateStore},
    task::AbortOnDrop,
};

/// What `shadow stop` found.
#[derive(Debug)]
pub enum ShadowStopped {
    /// The run's owner stopped it; its last record.
    Stopped(ShadowRecord),
    /// Its owner was gone: capture was turned off here.
    Abandoned(ShadowRecord),
}

impl Host {
    /// Runs a shadowing of `service` (or the only one) in this process
    /// until it stops: its duration ends, the idle color becomes live or
    /// unhealthy, `shadow stop` is ordered, or `stop` says so. Returns its
    /// last record. Capture is on only while this runs.
    pub async fn shadow(
        &self,
        service: Option<&str>,
        options: ShadowOptions,
        daemon: bool,
        stop: watch::Receiver<Option<StopReason>>,
    ) -> Result<ShadowRecord> {
        let open = self.open_service(service, Lock::None)?;
        let live = Color::from_wire(open.live.active);
        let idle = live.other();
        let name = open.name().to_owned();
        let iface = open.state.interface.clone();
        let _lock = self.admit_shadow(&open)?;
        let layout = self.layout(&iface);
        let mut capture = ShadowMaps::open(&layout)?;
        let ring = capture.take_ring().expect("a fresh handle has its ring");
        let mut reader =
            RingReader::new(ring).map_err(Error::io("cannot watch the shadow capture ring"))?;
        // Records left by an earlier run belong to flows nobody follows.
        reader.drain(|_| {});
        // A stop order an earlier run left (its owner gone before it read
        // it) is not this run's.
        if matches!(
            self.state.load_shadow_order(&name),
            Ok(Some(ShadowOrder::Stop { .. }))
        ) {
            self.state.remove_shadow_order(&name)?;
        }

        // Everything that can fail is done before anything is recorded or
        // turned on: a refused run leaves no record and no capture.
        let maps = PinnedMaps::open(&layout)?;
        let counts = ShadowMaps::open(&layout)?;
        // Taken before capture is on, so the run's first records count.
        let counts_before = counts.counts()?;
        let started_unix_ms = unix_now_ms();
        let mut record = ShadowRecord {
            schema_version: ShadowRecord::SCHEMA_VERSION,
            service: name.clone(),
            iface: iface.clone(),
            live,
            idle,
            settings: options.to_request(),
            owner: Owner::this(daemon),
            started_unix_ms,
            until_unix_ms: options
                .duration
                .map(|duration| started_unix_ms + duration.as_millis() as u64),
            updated_unix_ms: started_unix_ms,
            stopped: None,
            report: ShadowReport::default(),
        };
        let switch = CaptureSwitch::on(
            capture,
            open.live.counter_slot,
            ShadowSettings {
                sample_below: shadow_sample_below(options.sample.basis_points),
                // Distinct from the last run's, whose flows may still be in
                // the sampled-flows table: any value but 0 will do.
                session: (started_unix_ms as u32) | 1,
            },
        )?;
        // Capture goes off again (the switch dropped) if the record cannot
        // be written.
        self.state.save_shadow(&name, &record)?;
        let unhealthy = Arc::new(Mutex::new(None));
        let _health = open.record().spec.health.clone().map(|check| {
            let backends = open.pool(idle).serving();
            AbortOnDrop(tokio::spawn(watch_health(
                check,
                backends,
                unhealthy.clone(),
            )))
        });
        let control = HostControl {
            state: self.state.clone(),
            record: record.clone(),
            key: open.key,
            service: open.live,
            live,
            idle,
            maps,
            counts,
            counts_before,
            unhealthy,
            switch: Some(switch),
        };
        drop(open);
        let (reason, report) = Engine::new(control, options).run(reader, stop).await;
        // The last record is written whatever else fails.
        if matches!(
            self.state.load_shadow_order(&name),
            Ok(Some(ShadowOrder::Stop { .. }))
        ) && let Err(error) = self.state.remove_shadow_order(&name)
        {
            log::warn!("{name}: {error}");
        }
        record.report = report;
        record.updated_unix_ms = unix_now_ms();
        record.stopped = Some(Stopped {
            at_unix_ms: record.updated_unix_ms,
            reason,
        });
        self.state.save_shadow(&name, &record)?;
        Ok(record)
    }

    /// `service`'s name and its `[service.shadow]`, if it has one: the
    /// defaults of its runs.
    pub fn shadow_config(&self, service: Option<&str>) -> Result<(String, Option<ShadowConfig>)> {
        let open = self.open_service(service, Lock::None)?;
        Ok((open.name().to_owned(), open.record().spec.shadow.clone()))
    }

    /// `service`'s shadowing record, if it was ever shadowed.
    pub fn shadow_record(&self, service: Option<&str>) -> Result<Option<ShadowRecord>> {
        let open = self.open_service(service, Lock::None)?;
        self.state.load_shadow(open.name())
    }

    /// Every service's shadowing record on this host, by service.
    pub fn shadow_records(&self) -> Result<Vec<ShadowRecord>> {
        let mut records = Vec::new();
        for iface in self.up_interfaces()? {
            let Some(state) = self.state.load(&iface)? else {
                continue;
            };
            for service in &state.services {
                if let Some(record) = self.state.load_shadow(&service.spec.name)? {
                    records.push(record);
                }
            }
        }
        Ok(records)
    }

    /// Orders the daemon to shadow `service`: refused when no daemon runs
    /// on its interface to act on it, or when a run is on already. Returns
    /// the service's name.
    pub fn order_shadow(&self, service: Option<&str>, options: &ShadowOptions) -> Result<String> {
        let open = self.open_service(service, Lock::None)?;
        let name = open.name().to_owned();
        let iface = &open.state.interface;
        if let Some(record) = self.state.load_shadow(&name)?
            && record.is_running()
        {
            return Err(Error::ShadowRefused {
                service: name,
                reason: format!(
                    "it is being shadowed already (by pid {}): `bluegreen shadow stop {}` first",
                    record.owner.pid, record.service
                ),
            });
        }
        if self.state.try_lock_daemon(iface)?.is_some() {
            return Err(Error::ShadowRefused {
                service: name,
                reason: format!(
                    "no daemon runs on {iface} to run it: start one (`systemctl start bluegreen`), or run `bluegreen shadow run` in the foreground"
                ),
            });
        }
        // What the daemon would refuse, refused here, where the operator
        // reads it.
        drop(self.admit_shadow(&open)?);
        self.state.save_shadow_order(
            &name,
            &ShadowOrder::Start {
                settings: options.to_request(),
                requested_unix_ms: unix_now_ms(),
            },
        )?;
        Ok(name)
    }

    /// Orders `service`'s shadowing to stop and waits (up to `wait`) for
    /// its owner to do so. A run whose owner is gone is ended here: its
    /// capture turned off, its record marked stopped.
    pub async fn stop_shadow(
        &self,
        service: Option<&str>,
        wait: Duration,
    ) -> Result<ShadowStopped> {
        let open = self.open_service(service, Lock::None)?;
        let name = open.name().to_owned();
        let not_running = || Error::ShadowNotRunning {
            service: name.clone(),
        };
        let Some(mut record) = self.state.load_shadow(&name)? else {
            return Err(not_running());
        };
        if record.stopped.is_some() {
            return Err(not_running());
        }
        if !record.owner.is_alive() {
            self.end_abandoned(&open, &mut record)?;
            return Ok(ShadowStopped::Abandoned(record));
        }
        self.state.save_shadow_order(
            &name,
            &ShadowOrder::Stop {
                requested_unix_ms: unix_now_ms(),
            },
        )?;
        drop(open);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(record) = self.state.load_shadow(&name)?
                && record.stopped.is_some()
            {
                return Ok(ShadowStopped::Stopped(record));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::ShadowRefused {
                    service: name,
                    reason: format!(
                        "its owner (pid {}) has not stopped it within {}s; it will when it next looks (about once a second)",
                        record.owner.pid,
                        wait.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends `service`'s run if its record says it runs but its owner is
    /// gone (a process killed outright): capture off, record stopped.
    /// Returns the record so ended (for the daemon, every round).
    pub fn end_abandoned_shadow(&self, service: &str) -> Result<Option<ShadowRecord>> {
        let Some(mut record) = self.state.load_shadow(service)? else {
            return Ok(None);
        };
        if record.stopped.is_some() || record.owner.is_alive() {
            return Ok(None);
        }
        let open = self.open_service(Some(service), Lock::None)?;
        self.end_abandoned(&open, &mut record)?;
        Ok(Some(record))
    }

    fn end_abandoned(&self, open: &OpenService, record: &mut ShadowRecord) -> Result<()> {
        let mut capture = ShadowMaps::open(&self.layout(&record.iface))?;
        capture.set(open.live.counter_slot, &ShadowSettings::default())?;
        record.stopped = Some(Stopped {
            at_unix_ms: unix_now_ms(),
            reason: StopReason::Failed(format!(
                "its owner (pid {}) ended without stopping it",
                record.owner.pid
            )),
        });
        self.state.save_shadow(&record.service, record)
    }

    /// Whether `open` can be shadowed now: its idle color has backends and
    /// is running, and no other run owns its interface's capture (the lock
    /// returned, held for the run).
    fn admit_shadow(&self, open: &OpenService) -> Result<InterfaceLock> {
        let name = open.name();
        let idle = Color::from_wire(open.live.active).other();
        if open.backends(idle).is_empty() {
            return Err(Error::ShadowRefused {
                service: name.to_owned(),
                reason: format!("its idle color, {idle}, has no backend to replay to"),
            });
        }
        self.require_running(open, idle)?;
        let iface = &open.state.interface;
        self.state.try_lock_shadow(iface)?.ok_or_else(|| Error::ShadowRefused {
            service: name.to_owned(),
            reason: format!(
                "another shadowing run owns {iface}'s capture (one at a time per interface): see `bluegreen shadow status`"
            ),
        })
    }

    /// The start order waiting for `service`, taken (for the daemon).
    pub fn take_shadow_start(&self, service: &str) -> Result<Option<ShadowOrderStart>> {
        match self.state.load_shadow_order(service) {
            Ok(Some(ShadowOrder::Start { settings, .. })) => {
                self.state.remove_shadow_order(service)?;
                Ok(Some(settings.options().map_err(|reason| {
                    Error::ShadowRefused {
                        service: service.to_owned(),
                        reason,
                    }
                })))
            }
            Ok(_) => Ok(None),
            Err(error) => {
                self.state.remove_shadow_order(service)?;
                Err(error)
            }
        }
    }
}

/// A start order's options, or why they cannot be used.
pub type ShadowOrderStart = std::result::Result<ShadowOptions, Error>;

/// Capture turned on for one service, and off when dropped, whatever ends
/// the run (an error, a panic unwinding, the task cancelled).
struct CaptureSwitch {
    maps: ShadowMaps,
    counter_slot: u32,
}

impl CaptureSwitch {
    fn on(mut maps: ShadowMaps, counter_slot: u32, settings: ShadowSettings) -> Result<Self> {
        maps.set(counter_slot, &settings)?;
        Ok(Self { maps, counter_slot })
    }
}

impl Drop for CaptureSwitch {
    fn drop(&mut self) {
        if let Err(error) = self.maps.set(self.counter_slot, &ShadowSettings::default()) {
            log::error!("cannot turn shadow capture off: {error}");
        }
    }
}

struct HostControl {
    state: StateStore,
    record: ShadowRecord,
    key: ServiceKey,
    /// The service as last read, once a second.
    service: ServiceState,
    live: Color,
    idle: Color,
    maps: PinnedMaps,
    counts: ShadowMaps,
    /// The capture's counters before the run turned it on.
    counts_before: [u64; ShadowCount::COUNT as usize],
    unhealthy: Arc<Mutex<Option<String>>>,
    /// Capture on, until the run stops (or this is dropped).
    switch: Option<CaptureSwitch>,
}

impl Control for HostControl {
    fn backend(&mut self, hash: u32) -> Option<SocketAddr> {
        let pool = *self.service.pool(self.idle.wire());
        match self.maps.table_backend(&pool, hash) {
            Ok(backend) => backend.map(|backend| from_wire(self.key.family, &backend.endpoint)),
            Err(error) => {
                log::warn!("shadow: cannot pick an idle backend: {error}");
                None
            }
        }
    }

    fn check(&mut self) -> Option<StopReason> {
        if let Ok(Some(ShadowOrder::Stop { .. })) =
            self.state.load_shadow_order(&self.record.service)
        {
            return Some(StopReason::Requested);
        }
        if self
            .record
            .until_unix_ms
            .is_some_and(|until| unix_now_ms() >= until)
        {
            return Some(StopReason::DurationEnded);
        }
        match self.maps.service(&self.key) {
            Ok(Some(service)) => self.service = service,
            Ok(None) => return Some(StopReason::ServiceGone("it was removed".to_owned())),
            Err(error) => return Some(StopReason::ServiceGone(error.to_string())),
        }
        if Color::from_wire(self.service.active) != self.live {
            return Some(StopReason::Switched);
        }
        let unhealthy = self
            .unhealthy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        unhealthy.map(StopReason::IdleUnhealthy)
    }

    fn stop_capture(&mut self) {
        self.switch = None;
    }

    fn capture_counts(&mut self) -> BTreeMap<String, u64> {
        match self.counts.counts() {
            Ok(counts) => ShadowCount::ALL
                .iter()
                .map(|&what| {
                    let index = what as usize;
                    let since = counts[index].saturating_sub(self.counts_before[index]);
                    (what.name().to_owned(), since)
                })
                .collect(),
            Err(error) => {
                log::warn!("shadow: {error}");
                BTreeMap::new()
            }
        }
    }

    fn publish(&mut self, report: &ShadowReport) {
        self.record.report = report.clone();
        self.record.updated_unix_ms = unix_now_ms();
        if let Err(error) = self.state.save_shadow(&self.record.service, &self.record) {
            log::warn!("shadow: {error}");
        }
    }
}

/// Probes the idle color as the daemon probes the live one: a run stops
/// when the color it replays to turns unhealthy.
async fn watch_health(
    check: HealthCheck,
    backends: Vec<SocketAddr>,
    unhealthy: Arc<Mutex<Option<String>>>,
) {
    let mut tracker = HealthTracker::default();
    let check = Arc::new(check);
    loop {
        tokio::time::sleep(check.interval()).await;
        let probe = {
            let (check, backends) = (check.clone(), backends.clone());
            tokio::task::spawn_blocking(move || check.probe_pool(&backends)).await
        };
        let result = probe.unwrap_or_else(|error| Err(error.to_string()));
        if tracker.observe(&check, result) == Some(Health::Unhealthy) {
            *unhealthy
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = tracker.last_error.clone();
        }
    }
}
