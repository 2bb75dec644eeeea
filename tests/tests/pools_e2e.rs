//! Replica pools through the CLI, under real HTTP traffic: new connections
//! spread over a color's backends, `backend drain` and `backend remove`
//! with open keep-alive connections, pools from a config file, and a
//! switch to a pool with a dead replica.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bluegreen_testbed::{
    fixture::{Fixture, blue_backend, green_backend, replica, start_replica, strs, up_args, vip},
    http::{Backend, KeepAlive, LoadReport},
    netns::{Namespace, SWITCH_IFACE},
};

const LOAD_DEADLINE: Duration = Duration::from_secs(60);

/// A second address of a backend's host: the same address, another port.
/// Replicas 1.. of a color, each answering `NAME-2`, `NAME-3`...
fn start_replicas(namespace: &Namespace, name: &str, count: u16) -> Vec<Backend> {
    (1..=count)
        .map(|index| start_replica(namespace, name, index))
        .collect()
}

/// `up` with blue as a pool of the standard blue backend and `extra`
/// replicas.
fn up_blue_pool(fixture: &Fixture, extra: u16) -> Vec<SocketAddr> {
    let blue: Vec<SocketAddr> = (0..=extra)
        .map(|index| replica(blue_backend(), index))
        .collect();
    let list: Vec<String> = blue.iter().map(ToString::to_string).collect();
    let mut args = up_args();
    let at = args.iter().position(|arg| arg == "--blue").expect("--blue") + 1;
    args[at] = list.join(",");
    let out = fixture.bluegreen.ok(&strs(&args));
    assert!(out.contains(&list.join(", ")), "up lists the pool: {out}");
    blue
}

/// `requests` new connections, every one answered; the share per body.
fn load(fixture: &Fixture, requests: u64) -> BTreeMap<String, u64> {
    let report: LoadReport = fixture.load(4, requests, LOAD_DEADLINE).finish(false);
    report.assert_all_served(requests);
    report.served_by
}

/// A keep-alive connection that landed on the backend answering `body`
/// (new connections spread by hash, so a bounded number of tries).
fn keep_alive_on(fixture: &Fixture, body: &str) -> KeepAlive {
    for _ in 0..100 {
        let mut connection = fixture.keep_alive();
        if connection.get().expect("first request") == body {
            return connection;
        }
    }
    panic!("no connection reached {body} in 100 tries");
}

