//! Typed handles on an instance's pinned maps, and the only code that
//! writes them: each method keeps the kernel contract (write order, which
//! words change) so that callers cannot get it wrong.

use std::collections::BTreeMap;

use aya::maps::{
    Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use bluegreen_common::{
    BackendKey, ChangeCause, Endpoint, FlowEntry, FlowKey, LocalSettings, LocalSocket,
    LocalSocketKey, MaglevChunk, PREVIEW_FIXED_BITS, PassReason, PoolBackend, PreviewPrefix,
    ServiceKey, ServiceState, Settings, SwitchCounters, Timeouts, TrafficCounters, bitmap_position,
    map_names, traffic_index, vip_filter_bit,
};

use super::{PinLayout, contract::open_map};
use crate::{
    endpoint::{Cidr, Color, from_wire},
    error::{Error, Result},
};

/// `BPF_EXIST`: update only, so a concurrent `down` cannot be undone.
pub(super) const BPF_EXIST: u64 = 2;

pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceState>,
    pub(super) flows: HashMap<MapData, FlowKey, FlowEntry>,
    backend_vips: HashMap<MapData, BackendKey, Endpoint>,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    backend_traffic: PerCpuArray<MapData, TrafficCounters>,
    passed: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    vip_ports: Array<MapData, u32>,
    vip_filter: Array<MapData, u32>,
    generations: Array<MapData, u32>,
    preview: LpmTrie<MapData, PreviewPrefix, u8>,
    pub(super) maglev: Array<MapData, MaglevChunk>,
    pub(super) backends: Array<MapData, PoolBackend>,
    /// `None` when its pin was removed by hand (no program uses the map,
    /// so nothing can re-pin it) or holds an older layout: switching must
    /// not depend on a counter; the next `up` creates it afresh, or
    /// carries the older one over.
    switches: Option<Array<MapData, SwitchCounters>>,
    local: Array<MapData, LocalSettings>,
    local_sockets: HashMap<MapData, LocalSocketKey, LocalSocket>,
}

/// Whether [`PinnedMaps::put_service`] may create the service or only
/// replace it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    CreateOrReplace,
    /// A switch: if `down` removed the service meanwhile, fail rather than
    /// bring it back.
    ReplaceOnly,
}

/// The trie key of one service's preview prefix.
pub fn preview_key(counter_slot: u32, cidr: &Cidr) -> Key<PreviewPrefix> {
    Key::new(
        PREVIEW_FIXED_BITS + u32::from(cidr.len),
        PreviewPrefix {
            slot: counter_slot.to_be_bytes(),
            family: cidr.wire_family(),
            reserved: [0; 3],
            addr: cidr.wire_addr(),
        },
    )
}

