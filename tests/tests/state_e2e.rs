//! State files and pins under damage, end to end: bad or missing state
//! files, a full state disk, hostile directories, pins removed by hand, and
//! an interface deleted while up.

use std::{
    fs,
    io::Write,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use bluegreen_testbed::{
    cli::CliRun,
    cli::layout_dir,
    fixture::{Fixture, strs, up_args},
    netns::SWITCH_IFACE,
};

/// Paths a test planted outside the instance's own directories, removed on
/// drop (also when the test fails). Declared before the fixture, so that it
/// is dropped after the fixture's teardown, which may still run into them.
struct Planted(Vec<PathBuf>);

impl Planted {
    fn path(&mut self, path: PathBuf) -> PathBuf {
        self.0.push(path.clone());
        path
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => drop(fs::remove_dir_all(path)),
                Ok(_) => drop(fs::remove_file(path)),
                Err(_) => {}
            }
        }
    }
}

/// A tmpfs of `size` mounted on a fresh root-only directory, unmounted on
/// drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir(path).expect("create the mount point");
        let tmpfs = Tmpfs(path.to_owned());
        bluegreen_testbed::netns::run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                path.to_str().expect("utf-8 path"),
            ],
        );
        tmpfs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        let _ = fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `path` with a file at `path`; panics unless it
/// fills up within 4 MiB.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).expect("create filler");
    let chunk = [0u8; 4096];
    for _ in 0..1024 {
        if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
            return;
        }
    }
    panic!("{} did not fill up", path.display());
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|error| panic!("chown {}: {error}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("chmod {}: {error}", path.display()));
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .next()
        .is_none()
}

