//! The daemon's load watch over one service (`[service.load]`): scrape
//! every backend's queue depth each interval and give each color's table
//! weights that follow it, only when one moved materially.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::ControlFlow,
    time::Duration,
};

use bluegreen::{
    config::{BackendSpec, PoolSpec},
    endpoint::Color,
    host::{Host, ServiceView},
    load::{self, LoadCheck, changed_materially},
};

use super::periodic::Watch;
use crate::observations::Shared;

/// The load weight `backend`'s table has now: its full share in load units
/// until the daemon set one.
fn current(backend: &BackendSpec) -> u32 {
    backend.load_weight.unwrap_or(backend.weight * load::SCALE)
}

/// Scrapes every backend of both colors of one service every interval,
/// publishes queue depths and weights, and rebuilds a color's table when
/// some backend's load weight should change materially. A failed scrape
/// keeps that backend's weight.
#[derive(Default)]
pub(super) struct LoadWatch {
    /// Backends whose last scrape failed: logged once per failure streak.
    failing: BTreeSet<(Color, SocketAddr)>,
}

impl Watch for LoadWatch {
    type Settings = LoadCheck;

    fn settings(view: &ServiceView) -> Option<LoadCheck> {
        view.record.spec.load.clone()
    }

    fn interval(check: &LoadCheck) -> Duration {
        check.interval()
    }

    fn forget(name: &str, observations: &Shared) {
        observations
            .lock()
            .expect("observations lock")
            .retain_weighed(|service| service != name);
    }

    async fn round(
        &mut self,
        host: &Host,
        name: &str,
        view: &ServiceView,
        check: &LoadCheck,
        observations: &Shared,
    ) -> ControlFlow<()> {
        let name = name.to_owned();
        let failing = &mut self.failing;
        for color in Color::BOTH {
            let pool = view.pool(color).clone();
            let addrs: Vec<SocketAddr> = pool.addrs().collect();
            let scraper = check.clone();
            let scrapes = tokio::task::spawn_blocking(move || scraper.scrape_each(&addrs))
                .await
                .unwrap_or_else(|error| vec![Err(error.to_string()); pool.backends().len()]);
            let mut wanted = BTreeMap::new();
            {
                let mut observations = observations.lock().expect("observations lock");
                observations.load.retain(|(service, of, addr), _| {
                    *service != name || *of != color || pool.get(*addr).is_some()
                });
                for (backend, scrape) in pool.backends().iter().zip(scrapes) {
                    let key = (name.clone(), color, backend.addr);
                    let seen = observations.load.entry(key).or_default();
                    let weight = match scrape {
                        Ok(queue) => {
                            if failing.remove(&(color, backend.addr)) {
                                log::info!(
                                    "{name}: {color} backend {} scraped again",
                                    backend.addr
                                );
                            }
                            seen.queue_depth = Some(queue);
                            load::load_weight(backend.weight, queue)
                        }
                        Err(error) => {
                            if failing.insert((color, backend.addr)) {
                                log::warn!(
                                    "{name}: cannot read {color} backend {}'s load, keeping its weight: {error}",
                                    backend.addr
                                );
                            }
                            seen.scrape_errors += 1;
                            current(backend)
                        }
                    };
                    wanted.insert(backend.addr, weight);
                }
            }
            let unreadable: BTreeSet<SocketAddr> = failing
                .iter()
                .filter(|(of, _)| *of == color)
                .map(|(_, addr)| *addr)
                .collect();
            // The interface lock only when the table must change, or
            // whether a backend's load can be read (for `status`).
            let material = pool.backends().iter().any(|backend| {
                changed_materially(backend.weight, current(backend), wanted[&backend.addr])
                    || backend.load_unreadable != unreadable.contains(&backend.addr)
            });
            let table = if material {
                apply(host, &name, color, wanted, unreadable).await
            } else {
                None
            };
            // What the table holds now, not what the daemon wanted.
            let table = table.unwrap_or(pool);
            let mut observations = observations.lock().expect("observations lock");
            for backend in table.backends() {
                if let Some(seen) = observations
                    .load
                    .get_mut(&(name.clone(), color, backend.addr))
                {
                    seen.effective_weight = if backend.effective_weight() == 0 {
                        0
                    } else {
                        current(backend)
                    };
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Rebuilds `color`'s table with the `wanted` load weights, and records
/// which backends' loads are `unreadable`; the pool written, or `None` when
/// nothing was (already so, or it failed: logged).
async fn apply(
    host: &Host,
    name: &str,
    color: Color,
    wanted: BTreeMap<SocketAddr, u32>,
    unreadable: BTreeSet<SocketAddr>,
) -> Option<PoolSpec> {
    let (host, service) = (host.clone(), name.to_owned());
    let applied = tokio::task::spawn_blocking(move || {
        host.apply_runtime(&service, color, |pool| {
            // A backend added since the scrape keeps what it has.
            pool.with_load(
                |backend| wanted.get(&backend.addr).copied().or(backend.load_weight),
                |backend| unreadable.contains(&backend.addr),
            )
        })
    })
    .await;
    match applied {
        Ok(Ok(Some(pool))) => {
            log::info!("{name}: {color} weighed by load: {pool}");
            Some(pool)
        }
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            log::error!("{name}: cannot apply {color}'s load weights: {error}");
            None
        }
        Err(error) => {
            log::error!("{name}: applying {color}'s load weights failed: {error}");
            None
        }
    }
}
