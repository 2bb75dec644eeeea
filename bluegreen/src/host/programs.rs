//! The XDP and TC programs: verified, attached through pinned links, and
//! replaced in place on a hot upgrade (or attached afresh where a link was
//! lost).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use bluegreen_common::program_names;

use crate::{
    config::RequestedXdpMode,
    error::{Error, Result},
    pinned::{LinkState, PinLayout},
};

/// How the state file and `status` name a mode.
pub(super) fn mode_name(mode: RequestedXdpMode) -> &'static str {
    match mode {
        RequestedXdpMode::Auto => "auto",
        RequestedXdpMode::Native => "native",
        RequestedXdpMode::Skb => "skb",
    }
}

/// The XDP and TC programs, loaded into the kernel (verified).
fn load(ebpf: &mut Ebpf) -> Result<(&mut Xdp, &mut SchedClassifier)> {
    let mut xdp = None;
    let mut tc = None;
    for (name, program) in ebpf.programs_mut() {
        match name {
            program_names::INGRESS => xdp = Some(program),
            program_names::EGRESS => tc = Some(program),
            _ => {}
        }
    }
    let missing = |name: &str| Error::Ebpf {
        action: format!("the eBPF object has no program {name}"),
        source: "object built from another version".into(),
    };
    let xdp: &mut Xdp = xdp
        .ok_or_else(|| missing(program_names::INGRESS))?
        .try_into()
        .map_err(Error::ebpf("ingress program is not XDP"))?;
    let tc: &mut SchedClassifier = tc
        .ok_or_else(|| missing(program_names::EGRESS))?
        .try_into()
        .map_err(Error::ebpf("egress program is not a classifier"))?;
    xdp.load()
        .map_err(Error::ebpf("the kernel refused the XDP program"))?;
    tc.load()
        .map_err(Error::ebpf("the kernel refused the TC program"))?;
    Ok((xdp, tc))
}

/// Pins an attachment's link at `path`, so it outlives this process;
/// `not_a_link` says why an attachment without a `bpf_link` cannot be used.
fn pin_link<L>(link: L, path: &Path, not_a_link: &str) -> Result<()>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
{
    let link = FdLink::try_from(link).map_err(Error::ebpf(not_a_link))?;
    link.pin(path)
        .map_err(Error::ebpf(format!("cannot pin {}", path.display())))?;
    Ok(())
}

/// Attaches XDP in `mode` and returns the mode it is attached in: `auto`
/// tries the driver's hook first and falls back to the generic one, so the
/// answer comes from what the kernel accepted.
fn attach_xdp(
    xdp: &mut Xdp,
    layout: &PinLayout,
    mode: RequestedXdpMode,
) -> Result<RequestedXdpMode> {
    let iface = layout.iface();
    let attempts: &[RequestedXdpMode] = match mode {
        RequestedXdpMode::Auto => &[RequestedXdpMode::Native, RequestedXdpMode::Skb],
        chosen => &[chosen][..],
    };
    let mut last_error = None;
    for &attempt in attempts {
        let flags = match attempt {
            RequestedXdpMode::Native => XdpMode::Driver,
            _ => XdpMode::Skb,
        };
        match xdp.attach(iface, flags) {
            Ok(id) => {
                let link = xdp
                    .take_link(id)
                    .map_err(Error::ebpf("cannot take the XDP link"))?;
                pin_link(
                    link,
                    &layout.xdp_link(),
                    "the kernel attached XDP without a bpf_link, which cannot outlive this process",
                )?;
                return Ok(attempt);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(Error::ebpf(format!(
        "cannot attach XDP to {iface} (another XDP program may be attached; bluegreen never replaces one it did not attach)"
    ))(last_error.expect("at least one attempt")))
}

fn attach_tc(tc: &mut SchedClassifier, layout: &PinLayout) -> Result<()> {
    let tc_id = tc
        .attach(layout.iface(), TcAttachType::Egress)
        .map_err(Error::ebpf(format!(
            "cannot attach TC egress to {}",
            layout.iface()
        )))?;
    let tc_link = tc
        .take_link(tc_id)
        .map_err(Error::ebpf("cannot take the TC link"))?;
    pin_link(
        tc_link,
        &layout.tc_link(),
        "TC was attached without a TCX link (kernel older than 6.6?)",
    )
}

fn pinned(path: PathBuf) -> Result<FdLink> {
    PinnedLink::from_pin(&path)
        .map(FdLink::from)
        .map_err(Error::ebpf(format!(
            "cannot open pinned link {}",
            path.display()
        )))
}

/// Loads the XDP and TC programs, then, for each, swaps it in behind its
/// pinned link where that link is attached (one `bpf_link_update`: packets
/// keep flowing through either the old or the new program), or attaches it
/// afresh, pinning its link beside the maps so it stays attached when this
/// process exits. A severed link's pin must be gone first. Returns the XDP
/// mode when XDP was attached afresh.
pub(super) fn install(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    mode: RequestedXdpMode,
    [xdp_link, tc_link]: [LinkState; 2],
) -> Result<Option<&'static str>> {
    let (xdp, tc) = load(ebpf)?;
    let fresh_mode = if xdp_link == LinkState::Attached {
        let link = XdpLink::try_from(pinned(layout.xdp_link())?)
            .map_err(Error::ebpf("pinned XDP link is not an XDP link"))?;
        xdp.attach_to_link(link)
            .map_err(Error::ebpf("cannot replace the XDP program"))?;
        None
    } else {
        Some(mode_name(attach_xdp(xdp, layout, mode)?))
    };
    if tc_link == LinkState::Attached {
        let link = SchedClassifierLink::try_from(pinned(layout.tc_link())?)
            .map_err(Error::ebpf("pinned TC link is not a TCX link"))?;
        tc.attach_to_link(link)
            .map_err(Error::ebpf("cannot replace the TC program"))?;
    } else {
        attach_tc(tc, layout)?;
    }
    Ok(fresh_mode)
}
