//! The flow and reply tables as userspace reads them, and the one change
//! it makes to them: moving the flows of a backend that left its pool.

use bluegreen_common::{Endpoint, FlowEntry, FlowKey, Pool, PoolBackend, ServiceKey};

use aya::maps::MapError;

use super::{PinnedMaps, maps::BPF_EXIST};
use crate::error::{Error, Result};

impl PinnedMaps {
    /// Every flow entry; one evicted between listing its key and reading it
    /// is simply gone.
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, FlowEntry)> + '_ {
        self.flows.iter().filter_map(|entry| entry.ok())
    }

    /// Moves the live flows of `service` that the kernel keeps on `gone`
    /// (flows of `color` recorded under `generation`; older ones follow a
    /// forced switch on their next packet anyway) to the backend `pool`
    /// gives their hash, rewriting their reply entries too; returns how
    /// many moved. The kernel never re-picks the backend of a flow it
    /// knows, so without this they would keep reaching `gone`. With no
    /// backend left to take them, their entries are deleted: their next
    /// packet is then handled as a flow the table does not know.
    pub fn rebind_flows(
        &mut self,
        service: &ServiceKey,
        color: u8,
        generation: u32,
        gone: &Endpoint,
        pool: &Pool,
    ) -> Result<u64> {
        let stuck: Vec<(FlowKey, FlowEntry)> = self
            .flows()
            .filter(|(key, entry)| {
                key.service_key() == *service
                    && entry.backend == *gone
                    && entry.color == color
                    && entry.generation == generation
            })
            .collect();
        const WRITE: &str = "cannot rebind a flow of a removed backend";
        for (key, _) in &stuck {
            // Read again: the kernel may have moved on since the listing (a
            // newer last_seen, a FIN) or evicted the flow; a stale copy
            // written back would undo that.
            let Ok(current) = self.flows.get(key, 0) else {
                continue;
            };
            if current.backend != *gone {
                continue;
            }
            let reply = |backend: &Endpoint| FlowKey {
                server: backend.addr,
                server_port: backend.port,
                ..*key
            };
            // Already gone is fine: it may have been evicted meanwhile.
            let _ = self.replies.remove(&reply(gone));
            match self.table_backend(pool, bluegreen_common::flow_hash(key))? {
                Some(PoolBackend {
                    endpoint: backend,
                    counter_slot,
                }) => {
                    let vip = Endpoint {
                        addr: key.server,
                        port: key.server_port,
                        reserved: [0; 2],
                    };
                    // The reply entry first: the moved flow's first answer
                    // must already find its way back to the VIP.
                    self.replies
                        .insert(reply(&backend), vip, 0)
                        .map_err(Error::ebpf(WRITE))?;
                    // Only over the entry still there: never bring back one
                    // the table evicted in between.
                    match self.flows.insert(
                        key,
                        FlowEntry {
                            backend,
                            backend_counter_slot: counter_slot,
                            ..current
                        },
                        BPF_EXIST,
                    ) {
                        Ok(()) => {}
                        Err(MapError::SyscallError(error))
                            if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(error) => return Err(Error::ebpf(WRITE)(error)),
                    }
                }
                None => {
                    let _ = self.flows.remove(key);
                }
            }
        }
        Ok(stuck.len() as u64)
    }
}
