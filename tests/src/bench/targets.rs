//! Targets judged against measurements: met or missed, and by how much.

use serde::Serialize;

/// One target, judged.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
    /// How far inside (met) or outside (missed) the limit, in percent of it.
    pub margin: String,
}

/// `measured` against an upper `limit`, both in `unit`.
pub fn at_most(what: String, limit: f64, measured: f64, unit: &str) -> Target {
    let (target, shown) = (
        format!("<= {}{unit}", number(limit)),
        format!("{}{unit}", number(measured)),
    );
    judged(
        what,
        target,
        shown,
        measured <= limit,
        measured / limit - 1.0,
    )
}

/// `measured` against a lower `limit`, both in `unit`.
pub fn at_least(what: String, limit: f64, measured: f64, unit: &str) -> Target {
    let (target, shown) = (
        format!(">= {}{unit}", number(limit)),
        format!("{}{unit}", number(measured)),
    );
    judged(
        what,
        target,
        shown,
        measured >= limit,
        1.0 - measured / limit,
    )
}

fn judged(what: String, target: String, measured: String, met: bool, excess: f64) -> Target {
    let margin = if met {
        format!("met, {:.1} % to spare", -excess * 100.0)
    } else {
        format!("missed by {:.1} %", excess * 100.0)
    };
    Target {
        what,
        target,
        measured,
        met,
        margin,
    }
}

/// Three significant digits or so: enough that a value just outside a
/// limit never prints as equal to it.
fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