fn state_json(fixture: &Fixture) -> serde_json::Value {
    let file = fixture.bluegreen.state_file();
    let text =
        fs::read_to_string(&file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// The switch interface's pin directory.
fn layout(fixture: &Fixture) -> PathBuf {
    fixture.bluegreen.interface_pins()
}

fn xdp_attached(fixture: &Fixture) -> bool {
    let link = fixture
        .topology
        .switch
        .exec("ip", &["-d", "link", "show", SWITCH_IFACE]);
    String::from_utf8_lossy(&link.stdout).contains("prog/xdp")
}

/// Runs a command that must fail with exit code 1 and one line on stderr
/// containing every one of `expected`; returns its run.
fn fails(fixture: &Fixture, args: &[&str], expected: &[&str]) -> CliRun {
    let run = fixture.bluegreen.run(args);
    assert_eq!(run.code, 1, "bluegreen {args:?}: {run:?}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
    for expected in expected {
        assert!(
            run.stderr.contains(expected),
            "bluegreen {args:?}: expected {expected:?} in {run:?}"
        );
    }
    run
}

/// `up` with the standard service must fail with `expected`, leaving
/// nothing pinned and nothing attached.
fn up_refused(fixture: &Fixture, expected: &[&str]) {
    let args = up_args();
    fails(fixture, &strs(&args), expected);
    assert!(!xdp_attached(fixture), "a refused up attached XDP");
}

#[test]
fn state_files_of_other_interfaces_never_block_this_one() {
    let fixture = Fixture::new();
    fixture.up();
    fixture.bluegreen.ok(&["switch", "green"]);
    let dir = &fixture.bluegreen.state_dir;
    let own = fs::read_to_string(fixture.bluegreen.state_file()).expect("state file");
    fs::write(dir.join("eth9.json"), &own[..own.len() / 2]).expect("truncated");
    fs::write(dir.join("eth8.json"), [0xff, 0xfe, 0x00]).expect("not UTF-8");
    fs::write(dir.join("eth7.json"), "").expect("empty");
    fs::create_dir(dir.join("eth6.json")).expect("unreadable");
    // A copy of this interface's file under another interface's name.
    fs::write(dir.join("eth5.json"), &own).expect("copy");

    let service = fixture.service_status();
    assert_eq!(
        (&service["name"], &service["active"]),
        (&"web".into(), &"green".into())
    );
    fixture.bluegreen.ok(&["rollback"]);
    assert_eq!(fixture.get(), "blue");
    fixture
        .bluegreen
        .ok(&["switch", "green", "--service", "web"]);
    assert_eq!(fixture.get(), "green");
    assert_eq!(
        fs::read_to_string(dir.join("eth9.json")).expect("eth9.json"),
        own[..own.len() / 2],
        "another interface's file is left as it was"
    );
}

#[test]
fn a_damaged_or_missing_state_file_is_rebuilt_from_the_maps() {
    let fixture = Fixture::new();
    fixture.up();
    let file = fixture.bluegreen.state_file();
    let good = fs::read_to_string(&file).expect("state file");
    let replace = |contents: &[u8]| {
        fs::remove_file(&file).expect("remove state file");
        fs::write(&file, contents).expect("write state file");
    };
    let damage: [(&str, &dyn Fn()); 7] = [
        ("truncated", &|| replace(&good.as_bytes()[..good.len() / 2])),
        ("empty", &|| replace(b"")),
        ("not UTF-8", &|| replace(&[0xff; 64])),
        ("for another interface", &|| {
            replace(good.replace("\"s0\"", "\"eth9\"").as_bytes())
        }),
        ("a dangling symlink", &|| {
            fs::remove_file(&file).expect("remove state file");
            symlink("/nonexistent-bluegreen-test", &file).expect("symlink");
        }),
        ("a FIFO", &|| {
            fs::remove_file(&file).expect("remove state file");
            bluegreen_testbed::netns::run("mkfifo", &[file.to_str().expect("utf-8")]);
        }),
        ("missing", &|| {
            fs::remove_file(&file).expect("remove state file")
        }),
    ];
    let mut active = "blue";
    for (round, (what, damage)) in damage.iter().enumerate() {
        // Switch and rollback alternate; each must work on the damaged file
        // and leave it whole again.
        damage();
        let target = if active == "blue" { "green" } else { "blue" };
        if round % 2 == 0 {
            fixture.bluegreen.ok(&["switch", target]);
        } else {
            fixture.bluegreen.ok(&["rollback"]);
        }
        active = target;
        assert_eq!(fixture.get(), active, "{what}");
        let state = state_json(&fixture);
        assert_eq!(state["interface"], SWITCH_IFACE, "{what}: {state}");
        assert_eq!(state["services"][0]["active"], active, "{what}: {state}");

        damage();
        let run = fixture.bluegreen.run(&["status", "--json"]);
        assert_eq!(run.code, 0, "status with a state file {what}: {run:?}");
        assert!(
            run.stderr.contains("s0.json"),
            "status names the state file it rebuilt ({what}): {run:?}"
        );
        let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        let service = &status["interfaces"][0]["services"][0];
        assert_eq!(service["active"], active, "{what}: {status}");
        assert_eq!(service["vip"], "10.200.100.1:80", "{what}: {status}");
        assert_eq!(
            state_json(&fixture)["services"][0]["active"],
            active,
            "{what}"
        );
    }

    // The maps hold no names: naming the service says how to get them back.
    fails(
        &fixture,
        &["switch", "blue", "--service", "web"],
        &["no service named \"web\"", "bluegreen up --iface s0"],
    );
    fixture.up();
    let service = fixture.service_status();
    assert_eq!(
        (&service["name"], &service["active"]),
        (&"web".into(), &active.into())
    );
    fixture
        .bluegreen
        .ok(&["switch", "blue", "--service", "web"]);
    assert_eq!(fixture.get(), "blue");
}

#[test]
fn a_switch_that_cannot_save_its_state_leaves_the_map_alone() {
    let fixture = Fixture::new();
    let _tmpfs = Tmpfs::mount(&fixture.bluegreen.state_dir, "64k");
    fixture.up();
    fixture.bluegreen.ok(&["preview", "add", "10.200.9.0/24"]);
    let before = state_json(&fixture);
    let generation = fixture.service_status()["generation"].clone();
    let filler = fixture.bluegreen.state_dir.join("filler");
    fill(&filler);

    let changes: [&[&str]; 5] = [
        &["switch", "green"],
        &["switch", "green", "--force"],
        &["switch", "green", "--weight", "10"],
        &["preview", "add", "10.200.1.0/24"],
        &["set-backend", "green", "10.200.3.2:9090"],
    ];
    for args in changes {
        fails(
            &fixture,
            args,
            &["cannot write state file", "No space left on device"],
        );
        let service = fixture.service_status();
        assert_eq!(service["active"], "blue", "{args:?}: {service}");
        assert_eq!(service["generation"], generation, "{args:?}: {service}");
        assert_eq!(service["weight"], 0, "{args:?}: {service}");
        assert_eq!(service["preview"], serde_json::json!(["10.200.9.0/24"]));
        assert_eq!(service["green"]["backend"], "10.200.3.2:8080");
        assert_eq!(fixture.get(), "blue", "{args:?}");
        assert_eq!(
            state_json(&fixture),
            before,
            "{args:?} changed the state file"
        );
    }

    fs::remove_file(&filler).expect("remove filler");
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");
    assert_eq!(state_json(&fixture)["services"][0]["active"], "green");
}

#[test]
fn hostile_state_directories_are_refused_before_use() {
    let mut planted = Planted(Vec::new());
    let fixture = Fixture::new();
    let dir = fixture.bluegreen.state_dir.clone();

    fs::create_dir(&dir).expect("create state dir");
    chmod(&dir, 0o777);
    up_refused(&fixture, &["writable by group or others"]);
    assert_eq!(mode(&dir), 0o777, "the refused directory is left as it was");
    assert!(is_empty_dir(&dir));

    chmod(&dir, 0o700);
    chown(&dir, 65534);
    up_refused(&fixture, &["not owned by root"]);
    assert!(is_empty_dir(&dir));
    fs::remove_dir(&dir).expect("remove state dir");

    let elsewhere = planted.path(PathBuf::from(format!(
        "/tmp/{}-elsewhere",
        fixture.topology.prefix
    )));
    fs::create_dir(&elsewhere).expect("create target");
    chmod(&elsewhere, 0o700);
    symlink(&elsewhere, &dir).expect("plant symlink");
    up_refused(&fixture, &["symbolic link"]);
    assert!(is_empty_dir(&elsewhere), "nothing written through the link");
    fs::remove_file(&dir).expect("remove symlink");

    // Once up, a directory opened to others is refused too, map untouched.
    fixture.up();
    chmod(&dir, 0o757);
    fails(
        &fixture,
        &["switch", "green"],
        &["writable by group or others"],
    );
    chmod(&dir, 0o700);
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(fixture.get(), "blue");
}

#[test]
fn planted_symlinks_redirect_no_write() {
    let mut planted = Planted(Vec::new());
    let fixture = Fixture::new();
    let prefix = &fixture.topology.prefix;
    let victim = planted.path(PathBuf::from(format!("/tmp/{prefix}-victim")));
    fs::write(&victim, "victim\n").expect("victim");
    let absent = planted.path(PathBuf::from(format!("/tmp/{prefix}-absent")));
    let dir = &fixture.bluegreen.state_dir;
    fs::create_dir(dir).expect("create state dir");
    chmod(dir, 0o700);

    let lock = dir.join(format!("{SWITCH_IFACE}.lock"));
    symlink(&absent, &lock).expect("plant lock symlink");
    up_refused(&fixture, &["s0.lock", "symbolic link"]);
    assert!(
        fs::symlink_metadata(&absent).is_err(),
        "nothing created through the planted lock"
    );
    fs::remove_file(&lock).expect("remove planted lock");

    fixture.up();
    let file = fixture.bluegreen.state_file();
    fs::remove_file(&file).expect("remove state file");
    symlink(&victim, &file).expect("plant state symlink");
    symlink(&victim, dir.join(format!(".{SWITCH_IFACE}.json.tmp"))).expect("plant temp symlink");
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "victim\n");
    assert!(
        fs::symlink_metadata(&file).expect("state file").is_file(),
        "the planted link was replaced by a file"
    );
    assert_eq!(state_json(&fixture)["services"][0]["active"], "green");
}

#[test]
fn hostile_pin_directories_are_refused_before_use() {
    let mut planted = Planted(Vec::new());
    let fixture = Fixture::new();
    let pin = fixture.bluegreen.pin_dir.clone();

    fs::create_dir(&pin).expect("create pin dir");
    chmod(&pin, 0o777);
    up_refused(&fixture, &["writable by group or others"]);
    assert!(is_empty_dir(&pin));

    chmod(&pin, 0o700);
    chown(&pin, 65534);
    up_refused(&fixture, &["not owned by root"]);
    assert!(is_empty_dir(&pin));
    chown(&pin, 0);

    let elsewhere = planted.path(PathBuf::from(format!(
        "/sys/fs/bpf/{}-elsewhere",
        fixture.topology.prefix
    )));
    fs::create_dir(&elsewhere).expect("create target");
    chmod(&elsewhere, 0o700);
    symlink(
        &elsewhere,
        pin.join(layout_dir(bluegreen_common::LAYOUT_VERSION)),
    )
    .expect("plant a layout symlink");
    up_refused(&fixture, &["symbolic link"]);
    assert!(is_empty_dir(&elsewhere), "nothing pinned through the link");
    fs::remove_file(pin.join(layout_dir(bluegreen_common::LAYOUT_VERSION)))
        .expect("remove symlink");
    fs::remove_dir(&pin).expect("remove pin dir");

    symlink(&elsewhere, &pin).expect("plant pin dir symlink");
    up_refused(&fixture, &["symbolic link"]);
    assert!(is_empty_dir(&elsewhere), "nothing pinned through the link");
    fs::remove_file(&pin).expect("remove symlink");

    fixture.up();
    assert_eq!(mode(&pin), 0o700);
    assert_eq!(fixture.get(), "blue");
}

#[test]
fn up_repairs_a_removed_link_pin_in_one_run() {
    let fixture = Fixture::new();
    fixture.up();
    fixture.bluegreen.ok(&["switch", "green"]);
    for link in ["link_xdp", "link_tc"] {
        fs::remove_file(layout(&fixture).join(link)).expect("remove link pin");
        let status = fixture.bluegreen.status();
        let interface = &status["interfaces"][0];
        assert_eq!(interface["attached"], false, "{link}: {status}");
        assert_eq!(interface["services"][0]["active"], "green", "{status}");
        fails(
            &fixture,
            &["switch", "blue"],
            &["not attached to s0", "bluegreen up --iface s0"],
        );

        fixture.up();
        let status = fixture.bluegreen.status();
        assert_eq!(
            status["interfaces"][0]["attached"], true,
            "{link}: {status}"
        );
        assert_eq!(fixture.bluegreen.active(), "green", "{link}");
        assert_eq!(fixture.get(), "green", "{link}");
        assert!(layout(&fixture).join(link).exists(), "{link} pinned again");
    }
}

#[test]
fn up_repairs_removed_map_pins_in_one_run_and_keeps_their_contents() {
    let fixture = Fixture::new();
    fixture.up();
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("keep-alive on blue"), "blue");
    fixture.bluegreen.ok(&["switch", "green"]);
    for map in ["BG_SERVICES", "BG_FLOWS"] {
        fs::remove_file(layout(&fixture).join(map)).expect("remove map pin");
    }
    // The programs still steer with the unpinned maps.
    assert_eq!(fixture.get(), "green");
    for args in [&["status"][..], &["switch", "blue"]] {
        let run = fails(&fixture, args, &["is missing", "bluegreen up --iface s0"]);
        assert!(!run.stderr.contains("BPF_OBJ_GET"), "{run:?}");
    }

    fixture.up();
    // The flow table came back with its entries: the open connection stays
    // on blue.
    assert_eq!(kept.get().expect("keep-alive after repair"), "blue");
    assert_eq!(fixture.get(), "green");
    assert_eq!(fixture.bluegreen.active(), "green");
    for map in ["BG_SERVICES", "BG_FLOWS"] {
        assert!(layout(&fixture).join(map).exists(), "{map} pinned again");
    }
}

#[test]
fn preview_prefixes_are_read_back_from_the_map() {
    let fixture = Fixture::new();
    fixture.up();
    fixture.bluegreen.ok(&["preview", "add", "10.200.1.0/24"]);
    assert_eq!(fixture.get(), "green", "the client previews green");

    // The state file forgets the prefix (a hand edit, an older file).
    let mut state = state_json(&fixture);
    state["services"][0]
        .as_object_mut()
        .expect("service record")
        .remove("preview");
    fs::write(
        fixture.bluegreen.state_file(),
        serde_json::to_string_pretty(&state).expect("JSON"),
    )
    .expect("rewrite state file");

    let listing = fixture.bluegreen.ok(&["preview", "list"]);
    assert!(listing.contains("  10.200.1.0/24"), "{listing}");
    assert_eq!(
        fixture.service_status()["preview"],
        serde_json::json!(["10.200.1.0/24"])
    );
    fixture
        .bluegreen
        .ok(&["preview", "remove", "10.200.1.0/24"]);
    assert_eq!(fixture.get(), "blue");
    let listing = fixture.bluegreen.ok(&["preview", "list"]);
    assert!(listing.contains("web: no preview prefixes"), "{listing}");
}

#[test]
fn an_interface_deleted_while_up_is_reported_and_reattached_when_it_returns() {
    let fixture = Fixture::new();
    fixture.up();
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");

    fixture.topology.delete_switch_iface();
    let status = fixture.bluegreen.status();
    let interface = &status["interfaces"][0];
    assert_eq!(interface["interface_present"], false, "{status}");
    assert_eq!(interface["attached"], false, "{status}");
    assert_eq!(interface["services"][0]["active"], "green", "{status}");
    let text = fixture.bluegreen.ok(&["status"]);
    assert!(text.contains("interface s0 does not exist"), "{text}");
    fails(
        &fixture,
        &["switch", "blue"],
        &["interface s0 does not exist", "bluegreen up --iface s0"],
    );
    assert_eq!(fixture.bluegreen.active(), "green");

    fixture.topology.recreate_switch_iface();
    let status = fixture.bluegreen.status();
    let interface = &status["interfaces"][0];
    assert_eq!(interface["interface_present"], true, "{status}");
    assert_eq!(interface["attached"], false, "{status}");

    fixture.up();
    let status = fixture.bluegreen.status();
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    assert_eq!(fixture.bluegreen.active(), "green");
    assert_eq!(fixture.get(), "green");
    fixture.bluegreen.ok(&["switch", "blue"]);
    assert_eq!(fixture.get(), "blue");
}
