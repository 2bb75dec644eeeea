//! The fleet's decisions: who applied, who refused, what a switch and a
//! rollback write, and what a first change restores.

use super::*;

fn desired(color: Color, weight: u8, previous: Color) -> DesiredState {
    DesiredState {
        color,
        weight,
        force_epoch: 0,
        previous,
        by: "ops@desk".to_owned(),
        at_unix_ms: 1,
    }
}

fn record(host: &str, services: &[(&str, Color, u8, i64, Option<&str>)]) -> HostRecord {
    HostRecord {
        schema_version: FLEET_SCHEMA_VERSION,
        host: host.to_owned(),
        services: services
            .iter()
            .map(|&(name, color, weight, revision, refused)| {
                (
                    name.to_owned(),
                    AppliedService {
                        color,
                        weight,
                        force_epoch: 0,
                        revision,
                        refused: refused.map(str::to_owned),
                        health: ColorHealth::default(),
                        last_error: refused.map(str::to_owned),
                        drift: None,
                    },
                )
            })
            .collect(),
        updated_unix_ms: 1,
    }
}

#[test]
fn keys_sit_below_the_prefix_one_separator_each() {
    let keys = Keys::new("/prod/bg");
    assert_eq!(keys.service("web"), "/prod/bg/v1/services/web");
    assert_eq!(keys.host("h1"), "/prod/bg/v1/hosts/h1");
    assert_eq!(keys.change("web"), "/prod/bg/v1/changes/web");
    assert!(keys.service("web").starts_with(&keys.services()));
}

#[test]
fn progress_sorts_hosts_by_what_they_did_with_the_revision() {
    let hosts = [
        record("h1", &[("web", Color::Green, 0, 7, None)]),
        record("h2", &[("web", Color::Blue, 0, 7, Some("green failed"))]),
        record("h3", &[("web", Color::Blue, 0, 5, None)]),
        // Acted on a later revision: another change took over.
        record("h4", &[("web", Color::Blue, 0, 9, None)]),
        // Does not serve web: not waited for.
        record("h5", &[("chat", Color::Blue, 0, 0, None)]),
    ];
    let progress = progress("web", 7, &hosts);
    assert_eq!(progress.applied, ["h1"]);
    assert_eq!(
        progress.refused,
        [("h2".to_owned(), "green failed".to_owned())]
    );
    assert_eq!(progress.pending, ["h3", "h4"]);
    assert!(!progress.is_settled());

    let settled = super::progress("web", 7, &hosts[..2]);
    assert!(settled.is_settled());
    assert!(!settled.is_converged(), "a refusal is not convergence");
    assert!(super::progress("web", 7, &hosts[..1]).is_converged());
    assert!(
        super::progress("web", 7, &[]).is_converged(),
        "no live host: nothing to wait for"
    );
}

#[test]
fn a_switch_remembers_what_served_before_and_counts_forces() {
    let blue = desired(Color::Blue, 100, Color::Blue);
    let split = DesiredState::next(&blue, Color::Green, 10, false, "a".into(), 2);
    assert_eq!(split.previous, Color::Blue);
    assert_eq!(split.serving(), Color::Blue, "a split keeps blue active");
    let green = DesiredState::next(&split, Color::Green, 100, true, "a".into(), 3);
    assert_eq!(green.previous, Color::Blue);
    assert_eq!(green.force_epoch, 1);
    assert_eq!(green.serving(), Color::Green);
}

#[test]
fn rollback_returns_to_the_previous_color_or_ends_a_split() {
    let green = desired(Color::Green, 100, Color::Blue);
    let back = green.rollback(false, "a".into(), 2).expect("green -> blue");
    assert_eq!(
        (back.color, back.weight, back.previous),
        (Color::Blue, 100, Color::Green)
    );

    let split = desired(Color::Green, 10, Color::Blue);
    let ended = split.rollback(false, "a".into(), 2).expect("split ended");
    assert_eq!((ended.color, ended.weight), (Color::Blue, 100));

    let never_switched = desired(Color::Blue, 100, Color::Blue);
    assert_eq!(never_switched.rollback(false, "a".into(), 2), None);
}

#[test]
fn desired_states_are_met_in_the_dataplanes_terms() {
    let green = desired(Color::Green, 100, Color::Blue);
    assert!(green.is_met_by(Color::Green, 0));
    assert!(!green.is_met_by(Color::Green, 20));
    assert!(!green.is_met_by(Color::Blue, 0));
    let split = desired(Color::Green, 25, Color::Blue);
    assert!(split.is_met_by(Color::Blue, 25));
    assert!(!split.is_met_by(Color::Green, 25));
}

#[test]
fn a_first_change_restores_the_state_every_host_agrees_on() {
    let agree = [
        record("h1", &[("web", Color::Blue, 0, 0, None)]),
        record("h2", &[("web", Color::Blue, 0, 0, None)]),
    ];
    let common = common_state("web", &agree).expect("all blue");
    assert_eq!((common.color, common.weight), (Color::Blue, 100));

    let disagree = [
        record("h1", &[("web", Color::Blue, 0, 0, None)]),
        record("h2", &[("web", Color::Green, 0, 0, None)]),
        record("h3", &[("web", Color::Blue, 30, 0, None)]),
    ];
    let message = common_state("web", &disagree).expect_err("mixed");
    assert_eq!(
        message,
        "h1 serves blue, h2 serves green, h3 sends 30% to green"
    );
    assert!(common_state("chat", &agree).is_err(), "nobody serves chat");
}

#[test]
fn host_records_round_trip_through_json() {
    let host = record("h1", &[("web", Color::Green, 0, 7, None)]);
    let text = serde_json::to_string(&host).unwrap();
    assert_eq!(serde_json::from_str::<HostRecord>(&text).unwrap(), host);
    assert_eq!(served_services(&[host]), BTreeSet::from(["web".to_owned()]));
}

#[test]
fn drift_is_a_live_state_the_applied_revision_does_not_explain() {
    let green = desired(Color::Green, 100, Color::Blue);
    let host = record("h1", &[("web", Color::Green, 0, 7, None)]);
    let applied = &host.services["web"];
    assert_eq!(applied.drift(&green, 7, Color::Green, 0), None);
    let drift = applied
        .drift(&green, 7, Color::Blue, 0)
        .expect("overridden");
    assert!(
        drift.starts_with("serving blue while the fleet wants green"),
        "{drift}"
    );
    assert_eq!(
        applied.drift(&green, 8, Color::Blue, 0),
        None,
        "not applied yet"
    );
    let refused = record("h1", &[("web", Color::Blue, 0, 7, Some("green failed"))]);
    assert_eq!(
        refused.services["web"].drift(&green, 7, Color::Blue, 0),
        None
    );
}

#[test]
fn a_force_is_applied_once_and_not_again_after_a_restart() {
    let host = record("h1", &[("web", Color::Blue, 0, 7, None)]);
    let applied = &host.services["web"];
    let forced = DesiredState {
        force_epoch: 1,
        ..desired(Color::Green, 100, Color::Blue)
    };
    assert!(applied.must_force(&forced, false, false));
    assert!(
        applied.must_force(&forced, true, false),
        "restarted, not there yet"
    );
    assert!(
        !applied.must_force(&forced, true, true),
        "restarted, already green"
    );
    let done = AppliedService {
        force_epoch: 1,
        ..applied.clone()
    };
    assert!(!done.must_force(&forced, false, false));
}
