//! A throwaway replicated PostgreSQL on loopback for tests and `demo --postgres`: a primary
//! (`initdb`, `pg_ctl`) and a streaming hot standby cloned from it (`pg_basebackup -R`), each
//! in its own directory under one parent, on free ports. PostgreSQL refuses to run as root,
//! so under root the servers run as the `postgres` user (`runuser`), owning the parent.
//! Durability is off (`fsync = off`): these clusters hold generated data only. The calls
//! block (they run the server programs); call them from `spawn_blocking` in async code, or use
//! [`Replicated`], which does, and which the demo configures the API from.

use crate::config::Config;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the PostgreSQL start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Which server of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Primary,
    Standby,
}

/// A running primary and standby; both are stopped on drop.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub primary_port: u16,
    pub standby_port: u16,
}

/// The newest installed PostgreSQL's programs: `PG_BIN`, else Debian's
/// `/usr/lib/postgresql/<version>/bin`, else whatever is on `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return p.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_default()
}

fn free_port() -> Result<u16, ClusterError> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Io("free port".into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ClusterError::Io("free port".into(), e))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// Creates both servers under `dir` (which must exist) and starts them.
    pub fn start(dir: &Path) -> Result<PgCluster, ClusterError> {
        // The programs run in `dir`: relative paths would not resolve from there.
        let dir = &std::path::absolute(dir)
            .map_err(|e| ClusterError::Io(dir.display().to_string(), e))?;
        let c = PgCluster {
            dir: dir.to_path_buf(),
            bin: bin_dir(),
            primary_port: free_port()?,
            standby_port: free_port()?,
        };
        if is_root() {
            c.run(
                "chown",
                Command::new("chown").arg("-R").arg("postgres:").arg(dir),
            )?;
        }
        let primary = c.data(Server::Primary);
        c.as_owner("initdb", |cmd| {
            cmd.arg("-D").arg(&primary).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
        })?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            c.primary_port,
            dir.display()
        );
        append(&primary.join("postgresql.conf"), &conf)?;
        c.start_server(Server::Primary)?;
        let standby = c.data(Server::Standby);
        let port = c.primary_port.to_string();
        c.as_owner("pg_basebackup", |cmd| {
            cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-R"])
                .args(["-X", "stream", "-c", "fast", "-D"])
                .arg(&standby)
        })?;
        append(
            &standby.join("postgresql.conf"),
            &format!("\nport = {}\n", c.standby_port),
        )?;
        c.start_server(Server::Standby)?;
        Ok(c)
    }

    /// Like [`start`](Self::start), in `dir` created afresh: servers a killed run left
    /// running there are stopped and its data removed first.
    pub fn recreate(dir: &Path) -> Result<PgCluster, ClusterError> {
        let io = |e| ClusterError::Io(dir.display().to_string(), e);
        if dir.exists() {
            let dir = std::path::absolute(dir).map_err(io)?;
            let old = PgCluster {
                dir: dir.clone(),
                bin: bin_dir(),
                primary_port: 0,
                standby_port: 0,
            };
            for server in [Server::Standby, Server::Primary] {
                if old.data(server).join("postmaster.pid").exists() {
                    // Whether it still runs or only its pid file is left, it is gone after.
                    let _ = old.stop_server(server, true);
                }
            }
            // (Its drop asks both to stop once more: a no-op now.)
            drop(old);
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        PgCluster::start(dir)
    }

    pub fn url(&self, server: Server) -> String {
        let port = match server {
            Server::Primary => self.primary_port,
            Server::Standby => self.standby_port,
        };
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    fn data(&self, server: Server) -> PathBuf {
        self.dir.join(match server {
            Server::Primary => "primary",
            Server::Standby => "standby",
        })
    }

    pub fn start_server(&self, server: Server) -> Result<(), ClusterError> {
        let data = self.data(server);
        let log = data.with_extension("log");
        self.as_owner("pg_ctl", |cmd| {
            cmd.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "start"])
        })
    }

    /// Stops a server: `immediate` is a crash (no shutdown checkpoint), else a fast shutdown.
    pub fn stop_server(&self, server: Server, immediate: bool) -> Result<(), ClusterError> {
        let data = self.data(server);
        let mode = if immediate { "immediate" } else { "fast" };
        self.as_owner("pg_ctl", |cmd| {
            cmd.arg("-D").arg(&data).args(["-m", mode, "-w", "stop"])
        })
    }

    fn as_owner(
        &self,
        program: &str,
        args: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Result<(), ClusterError> {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        args(&mut cmd);
        // Relative paths and the server's working directory must be the owner's to read.
        cmd.current_dir(&self.dir);
        // Its own process group: a terminal's Ctrl-C reaches only the demo, which stops the
        // servers itself once the API has stopped using them.
        cmd.process_group(0);
        self.run(program, &mut cmd)
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<(), ClusterError> {
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| ClusterError::Io(what.to_string(), e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Command {
            what: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| ClusterError::Io(path.display().to_string(), e))
}

impl std::fmt::Display for Replicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.cluster();
        write!(
            f,
            "primary 127.0.0.1:{}, streaming standby 127.0.0.1:{} (reads)",
            c.primary_port, c.standby_port
        )
    }
}

/// A [`PgCluster`] owned by async code: started and stopped off the runtime's threads.
pub struct Replicated {
    cluster: Option<PgCluster>,
}

impl Replicated {
    /// Starts a primary and a standby in `dir`, created afresh ([`PgCluster::recreate`]).
    pub async fn start(dir: PathBuf) -> Result<Replicated, ClusterError> {
        let cluster = tokio::task::spawn_blocking(move || PgCluster::recreate(&dir)).await??;
        Ok(Replicated {
            cluster: Some(cluster),
        })
    }

    pub fn cluster(&self) -> &PgCluster {
        self.cluster.as_ref().expect("running until stopped")
    }

    /// Points the API at the primary for writes and at the standby for reads.
    pub fn configure(&self, cfg: &mut Config) {
        cfg.database_url = Some(self.cluster().url(Server::Primary));
        cfg.replica_urls = vec![self.cluster().url(Server::Standby)];
    }

    /// Stops both servers (fast shutdown) and waits for them.
    pub async fn stop(mut self) {
        if let Some(c) = self.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || drop(c)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop_server(Server::Standby, false);
        let _ = self.stop_server(Server::Primary, false);
    }
}