/// `status --json`'s backends of one color: address -> (state, active flows).
fn pool_status(fixture: &Fixture, color: &str) -> BTreeMap<String, (String, u64)> {
    let status = fixture.service_status();
    status[color]["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("{color}.backends in {status}"))
        .iter()
        .map(|backend| {
            (
                backend["addr"].as_str().expect("addr").to_owned(),
                (
                    backend["state"].as_str().expect("state").to_owned(),
                    backend["active_flows"].as_u64().expect("active_flows"),
                ),
            )
        })
        .collect()
}

#[test]
fn three_replicas_share_new_connections() {
    let fixture = Fixture::new();
    let _replicas = start_replicas(&fixture.topology.blue, "blue", 2);
    let blue = up_blue_pool(&fixture, 2);

    let served = load(&fixture, 600);
    eprintln!("600 new connections over 3 replicas: {served:?}");
    for body in ["blue", "blue-2", "blue-3"] {
        let share = served.get(body).copied().unwrap_or(0);
        // A fair share is 200; the hash of random client ports spreads
        // them binomially (about ±12), far inside these bounds.
        assert!(
            (120..=280).contains(&share),
            "{body} got {share} of 600: {served:?}"
        );
    }

    let status = fixture.service_status();
    assert_eq!(status["blue"]["backend"], blue[0].to_string(), "{status}");
    let pool = pool_status(&fixture, "blue");
    assert_eq!(
        pool.keys().cloned().collect::<Vec<_>>(),
        blue.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert!(
        pool.values().all(|(state, _)| state == "active"),
        "{pool:?}"
    );
    assert_eq!(status["blue"]["backends"][0]["weight"], 1, "{status}");
    // Each replica counts its own: at least one new flow per connection it
    // served (a retransmitted SYN counts again), and the replicas' packets
    // and bytes add up to the color's exactly.
    let backends = status["blue"]["backends"].as_array().expect("backends");
    for (backend, body) in backends.iter().zip(["blue", "blue-2", "blue-3"]) {
        let new_flows = backend["new_flows"].as_u64().expect("new_flows");
        assert!(
            new_flows >= served[body] && backend["packets"].as_u64() > Some(new_flows),
            "{body}: served {} connections, counted {backend}",
            served[body]
        );
    }
    for counter in ["packets", "bytes", "new_flows"] {
        let replicas: u64 = backends
            .iter()
            .map(|backend| backend[counter].as_u64().expect(counter))
            .sum();
        assert_eq!(
            Some(replicas),
            status["blue"][counter].as_u64(),
            "{counter}: {status}"
        );
    }
    let human = fixture.bluegreen.ok(&["status"]);
    assert!(human.contains("pool of 3"), "{human}");
}

#[test]
fn a_drained_replica_keeps_its_connections_and_gets_no_new_ones() {
    let fixture = Fixture::new();
    let _replicas = start_replicas(&fixture.topology.blue, "blue", 2);
    let blue = up_blue_pool(&fixture, 2);
    let mut open = keep_alive_on(&fixture, "blue-2");

    let out = fixture
        .bluegreen
        .ok(&["backend", "drain", "blue", &blue[1].to_string()]);
    assert!(out.contains("drained"), "{out}");
    let (state, flows) = pool_status(&fixture, "blue")[&blue[1].to_string()].clone();
    assert_eq!(state, "draining");
    assert!(flows >= 1, "the open connection is counted on its backend");

    let served = load(&fixture, 300);
    eprintln!("300 new connections with blue-2 drained: {served:?}");
    assert_eq!(served.get("blue-2"), None, "{served:?}");
    assert_eq!(
        open.get().expect("the open connection still works"),
        "blue-2"
    );

    // Draining the others too would leave blue, the active color, with no
    // backend for new flows.
    fixture
        .bluegreen
        .ok(&["backend", "drain", "blue", &blue[2].to_string()]);
    let run = fixture
        .bluegreen
        .run(&["backend", "drain", "blue", &blue[0].to_string()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("last backend of the active color blue taking new flows"),
        "{run:?}"
    );
    assert!(run.stderr.contains("--force"), "{run:?}");

    for backend in &blue[1..] {
        fixture
            .bluegreen
            .ok(&["backend", "undrain", "blue", &backend.to_string()]);
    }
    let served = load(&fixture, 300);
    assert!(served.get("blue-2").copied().unwrap_or(0) > 0, "{served:?}");
}

#[test]
fn a_removed_replica_loses_its_connections_at_once() {
    let fixture = Fixture::new();
    let replicas = start_replicas(&fixture.topology.blue, "blue", 2);
    let blue = up_blue_pool(&fixture, 2);
    let mut open = keep_alive_on(&fixture, "blue-3");

    let out = fixture
        .bluegreen
        .ok(&["backend", "remove", "blue", &blue[2].to_string()]);
    assert!(out.contains("1 open connection(s) moved"), "{out}");
    // Moved to a backend that does not know the connection: it resets.
    let after = open.get();
    assert!(after.is_err(), "still served after remove: {after:?}");

    let before = replicas[1]
        .served
        .load(std::sync::atomic::Ordering::Relaxed);
    let served = load(&fixture, 300);
    eprintln!("300 new connections after removing blue-3: {served:?}");
    assert_eq!(served.get("blue-3"), None, "{served:?}");
    assert_eq!(
        replicas[1]
            .served
            .load(std::sync::atomic::Ordering::Relaxed),
        before,
        "the removed replica was reached"
    );
    let pool = pool_status(&fixture, "blue");
    assert!(!pool.contains_key(&blue[2].to_string()), "{pool:?}");
}

#[test]
fn config_pools_and_backend_commands_end_to_end() {
    let fixture = Fixture::new();
    let _replicas = start_replicas(&fixture.topology.blue, "blue", 1);
    let blue = [0, 1].map(|index| replica(blue_backend(), index));
    let config = fixture.write_config(&format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = [\n  {{ addr = \"{}\" }},\n  {{ addr = \"{}\", weight = 3 }},\n]\ngreen = [\"{}\"]\n",
        vip(),
        blue[0],
        blue[1],
        green_backend()
    ));
    fixture.up_with_config(&config);

    let served = load(&fixture, 400);
    eprintln!("400 new connections, weights 1:3: {served:?}");
    let heavy = served.get("blue-2").copied().unwrap_or(0);
    // 300 expected; weights are honoured, not merely listed.
    assert!((240..=360).contains(&heavy), "{served:?}");
    assert_eq!(fixture.service_status()["blue"]["backends"][1]["weight"], 3);

    let refused = |args: &[&str], expected: &str| {
        let run = fixture.bluegreen.run(args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {run:?}");
    };
    let first = blue[0].to_string();
    refused(
        &["set-backend", "blue", "10.200.2.2:9000"],
        "backend add|remove",
    );
    refused(
        &["backend", "add", "blue", &first],
        "already in the blue pool",
    );
    refused(
        &["backend", "add", "blue", &green_backend().to_string()],
        "already a green backend",
    );
    refused(&["backend", "add", "blue", "[fd00:bb::2:2]:8080"], "IPv6");
    refused(
        &["backend", "remove", "green", &green_backend().to_string()],
        "only backend of green",
    );
    // A weight change of a listed backend, then the same again: no-op.
    let out = fixture
        .bluegreen
        .ok(&["backend", "add", "blue", &first, "--weight", "3"]);
    assert!(out.contains("(weight 3)"), "{out}");
    let out = fixture
        .bluegreen
        .ok(&["backend", "add", "blue", &first, "--weight", "3"]);
    assert!(out.contains("nothing to do"), "{out}");

    // A reload from the config keeps a drain.
    fixture
        .bluegreen
        .ok(&["backend", "drain", "blue", &blue[1].to_string()]);
    fixture.up_with_config(&config);
    let (state, _) = pool_status(&fixture, "blue")[&blue[1].to_string()].clone();
    assert_eq!(state, "draining");

    // A backend serves one service: its replies get that service's VIP.
    let with_api = format!(
        "{}\n[[service]]\nname = \"api\"\nvip = \"{}:81\"\nblue = \"{}\"\ngreen = \"{}\"\n",
        std::fs::read_to_string(&config).expect("the config just written"),
        vip().ip(),
        replica(blue_backend(), 5),
        replica(green_backend(), 5)
    );
    fixture.up_with_config(&fixture.write_config(&with_api));
    refused(
        &["backend", "add", "blue", &first, "--service", "api"],
        "already a backend of service \"web\"",
    );
}

#[test]
fn a_switch_needs_min_healthy_replicas_of_the_pool() {
    let fixture = Fixture::new();
    // Green: its standard backend and one replica answer; a third does not.
    let _replicas = start_replicas(&fixture.topology.green, "green", 1);
    let green = [0, 1, 2].map(|index| replica(green_backend(), index));
    let config = |min_healthy: u32| {
        format!(
            "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = [\"{}\", \"{}\", \"{}\"]\ngreen = [\"{}\", \"{}\", \"{}\"]\n\n[service.health]\nkind = \"tcp\"\nmin_healthy = {min_healthy}\n",
            vip(),
            replica(blue_backend(), 0),
            replica(blue_backend(), 1),
            replica(blue_backend(), 2),
            green[0],
            green[1],
            green[2],
        )
    };
    fixture.up_with_config(&fixture.write_config(&config(3)));
    let run = fixture.bluegreen.run(&["switch", "green"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("2 of 3 backends passed, 3 needed"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!("{}: TCP connect", green[2])),
        "names the failing replica: {run:?}"
    );
    assert!(
        !run.stderr.contains(&format!("{}: TCP connect", green[1])),
        "{run:?}"
    );
    assert_eq!(fixture.bluegreen.active(), "blue");

    fixture.up_with_config(&fixture.write_config(&config(2)));
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.bluegreen.active(), "green");
    // The dead replica takes its share of new connections, and they fail:
    // min_healthy judges the switch, it does not steer around a replica.
    // Draining it is the operator's fix.
    fixture
        .bluegreen
        .ok(&["backend", "drain", "green", &green[2].to_string()]);
    let served = load(&fixture, 200);
    assert_eq!(served.len(), 2, "{served:?}");
}

/// Connections their backend resets (`ss -K` on its host) are over: they
/// stop counting as open at once, so a drain does not wait an idle
/// timeout for them and `backend remove` moves none. A backend with no
/// listener is refused by `backend add` unless `--skip-check`, and the
/// connects it then refuses never count as open.
#[test]
fn reset_and_refused_connections_never_count_as_open() {
    let fixture = Fixture::new();
    let _replicas = start_replicas(&fixture.topology.blue, "blue", 1);
    let blue = up_blue_pool(&fixture, 1);
    let mut open: Vec<KeepAlive> = (0..3).map(|_| keep_alive_on(&fixture, "blue-2")).collect();
    let open_on = |backend: SocketAddr| pool_status(&fixture, "blue")[&backend.to_string()].1;
    assert_eq!(
        open_on(blue[1]),
        3,
        "three keep-alive connections on blue-2"
    );

    let filter = format!("( sport = :{} )", blue[1].port());
    let killed = fixture
        .topology
        .blue
        .exec("ss", &["-K", "-t", "state", "established", &filter]);
    assert!(killed.status.success(), "ss -K: {killed:?}");
    for connection in &mut open {
        let after = connection.get();
        assert!(
            after.is_err(),
            "served after its backend reset it: {after:?}"
        );
    }
    assert_eq!(open_on(blue[1]), 0, "reset connections still count as open");
    let status = fixture.service_status();
    assert_eq!(status["blue"]["active_flows"], 0, "{status}");
    let out = fixture
        .bluegreen
        .ok(&["backend", "remove", "blue", &blue[1].to_string()]);
    assert!(out.contains("0 open connection(s) moved"), "{out}");

    // Nothing listens on the next replica's port.
    let dead = replica(blue_backend(), 2).to_string();
    let refused = fixture.bluegreen.run(&["backend", "add", "blue", &dead]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("failed its health check")
            && refused.stderr.contains("--skip-check"),
        "{refused:?}"
    );
    let pool = pool_status(&fixture, "blue");
    assert!(
        !pool.contains_key(&dead),
        "a refused add changed the pool: {pool:?}"
    );

    fixture
        .bluegreen
        .ok(&["backend", "add", "blue", &dead, "--skip-check"]);
    let report: LoadReport = fixture.load(2, 40, LOAD_DEADLINE).finish(false);
    let failed = 40 - report.succeeded();
    assert!(
        failed > 0,
        "no connection reached the dead backend: {report:?}"
    );
    let status = fixture.service_status();
    assert_eq!(
        status["blue"]["active_flows"], 0,
        "{failed} refused connects count as open: {status}"
    );
}

/// The maps record each backend's drain beside its address: a state file
/// lost or damaged and rebuilt from them keeps the drain, so the next pool
/// change does not undrain it silently and `undrain` still has work.
#[test]
fn a_drain_survives_a_state_file_rebuilt_from_the_maps() {
    let fixture = Fixture::new();
    let _replicas = start_replicas(&fixture.topology.blue, "blue", 3);
    let blue = up_blue_pool(&fixture, 2);
    let drained = blue[1].to_string();
    fixture
        .bluegreen
        .ok(&["backend", "drain", "blue", &drained]);

    std::fs::write(fixture.bluegreen.state_file(), "{ damaged").expect("damage the state file");
    let status = fixture.bluegreen.run(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stderr.contains("rewrote it from the maps"),
        "{status:?}"
    );
    assert_eq!(pool_status(&fixture, "blue")[&drained].0, "draining");

    let added = replica(blue_backend(), 3).to_string();
    fixture.bluegreen.ok(&["backend", "add", "blue", &added]);
    let pool = pool_status(&fixture, "blue");
    assert_eq!(pool[&drained].0, "draining", "{pool:?}");
    let served = load(&fixture, 120);
    eprintln!("120 new connections with blue-2 drained after a rebuild: {served:?}");
    assert_eq!(served.get("blue-2"), None, "{served:?}");
    assert!(served.get("blue-4").copied().unwrap_or(0) > 0, "{served:?}");

    let out = fixture
        .bluegreen
        .ok(&["backend", "undrain", "blue", &drained]);
    assert!(out.contains("takes new flows again"), "{out}");
}
