//! The demo app's `restart`, which the `app` executor runs, stays correct when an earlier
//! restart was killed half-way (a power cut, `kill -9` of the agent that ran it) or when
//! two run at once: the old app is stopped by its pid file or, failing that, as the demo
//! app that holds the port; the new app starts only once the port is free; restarts take
//! turns. The kill points are the demo app's own pause points (`FLEETWAVE_TEST_HOOKS=1`,
//! `FLEETWAVE_TEST_PAUSE_AT`), never a guess at timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fleetwave_e2e::cluster::http_get;
use fleetwave_e2e::{bins, eventually_default, free_addr};

/// One app slot: versions on disk, a port and a pid file, in a temp directory.
struct App {
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl App {
    fn new() -> App {
        let app = App {
            dir: tempfile::tempdir().unwrap(),
            addr: free_addr().unwrap(),
        };
        for v in ["1.0.0", "2.0.0", "3.0.0"] {
            let d = app.version_dir(v);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("app.toml"),
                format!("version = \"{v}\"\nhealthy = true\n"),
            )
            .unwrap();
        }
        app
    }

    fn version_dir(&self, v: &str) -> PathBuf {
        self.dir.path().join(v)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("demo-app.pid")
    }

    fn pause_file(&self) -> PathBuf {
        self.dir.path().join("paused")
    }

    fn demo_app() -> Command {
        Command::new(bins::binary(bins::DEMO_APP).unwrap())
    }

