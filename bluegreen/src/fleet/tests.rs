//! The fleet's decisions: who applied, who refused, what a switch and a
//! rollback write, and what a first change restores.

use super::*;

fn desired(target: Color, target_share: u8, previous: Color) -> DesiredState {
    DesiredState {
        target,
        target_share,
        force_epoch: 0,
        previous,
        by: "ops@desk".to_owned(),
        at_unix_ms: 1,
        undo: false,
    }
}

fn record(host: &str, services: &[(&str, Color, u8, i64, Option<&str>)]) -> HostRecord {
    HostRecord {
        schema_version: FLEET_SCHEMA_VERSION,
        host: host.to_owned(),
        owner: "pid 1 on test".to_owned(),
        services: services
            .iter()
            .map(|&(name, active, idle_share, revision, refused)| {
                (
                    name.to_owned(),
                    AppliedService {
                        active,
                        idle_share,
                        force_epoch: 0,
                        revision,
                        refused: refused.map(str::to_owned),
                        health: ColorHealth::default(),
                        last_error: refused.map(str::to_owned),
                        drift: None,
                        lifecycle: None,
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
        (back.target, back.target_share, back.previous),
        (Color::Blue, 100, Color::Green)
    );

    let split = desired(Color::Green, 10, Color::Blue);
    let ended = split.rollback(false, "a".into(), 2).expect("split ended");
    assert_eq!((ended.target, ended.target_share), (Color::Blue, 100));

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
    assert_eq!((common.target, common.target_share), (Color::Blue, 100));

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

#[test]
fn only_a_readable_record_under_a_lease_and_its_own_name_is_a_live_host() {
    let valid =
        serde_json::to_vec(&record("h1", &[("web", Color::Blue, 0, 4, None)])).expect("serialises");
    let mut hosts = Hosts::default();
    hosts.add("/p/v1/hosts/h1", "h1", 7, &valid);
    hosts.add("/p/v1/hosts/ghost", "ghost", 0, &valid);
    hosts.add("/p/v1/hosts/h2", "h2", 8, &valid);
    hosts.add("/p/v1/hosts/evil", "evil", 9, b"{{{garbage");
    hosts.add(
        "/p/v1/hosts/h3",
        "h3",
        0,
        br#"{"schema_version":1,"host":"h3","services":{"web":{"color":"blue"}}}"#,
    );
    assert_eq!(
        hosts
            .live
            .iter()
            .map(|record| record.host.as_str())
            .collect::<Vec<_>>(),
        ["h1"]
    );
    let ignored: Vec<(&str, &str)> = hosts
        .ignored
        .iter()
        .map(|ignored| (ignored.key.as_str(), ignored.reason.as_str()))
        .collect();
    assert_eq!(ignored.len(), 4, "{ignored:?}");
    assert!(
        ignored[0].1.contains("not attached to a lease"),
        "{ignored:?}"
    );
    assert!(
        ignored[1].1.contains("holds the record of host \"h1\""),
        "{ignored:?}"
    );
    assert!(ignored[2].1.contains("not JSON"), "{ignored:?}");
    // Unreadable says why, lease or not.
    assert!(
        ignored[3].1.contains("missing field `weight`"),
        "{ignored:?}"
    );
}

#[test]
fn a_desired_state_is_refused_for_what_is_wrong_with_it() {
    let good = serde_json::to_vec(&desired(Color::Green, 10, Color::Blue)).expect("serialises");
    assert_eq!(
        read_desired(&good),
        Ok(desired(Color::Green, 10, Color::Blue))
    );
    let with = |field: &str, value: serde_json::Value| {
        let mut document: serde_json::Value = serde_json::from_slice(&good).expect("JSON");
        document[field] = value;
        read_desired(&serde_json::to_vec(&document).expect("serialises"))
    };
    let refused = |result: Result<DesiredState, String>, expected: &str| {
        let reason = result.expect_err("refused");
        assert!(reason.contains(expected), "{reason}");
    };
    refused(with("color", "purple".into()), "purple");
    refused(with("weight", 200.into()), "weight 200 is above 100");
    refused(with("weight", 1000.into()), "1000");
    refused(with("schema_version", 2.into()), "schema version 2");
    refused(read_desired(b"not json"), "not JSON");
    // The schema version the writer gave is named even when the rest
    // would not parse.
    refused(read_desired(br#"{"schema_version":9}"#), "schema version 9");
    assert!(with("schema_version", 1.into()).is_ok());
}

#[test]
fn a_host_that_drifted_after_applying_has_acted_on_the_revision() {
    let mut drifted = record("h2", &[("web", Color::Blue, 0, 7, None)]);
    drifted.services.get_mut("web").expect("web").drift =
        Some("serving blue while the fleet wants green".to_owned());
    let hosts = [record("h1", &[("web", Color::Green, 0, 7, None)]), drifted];
    // The change was applied everywhere: the drift (a local override since)
    // is for `fleet status` to show, not a failure of the change.
    let progress = progress("web", 7, &hosts);
    assert_eq!(progress.applied, ["h1", "h2"]);
    assert!(progress.is_converged());
}

#[test]
fn a_made_up_state_starts_its_force_epochs_where_the_hosts_are() {
    let mut forced = record("h2", &[("web", Color::Green, 0, 7, None)]);
    forced.services.get_mut("web").expect("web").force_epoch = 3;
    let hosts = [record("h1", &[("web", Color::Green, 0, 7, None)]), forced];
    assert_eq!(applied_force_epoch("web", &hosts), 3);
    assert_eq!(applied_force_epoch("chat", &hosts), 0, "no host serves it");
    // The next --force then reaches every host.
    let mut before = common_state("web", &hosts).expect("they agree");
    before.force_epoch = before.force_epoch.max(applied_force_epoch("web", &hosts));
    let next = DesiredState::next(&before, Color::Blue, 100, true, "ops".to_owned(), 2);
    assert!(
        hosts
            .iter()
            .all(|record| record.services["web"].must_force(&next, false, false))
    );
}

#[test]
fn an_undo_is_marked_in_etcd_and_the_next_change_is_not_one() {
    let switched = desired(Color::Green, 100, Color::Blue);
    let undo = switched.as_undo();
    let text = serde_json::to_string(&undo).expect("serialises");
    assert!(text.contains("\"undo\":true"), "{text}");
    let plain = serde_json::to_string(&switched).expect("serialises");
    assert!(
        !plain.contains("undo"),
        "older readers see no new key: {plain}"
    );
    let read: DesiredState = serde_json::from_str(&plain).expect("reads");
    assert!(!read.undo);
    let next = DesiredState::next(&undo, Color::Blue, 100, false, "ops@desk".to_owned(), 2);
    assert!(!next.undo, "a new change runs the gates again");
}
