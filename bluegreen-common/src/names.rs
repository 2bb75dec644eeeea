//! The names userspace finds the programs and maps by, in the object and
//! in bpffs: both sides must spell them alike.

/// Map names, as declared in the eBPF object and pinned in bpffs.
pub mod map_names {
    pub const SERVICES: &str = "BG_SERVICES";
    pub const FLOWS: &str = "BG_FLOWS";
    pub const BACKEND_VIPS: &str = "BG_BACKEND_VIPS";
    pub const TRAFFIC: &str = "BG_TRAFFIC";
    pub const PASSED: &str = "BG_PASSED";
    pub const SETTINGS: &str = "BG_SETTINGS";
    pub const VIP_PORTS: &str = "BG_VIP_PORTS";
    pub const VIP_FILTER: &str = "BG_VIP_FILTER";
    pub const GENERATIONS: &str = "BG_GENERATIONS";
    pub const PREVIEW: &str = "BG_PREVIEW";
    pub const MAGLEV: &str = "BG_MAGLEV";
    pub const BACKENDS: &str = "BG_BACKENDS";
    pub const SWITCHES: &str = "BG_SWITCHES";
    pub const BACKEND_TRAFFIC: &str = "BG_BACKEND_TRAFFIC";
    pub const LOCAL: &str = "BG_LOCAL";
    pub const LOCAL_SOCKETS: &str = "BG_LOCAL_SOCKS";
    pub const SHADOW: &str = "BG_SHADOW";
    pub const SHADOW_FLOWS: &str = "BG_SHADOW_FLOWS";
    pub const SHADOW_RING: &str = "BG_SHADOW_RING";
    pub const SHADOW_COUNTS: &str = "BG_SHADOW_COUNTS";
    /// Opened only by shadowing, never by the commands that steer traffic:
    /// pins of a version before shadowing lack them until the next `up`,
    /// and switching must not wait for that.
    pub const SHADOW_MAPS: [&str; 4] = [SHADOW, SHADOW_FLOWS, SHADOW_RING, SHADOW_COUNTS];
    pub const ALL: [&str; 20] = [
        SERVICES,
        FLOWS,
        BACKEND_VIPS,
        TRAFFIC,
        PASSED,
        SETTINGS,
        VIP_PORTS,
        VIP_FILTER,
        GENERATIONS,
        PREVIEW,
        MAGLEV,
        BACKENDS,
        SWITCHES,
        BACKEND_TRAFFIC,
        LOCAL,
        LOCAL_SOCKETS,
        SHADOW,
        SHADOW_FLOWS,
        SHADOW_RING,
        SHADOW_COUNTS,
    ];
}

/// Program names, as declared in the eBPF object.
pub mod program_names {
    pub const INGRESS: &str = "bluegreen_ingress";
    pub const EGRESS: &str = "bluegreen_egress";
    /// In its own object (`bluegreen-clock`): stores `bpf_jiffies64()`.
    pub const CLOCK: &str = "bluegreen_clock";
    /// The cgroup socket-address programs for host-local clients, with the
    /// attach point each is built for (one program per hook).
    pub const CONNECT4: &str = "bluegreen_connect4";
    pub const CONNECT6: &str = "bluegreen_connect6";
    pub const SENDMSG4: &str = "bluegreen_sendmsg4";
    pub const SENDMSG6: &str = "bluegreen_sendmsg6";
    pub const RECVMSG4: &str = "bluegreen_recvmsg4";
    pub const RECVMSG6: &str = "bluegreen_recvmsg6";
    pub const GETPEERNAME4: &str = "bluegreen_getpeername4";
    pub const GETPEERNAME6: &str = "bluegreen_getpeername6";
    pub const LOCAL: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}