    /// `restart --dir <version>` as the agent runs it, optionally paused at `pause_at`;
    /// stderr goes to `<dir>/restart-<version>.err`.
    fn spawn_restart(&self, version: &str, pause_at: Option<&str>) -> Child {
        let mut cmd = Self::demo_app();
        cmd.arg("restart")
            .arg("--dir")
            .arg(self.version_dir(version))
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--pid-file")
            .arg(self.pid_file())
            .arg("--log")
            .arg(self.dir.path().join("app.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.stderr_file(version));
        if let Some(point) = pause_at {
            cmd.env("FLEETWAVE_TEST_HOOKS", "1")
                .env("FLEETWAVE_TEST_PAUSE_AT", point)
                .env("FLEETWAVE_TEST_PAUSE_FILE", self.pause_file());
        }
        cmd.spawn().unwrap()
    }

    fn stderr_path(&self, version: &str) -> PathBuf {
        self.dir.path().join(format!("restart-{version}.err"))
    }

    fn stderr_file(&self, version: &str) -> std::fs::File {
        std::fs::File::create(self.stderr_path(version)).unwrap()
    }

    /// Runs a restart to the end; panics with its stderr if it fails.
    fn restart(&self, version: &str) {
        let status = self.spawn_restart(version, None).wait().unwrap();
        let err = std::fs::read_to_string(self.stderr_path(version)).unwrap_or_default();
        assert!(status.success(), "restart to {version} failed: {err}");
    }

    /// Waits until a restart paused at `point`; returns the paused process.
    fn paused(&self, mut child: Child, point: &str) -> Child {
        let file = self.pause_file();
        eventually_default(&format!("the restart to pause at {point}"), || {
            let text = std::fs::read_to_string(&file)?;
            anyhow::ensure!(text.starts_with(point), "{text:?}");
            Ok(())
        })
        .unwrap();
        assert!(child.try_wait().unwrap().is_none(), "it waits there");
        std::fs::remove_file(&file).unwrap();
        child
    }

    fn served(&self) -> Option<String> {
        http_get(self.addr, "/version")
            .ok()
            .map(|(_, body)| body.trim().to_string())
    }

    /// Processes serving one of this slot's versions (found by their command line).
    fn servers(&self) -> Vec<(i32, String)> {
        let mut found = Vec::new();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.get(1).map(String::as_str) != Some("serve") {
                continue;
            }
            if let Some(dir) = args
                .iter()
                .find(|a| a.starts_with(&*self.dir.path().to_string_lossy()))
            {
                let is_zombie = std::fs::read_to_string(p.path().join("stat"))
                    .map(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(true);
                if !is_zombie {
                    let v = Path::new(dir)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    found.push((pid, v));
                }
            }
        }
        found
    }

    fn pid_in_file(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// The slot serves `version` from exactly one process, the one its pid file names.
    fn assert_serves_only(&self, version: &str) {
        assert_eq!(self.served().as_deref(), Some(version));
        let servers = self.servers();
        assert_eq!(servers.len(), 1, "one app process, not {servers:?}");
        assert_eq!(servers[0].1, version);
        assert_eq!(
            self.pid_in_file(),
            Some(servers[0].0),
            "the pid file names it"
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = Self::demo_app()
            .args(["stop", "--pid-file"])
            .arg(self.pid_file())
            .arg("--listen")
            .arg(self.addr.to_string())
            .stderr(Stdio::null())
            .status();
        for (pid, _) in self.servers() {
            // SAFETY: a demo app this test started (found by its own temp directory).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A restart killed after it started the new app, before that app wrote its pid file,
/// leaves an app holding the port that the pid file does not name (it still names the old,
/// stopped one). The next restart stops it as the port's owner instead of starting an app
/// that cannot listen.
#[test]
fn a_restart_stops_the_demo_app_holding_the_port_that_the_pid_file_does_not_name() {
    let app = App::new();
    let mut orphan = App::demo_app()
        .arg("serve")
        .arg("--dir")
        .arg(app.version_dir("2.0.0"))
        .arg("--listen")
        .arg(app.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually_default("the orphaned 2.0.0 app to listen", || {
        anyhow::ensure!(app.served().as_deref() == Some("2.0.0"));
        Ok(())
    })
    .unwrap();
    // The pid file names a process that is gone (the app the killed restart stopped).
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(app.pid_file(), format!("{gone_pid}\n")).unwrap();

    app.restart("1.0.0");

    app.assert_serves_only("1.0.0");
    assert!(
        orphan.try_wait().unwrap().is_some(),
        "the orphaned app was stopped"
    );
}

/// The restart helper is killed (with the agent that ran it) right after it started the
/// new app; the next restart, as the recovering agent runs it, ends with exactly the app
/// it started.
#[test]
fn a_restart_killed_after_starting_the_new_app_is_taken_over_by_the_next_one() {
    let app = App::new();
    app.restart("1.0.0");
    let helper = app.spawn_restart("2.0.0", Some("app_restart_spawned"));
    let mut helper = app.paused(helper, "app_restart_spawned");
    sigkill(&mut helper);

    app.restart("3.0.0");

    app.assert_serves_only("3.0.0");
}

/// A restart killed after it stopped the old app, before it started the new one, leaves
/// no app at all: the next restart starts one.
#[test]
fn a_restart_killed_between_stop_and_start_is_finished_by_the_next_one() {
    let app = App::new();
    app.restart("1.0.0");
    let helper = app.spawn_restart("2.0.0", Some("app_restart_stopped"));
    let mut helper = app.paused(helper, "app_restart_stopped");
    assert_eq!(app.served(), None, "the old app is stopped");
    sigkill(&mut helper);

    app.restart("2.0.0");

    app.assert_serves_only("2.0.0");
}

/// Two restarts at once (an orphaned helper still running while the recovering agent
/// restarts again) take turns: the second waits, says so, and goes on once the first is
/// gone.
#[test]
fn restarts_of_one_app_take_turns() {
    let app = App::new();
    app.restart("1.0.0");
    let first = app.spawn_restart("2.0.0", Some("app_restart_stopped"));
    let mut first = app.paused(first, "app_restart_stopped");
    let mut second = app.spawn_restart("3.0.0", None);
    eventually_default("the second restart to wait for the first", || {
        let err = std::fs::read_to_string(app.stderr_path("3.0.0"))?;
        anyhow::ensure!(
            err.contains("waiting for another restart or stop to finish"),
            "{err:?}"
        );
        Ok(())
    })
    .unwrap();
    assert!(second.try_wait().unwrap().is_none(), "it waits");
    sigkill(&mut first);

    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(app.stderr_path("3.0.0")).unwrap_or_default()
    );
    app.assert_serves_only("3.0.0");
}

/// A port held by something that is not a demo app is never killed: the restart fails
/// and says who holds it.
#[test]
fn a_restart_never_kills_a_process_that_is_not_a_demo_app() {
    let app = App::new();
    let squatter = std::net::TcpListener::bind(app.addr).unwrap();
    let status = app.spawn_restart("1.0.0", None).wait().unwrap();
    let err = std::fs::read_to_string(app.stderr_path("1.0.0")).unwrap();
    assert!(!status.success());
    assert!(err.contains("which is not a demo app"), "{err}");
    drop(squatter);
}