impl PinnedMaps {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        if !layout.has_pins() {
            return Err(Error::NotUpOn {
                iface: layout.iface().to_owned(),
            });
        }
        // The switch counters only count: without their pin a command
        // still works (uncounted) until `up` creates them again. The
        // shadow maps are shadowing's own (see `map_names::SHADOW_MAPS`).
        if let Some(name) = map_names::ALL
            .iter()
            .filter(|name| **name != map_names::SWITCHES && !map_names::SHADOW_MAPS.contains(name))
            .find(|name| !layout.map(name).exists())
        {
            return Err(Error::MapPinMissing {
                path: layout.map(name),
                iface: layout.iface().to_owned(),
            });
        }
        Ok(Self {
            services: open_map(layout, map_names::SERVICES)?,
            flows: open_map(layout, map_names::FLOWS)?,
            backend_vips: open_map(layout, map_names::BACKEND_VIPS)?,
            traffic: open_map(layout, map_names::TRAFFIC)?,
            backend_traffic: open_map(layout, map_names::BACKEND_TRAFFIC)?,
            passed: open_map(layout, map_names::PASSED)?,
            settings: open_map(layout, map_names::SETTINGS)?,
            vip_ports: open_map(layout, map_names::VIP_PORTS)?,
            vip_filter: open_map(layout, map_names::VIP_FILTER)?,
            generations: open_map(layout, map_names::GENERATIONS)?,
            preview: open_map(layout, map_names::PREVIEW)?,
            maglev: open_map(layout, map_names::MAGLEV)?,
            backends: open_map(layout, map_names::BACKENDS)?,
            switches: if layout.map(map_names::SWITCHES).exists()
                && !layout.holds_older_switch_counters()
            {
                Some(open_map(layout, map_names::SWITCHES)?)
            } else {
                None
            },
            local: open_map(layout, map_names::LOCAL)?,
            local_sockets: open_map(layout, map_names::LOCAL_SOCKETS)?,
        })
    }

    pub fn local_settings(&self) -> Result<LocalSettings> {
        self.local
            .get(&0, 0)
            .map_err(Error::ebpf("cannot read the local-client settings"))
    }

    /// Written before the cgroup programs attach; a zero netns cookie
    /// turns them into no-ops (`--no-local`).
    pub fn set_local_settings(&mut self, settings: &LocalSettings) -> Result<()> {
        self.local
            .set(0, settings, 0)
            .map_err(Error::ebpf("cannot write the local-client settings"))
    }

    /// The local-socket entry of a socket and the backend it is connected
    /// to, if the cgroup programs sent it there.
    pub fn local_socket(&self, key: &LocalSocketKey) -> Result<Option<LocalSocket>> {
        match self.local_sockets.get(key, 0) {
            Ok(socket) => Ok(Some(socket)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(Error::ebpf("cannot read the local-socket map")(error)),
        }
    }

    pub fn service(&self, key: &ServiceKey) -> Result<Option<ServiceState>> {
        match self.services.get(key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(Error::ebpf("cannot read the services map")(error)),
        }
    }

    /// The services of the instance on `layout`, from its services map
    /// alone: enough to tell which VIPs it serves without opening the
    /// rest.
    pub fn services_of(layout: &PinLayout) -> Result<Vec<ServiceKey>> {
        let services: HashMap<MapData, ServiceKey, ServiceState> =
            open_map(layout, map_names::SERVICES)?;
        services
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::ebpf("cannot read the services map"))
    }

    pub fn services(&self) -> Result<BTreeMap<ServiceKey, ServiceState>> {
        self.services
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::ebpf("cannot read the services map"))
    }

    /// Writes one service whole (a packet sees the old state or the new,
    /// never a mix). Its generation is mirrored first, so that a flow
    /// recorded under the new state finds its generation on the fast path
    /// at once; a mirror briefly ahead only sends packets to the services
    /// map, which decides.
    pub fn put_service(&mut self, key: &ServiceKey, state: &ServiceState, put: Put) -> Result<()> {
        if self.generation(state.counter_slot)? != state.generation {
            self.set_generation(state.counter_slot, state.generation)?;
        }
        if put == Put::CreateOrReplace && self.service(key)?.as_ref() == Some(state) {
            return Ok(());
        }
        let flags = match put {
            Put::CreateOrReplace => 0,
            Put::ReplaceOnly => BPF_EXIST,
        };
        self.services
            .insert(key, state, flags)
            .map_err(Error::ebpf("cannot write the services map"))
    }

    /// Removes a service, its preview prefixes, its backends' VIP and (by
    /// moving its generation on) the fast path of its flows, which then
    /// find no service and pass untouched.
    pub fn remove_service(&mut self, key: &ServiceKey, state: &ServiceState) -> Result<()> {
        self.set_preview(state.counter_slot, &[])?;
        self.services
            .remove(key)
            .map_err(Error::ebpf("cannot remove a service"))?;
        self.set_generation(state.counter_slot, state.generation.wrapping_add(1))?;
        self.unmap_backends(key)
    }

    /// Names `service`'s VIP as the one `backends` answer for, so that the
    /// egress program restores it on their replies.
    pub(super) fn map_backends(
        &mut self,
        service: &ServiceKey,
        backends: &[PoolBackend],
    ) -> Result<()> {
        let vip = vip_endpoint(service);
        let mut pruned = false;
        for backend in backends {
            let key = backend_key(service, &backend.endpoint);
            loop {
                match self.backend_vips.insert(key, vip, 0) {
                    Ok(()) => break,
                    // Full of backends that left their pools: forget those
                    // no flow uses any more, once, and try again.
                    Err(MapError::SyscallError(error))
                        if !pruned && error.io_error.raw_os_error() == Some(libc::E2BIG) =>
                    {
                        self.prune_backend_vips()?;
                        pruned = true;
                    }
                    Err(error) => {
                        return Err(Error::ebpf("cannot write the backends' VIPs")(error));
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets the VIP of every backend that is in no live pool and that no
    /// flow uses: what a long-lived service whose backends come and go
    /// leaves behind.
    fn prune_backend_vips(&mut self) -> Result<()> {
        let mut needed = std::collections::BTreeSet::new();
        for (service, state) in self.services()? {
            for pool in &state.pools {
                for backend in self.pool_backends(pool)? {
                    needed.insert(backend_key(&service, &backend.endpoint));
                }
            }
        }
        for (key, entry) in self.flows() {
            needed.insert(backend_key(&key.service_key(), &entry.backend));
        }
        let stale: Vec<BackendKey> = self
            .backend_vips
            .keys()
            .filter_map(|key| key.ok())
            .filter(|key| !needed.contains(key))
            .collect();
        log::info!(
            "the backends' VIP map is full: forgetting {} backend(s) no pool or flow uses",
            stale.len()
        );
        for key in stale {
            match self.backend_vips.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(Error::ebpf("cannot remove a backend's VIP")(error)),
            }
        }
        Ok(())
    }

    /// Forgets every backend `service` ever had, those that left its pools
    /// while they still had flows included.
    fn unmap_backends(&mut self, service: &ServiceKey) -> Result<()> {
        let vip = vip_endpoint(service);
        let gone: Vec<BackendKey> = self
            .backend_vips
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(key, answers_for)| {
                *answers_for == vip && key.proto == service.proto && key.family == service.family
            })
            .map(|(key, _)| key)
            .collect();
        for key in gone {
            match self.backend_vips.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(Error::ebpf("cannot remove a backend's VIP")(error)),
            }
        }
        Ok(())
    }

    /// The generation the fast path sees for a counter slot.
    pub fn generation(&self, counter_slot: u32) -> Result<u32> {
        self.generations
            .get(&counter_slot, 0)
            .map_err(Error::ebpf("cannot read the generations map"))
    }

    fn set_generation(&mut self, counter_slot: u32, generation: u32) -> Result<()> {
        self.generations
            .set(counter_slot, generation, 0)
            .map_err(Error::ebpf("cannot write the generations map"))
    }

    /// Makes the prefilters hold the bits `wanted` needs (ports, and VIP
    /// and port pairs) and no bit that only `previous` needed: every word
    /// either set touches is rewritten from `wanted`, so a word left stale
    /// by an interrupted update is repaired too. One syscall per such word,
    /// not one per word of the filters (the VIP filter has 32,768).
    pub fn set_filters(&mut self, previous: &[ServiceKey], wanted: &[ServiceKey]) -> Result<()> {
        let port_bit = |key: &ServiceKey| u32::from(u16::from_be_bytes(key.port));
        let vip_bit = |key: &ServiceKey| vip_filter_bit(&key.vip, key.port);
        for (filter, bit) in [
            (
                &mut self.vip_ports,
                &port_bit as &dyn Fn(&ServiceKey) -> u32,
            ),
            (&mut self.vip_filter, &vip_bit),
        ] {
            let mut words: BTreeMap<u32, u32> = previous
                .iter()
                .map(|key| (bitmap_position(bit(key)).0, 0))
                .collect();
            for key in wanted {
                let (word, mask) = bitmap_position(bit(key));
                *words.entry(word).or_default() |= mask;
            }
            for (index, word) in words {
                filter
                    .set(index, word, 0)
                    .map_err(Error::ebpf("cannot write a prefilter"))?;
            }
        }
        Ok(())
    }

    /// Replaces the preview prefixes of one service (slot) with `prefixes`:
    /// new ones first, so a prefix kept across the change never disappears.
    pub fn set_preview(&mut self, counter_slot: u32, prefixes: &[Cidr]) -> Result<()> {
        let stale: Vec<Key<PreviewPrefix>> = self
            .preview
            .keys()
            .filter_map(|key| key.ok())
            .filter(|key| key.data().slot == counter_slot.to_be_bytes())
            .collect();
        let wanted: Vec<Key<PreviewPrefix>> = prefixes
            .iter()
            .map(|cidr| preview_key(counter_slot, cidr))
            .collect();
        for key in &wanted {
            self.preview
                .insert(key, 1, 0)
                .map_err(Error::ebpf("cannot write the preview prefixes"))?;
        }
        let same = |a: &Key<PreviewPrefix>, b: &Key<PreviewPrefix>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for key in stale
            .iter()
            .filter(|key| !wanted.iter().any(|w| same(w, key)))
        {
            self.preview
                .remove(key)
                .map_err(Error::ebpf("cannot remove a preview prefix"))?;
        }
        Ok(())
    }

    /// The preview prefixes of one service (slot), in order, as the trie
    /// holds them: what steers clients, whatever the state file says.
    pub fn preview(&self, counter_slot: u32) -> Result<Vec<Cidr>> {
        let mut prefixes = Vec::new();
        for key in self.preview.keys() {
            let key = key.map_err(Error::ebpf("cannot read the preview prefixes"))?;
            let prefix = key.data();
            if prefix.slot != counter_slot.to_be_bytes() {
                continue;
            }
            let endpoint = Endpoint {
                addr: prefix.addr,
                port: [0; 2],
                reserved: [0; 2],
            };
            prefixes.push(Cidr {
                addr: from_wire(prefix.family, &endpoint).ip(),
                len: (key.prefix_len() - PREVIEW_FIXED_BITS) as u8,
            });
        }
        prefixes.sort();
        Ok(prefixes)
    }

    /// Zeroes the traffic counters (both colors) and the switch counters
    /// of a counter slot, for a service that takes over a slot another one
    /// used.
    pub fn reset_counters(&mut self, counter_slot: u32) -> Result<()> {
        self.set_switch_counters(counter_slot, SwitchCounters::default())?;
        for color in Color::BOTH {
            zero_traffic(&mut self.traffic, traffic_index(counter_slot, color.wire()))?;
        }
        Ok(())
    }

    /// Zeroes a backend counter slot, for a backend that takes over a slot
    /// another one used.
    pub(super) fn reset_backend_traffic(&mut self, counter_slot: u32) -> Result<()> {
        zero_traffic(&mut self.backend_traffic, counter_slot)
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(Error::ebpf("cannot read the settings map"))
    }

    /// Writes the timeouts in the dataplane's unit (jiffies), keeping the
    /// kernel's HZ as an earlier loader measured it.
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()> {
        let pinned = self.settings()?.jiffies_per_second;
        let hz = if pinned != 0 {
            pinned
        } else {
            crate::clock::jiffies_per_second()?
        };
        self.settings
            .set(0, Settings::new(timeouts, hz), 0)
            .map_err(Error::ebpf("cannot write the settings map"))
    }

    /// One service's traffic on one color, summed over all CPUs.
    pub fn traffic(&self, counter_slot: u32, color: u8) -> Result<TrafficCounters> {
        summed_traffic(&self.traffic, traffic_index(counter_slot, color))
    }

    /// One backend's traffic ([`PoolBackend::counter_slot`]), summed over
    /// all CPUs.
    pub fn backend_traffic(&self, counter_slot: u32) -> Result<TrafficCounters> {
        summed_traffic(&self.backend_traffic, counter_slot)
    }

    pub fn passed(&self, reason: PassReason) -> Result<u64> {
        let per_cpu = self
            .passed
            .get(&(reason as u32), 0)
            .map_err(Error::ebpf("cannot read pass counters"))?;
        Ok(per_cpu.iter().sum())
    }

    /// One service's switches and rollbacks (all zero while the map is
    /// missing).
    pub fn switch_counters(&self, counter_slot: u32) -> Result<SwitchCounters> {
        let Some(switches) = &self.switches else {
            return Ok(SwitchCounters::default());
        };
        switches
            .get(&counter_slot, 0)
            .map_err(Error::ebpf("cannot read the switch counters"))
    }

    /// Counts one committed change of a service's colors. The caller holds
    /// the interface lock, so the read and the write cannot interleave with
    /// another writer's.
    pub fn count_change(
        &mut self,
        counter_slot: u32,
        cause: ChangeCause,
        switched: bool,
        rolled_back: bool,
    ) -> Result<()> {
        let mut counters = self.switch_counters(counter_slot)?;
        counters.count(cause, switched, rolled_back);
        self.set_switch_counters(counter_slot, counters)
    }

    pub(super) fn set_switch_counters(
        &mut self,
        counter_slot: u32,
        counters: SwitchCounters,
    ) -> Result<()> {
        match &mut self.switches {
            Some(switches) => switches
                .set(counter_slot, counters, 0)
                .map_err(Error::ebpf("cannot write the switch counters")),
            None => Ok(()),
        }
    }
}

fn summed_traffic(
    map: &PerCpuArray<MapData, TrafficCounters>,
    index: u32,
) -> Result<TrafficCounters> {
    let per_cpu = map
        .get(&index, 0)
        .map_err(Error::ebpf("cannot read traffic counters"))?;
    Ok(per_cpu
        .iter()
        .fold(TrafficCounters::default(), |sum, cpu| TrafficCounters {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
            new_flows: sum.new_flows + cpu.new_flows,
        }))
}

fn zero_traffic(map: &mut PerCpuArray<MapData, TrafficCounters>, index: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, error)| Error::Io {
        action: format!("cannot count CPUs ({what})"),
        source: error,
    })?;
    let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])
        .map_err(Error::ebpf("cannot size per-CPU counters"))?;
    map.set(index, zeros, 0)
        .map_err(Error::ebpf("cannot reset traffic counters"))
}

fn vip_endpoint(service: &ServiceKey) -> Endpoint {
    Endpoint {
        addr: service.vip,
        port: service.port,
        reserved: [0; 2],
    }
}

fn backend_key(service: &ServiceKey, backend: &Endpoint) -> BackendKey {
    BackendKey {
        addr: backend.addr,
        port: backend.port,
        proto: service.proto,
        family: service.family,
    }
}
