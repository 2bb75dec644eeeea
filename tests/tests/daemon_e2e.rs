//! The daemon as systemd runs it: readiness and reload notifications,
//! SIGHUP reloads that apply backends without touching the active color,
//! bad configs refused while running, and SIGTERM without detaching.

use std::{os::unix::net::UnixDatagram, time::Duration};

use bluegreen_testbed::{
    fixture::{Fixture, config_text, green_backend},
    http::Backend,
};

/// Reads the daemon's next sd_notify datagram.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let length = socket
        .recv(&mut buffer)
        .expect("no sd_notify message within the timeout");
    String::from_utf8_lossy(&buffer[..length])
        .trim_end()
        .to_owned()
}

#[test]
fn the_daemon_notifies_systemd_and_reloads_backends_on_sighup() {
    let fixture = Fixture::new();
    let _green_v2 = Backend::start(&fixture.topology.green, 8081, "green-v2");
    let config = fixture.write_config(&config_text("", ""));
    let socket_path = fixture.bluegreen.state_dir.with_extension("notify");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("socket timeout");

    let mut command = fixture.bluegreen.command(&["daemon", "--config", &config]);
    command.env("NOTIFY_SOCKET", &socket_path);
    let daemon = fixture.start_daemon_with(command);
    assert_eq!(next_notification(&socket), "READY=1");

    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");

    // Green's backend moves to port 8081: the reload applies it, and the
    // active color stays green.
    let moved = green_backend().to_string().replace(":8080", ":8081");
    fixture.write_config(&config_text("", "").replace(&green_backend().to_string(), &moved));
    daemon.signal(libc::SIGHUP);
    assert_eq!(next_notification(&socket), "RELOADING=1");
    assert_eq!(next_notification(&socket), "READY=1");
    assert_eq!(fixture.get(), "green-v2");
    let status = fixture.service_status();
    assert_eq!(status["active"], "green", "{status}");
    assert_eq!(status["green"]["backend"], moved.as_str(), "{status}");

    // A broken config is refused and the running one kept.
    fixture.write_config("interface = \"s0\"\n[[service]]\nname = \"web\"\n");
    daemon.signal(libc::SIGHUP);
    assert_eq!(next_notification(&socket), "RELOADING=1");
    assert_eq!(next_notification(&socket), "READY=1");
    assert_eq!(fixture.service_status()["green"]["backend"], moved.as_str());
    assert_eq!(fixture.get(), "green-v2");

    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(next_notification(&socket), "STOPPING=1");
    assert_eq!(
        fixture.get(),
        "green-v2",
        "traffic flows with no daemon running"
    );
    let _ = std::fs::remove_file(&socket_path);
}
