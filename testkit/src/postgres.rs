//! A real PostgreSQL server for tests, from Debian's `postgresql` package: `initdb` into a
//! temporary directory, listening on 127.0.0.1 at a free port (and a unix socket in the
//! same directory), stopped and removed when the [`PgServer`] is dropped.
//!
//! PostgreSQL refuses to run as root: as root the server runs as the system user
//! `postgres` (which the Debian package creates) or else `nobody`, owning the directory.
//! A killed test process leaves nothing behind either: a watcher stops the server once the
//! process is gone. When PostgreSQL is not installed, [`PgServer::start`] panics with a message that says
//! what to install: a test of the PostgreSQL backend fails then, it never skips.
//! Never used outside tests: no authentication (trust on loopback), no durability against
//! a machine crash (`fsync=off`); a stopped server (`stop`, as a crash of PostgreSQL
//! alone) keeps every committed transaction.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The database superuser the server is created with.
pub const SUPERUSER: &str = "fleetwave";

/// A running test server. Dropping it stops the server and removes its directory.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    databases: AtomicU32,
    /// Only TLS connections over TCP (`start_tls`).
    tls: bool,
}

/// The directory of PostgreSQL's programs (`initdb`, `pg_ctl`, `postgres`): the newest
/// version under `/usr/lib/postgresql`, or what `pg_config --bindir` says.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    bin.join("initdb").exists().then_some(bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// Creates and starts a server. Panics (with what to do) when PostgreSQL is not
    /// installed or does not start.
    pub fn start() -> PgServer {
        PgServer::start_with(None)
    }

    /// A server that accepts TCP connections only over TLS, with this certificate chain
    /// and key (PEM): a client that does not ask for TLS is refused.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgServer {
        PgServer::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PgServer {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: the PostgreSQL store tests need Debian's \
                 `postgresql` package (`apt-get install postgresql`; ./scripts/test installs it)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("fleetwave-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let run_as = is_root().then(|| {
            if user_exists("postgres") {
                "postgres".to_string()
            } else {
                "nobody".to_string()
            }
        });
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown {user} {}", dir.display());
        }
        let data = dir.join("data");
        let mut server = PgServer {
            bin,
            dir,
            data,
            port: 0,
            run_as,
            databases: AtomicU32::new(0),
            tls: tls.is_some(),
        };
        let initdb = server
            .command("initdb")
            .arg("-D")
            .arg(&server.data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        if let Some((cert, key)) = tls {
            server.write_owned("server.crt", cert, 0o644);
            server.write_owned("server.key", key, 0o600);
            // TCP only with TLS; the unix socket (createdb) stays open.
            server.write_owned(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                0o600,
            );
        }
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let out = server.pg_ctl_start();
            if out.status.success() {
                server.watch_owner();
                return server;
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// Writes a file into the data directory, owned by the server's user.
    fn write_owned(&self, name: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.data.join(name);
        std::fs::write(&path, text).expect("write into the data directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(&path)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown {user} {}", path.display());
        }
    }

    fn pg_ctl_start(&self) -> std::process::Output {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if self.tls {
            opts.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "120", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl runs")
    }

    /// A test process that is killed or aborts never runs [`Drop`]: a small shell
    /// watches this process and, once it is gone, stops the server and removes its
    /// directory (it checks once a second; nothing is timed).
    fn watch_owner(&self) {
        let stop = self.command_line("pg_ctl");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// `program` as a shell command line (run as the server's user when root).
    fn command_line(&self, program: &str) -> String {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => format!("runuser -u {user} -- '{}'", path.display()),
            None => format!("'{}'", path.display()),
        }
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server's programs must not find the caller's directory unreadable.
        cmd.current_dir(&self.dir);
        cmd
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database` over TCP on loopback.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new empty database and returns its URL (each test its own database).
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        let out = self
            .command("createdb")
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, &name])
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Stops the server at once (as a crash would); [`PgServer::restart`] starts it again
    /// on the same port with the same data.
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts a stopped server again on its port.
    pub fn restart(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "PostgreSQL did not start again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_takes_databases_and_is_gone_when_dropped() {
        let server = PgServer::start();
        let url = server.create_database();
        assert_eq!(url, server.url("test_0"));
        let ready = server
            .command("pg_isready")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port().to_string(),
                "-d",
                "test_0",
            ])
            .args(["-U", SUPERUSER])
            .status()
            .unwrap();
        assert!(
            ready.success(),
            "the server answers on 127.0.0.1:{}",
            server.port()
        );
        let dir = server.dir.clone();
        let port = server.port();
        drop(server);
        assert!(!dir.exists(), "{} is removed", dir.display());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens on {port} any more"
        );
    }
}
