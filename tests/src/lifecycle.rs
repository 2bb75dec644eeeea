//! A lifecycle script for `[service.lifecycle]` that starts green's
//! backend as a real process (the `backend` binary) in green's namespace
//! and kills it on stop, recording what it did: the lifecycle tests'
//! and the lifecycle bench's green.

use std::path::{Path, PathBuf};

use crate::fixture::{BACKEND_PORT, Fixture, config_text};

/// One second of closing time, so that a closed connection stops counting
/// as a live flow soon: a stop refused for green's live flows succeeds
/// soon after.
const DATAPLANE: &str = "[dataplane]\ntcp_closing_timeout_secs = 1\n\n";

/// Blue's backend running in this process, green's not started, and
/// service "web" up with the lifecycle of a script that starts `backend`
/// (the `backend` binary) as green's; `settings` (TOML lines) go at the
/// end of the lifecycle table, and may open more tables of the service.
/// Returns the config's path too, for a daemon.
pub fn up(backend: &Path, settings: &str) -> (Fixture, LifecycleScript, String) {
    let fixture = Fixture::blue_only();
    let script = LifecycleScript::new(&fixture, backend);
    let config = fixture.write_config(&config_text(DATAPLANE, &script.table(settings)));
    fixture.up_with_config(&config);
    (fixture, script, config)
}

/// The files one script works with, removed (and the processes it
/// started killed, by the pids it recorded) on drop.
pub struct LifecycleScript {
    dir: PathBuf,
}

impl LifecycleScript {
    /// Writes the script for `fixture`: on start it records the action,
    /// then for green starts `backend` (the `backend` binary) in green's
    /// namespace (for blue, whose backend runs in the caller, only the
    /// record); on stop it kills what it started. A file `fail` makes it
    /// exit 1, a file `hang` makes it sleep a minute first.
    pub fn new(fixture: &Fixture, backend: &Path) -> LifecycleScript {
        let dir = std::env::temp_dir().join(format!(
            "bg-lifecycle-{}-{}",
            std::process::id(),
            fixture.topology.green.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the script's directory");
        let script = format!(
            r#"#!/bin/sh
dir={dir}
action=$1
echo "$action $BLUEGREEN_COLOR" >> $dir/marker
if [ -e $dir/hang ]; then echo $$ >> $dir/hung; sleep 60; fi
[ -e $dir/fail ] && exit 1
if [ "$BLUEGREEN_COLOR" = green ]; then
  case $action in
    start) nsenter --net={green} {backend} {port} green 120 >/dev/null 2>&1 &
           echo $! > $dir/green.pid ;;
    stop) [ -e $dir/green.pid ] && kill $(cat $dir/green.pid); rm -f $dir/green.pid ;;
  esac
fi
exit 0
"#,
            dir = dir.display(),
            green = fixture.topology.green.path().display(),
            backend = backend.display(),
            port = BACKEND_PORT,
        );
        let path = dir.join("lifecycle.sh");
        std::fs::write(&path, script).expect("write the script");
        std::process::Command::new("chmod")
            .args(["+x", path.to_str().expect("utf-8")])
            .status()
            .expect("chmod the script");
        LifecycleScript { dir }
    }

    /// The `[service.lifecycle]` table that runs it, with `extra` (TOML
    /// lines) at its end.
    pub fn table(&self, extra: &str) -> String {
        let script = self.dir.join("lifecycle.sh");
        format!(
            "\n[service.lifecycle]\nstart = [\"{0}\", \"start\"]\nstop = [\"{0}\", \"stop\"]\nready_timeout_secs = 10\n{extra}",
            script.display()
        )
    }

    /// What the script did, one `ACTION COLOR` per line.
    pub fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("marker"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Sets or clears the flag `fail` or `hang`.
    pub fn set(&self, flag: &str, on: bool) {
        let path = self.dir.join(flag);
        if on {
            std::fs::write(path, "").expect("set the script's flag");
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn green_runs(&self) -> bool {
        std::fs::read_to_string(self.dir.join("green.pid"))
            .ok()
            .is_some_and(|pid| Path::new(&format!("/proc/{}", pid.trim())).exists())
    }
}

impl Drop for LifecycleScript {
    fn drop(&mut self) {
        for file in ["green.pid", "hung"] {
            let pids = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            for pid in pids
                .lines()
                .filter_map(|pid| pid.trim().parse::<i32>().ok())
            {
                // SAFETY: kill has no memory preconditions; these are
                // processes this script started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
