//! The systems under test as child processes: the release `redline` (or `REDLINE_BIN`), an
//! older build (`REDLINE_BASELINE_BIN`) and `rotel-agent` (blackhole exporter), each with a
//! temporary data directory, listening on 127.0.0.1 only, pinned to core 1 with `taskset`, and
//! stopped when dropped (SIGTERM, then SIGKILL) or when the benchmark dies (PR_SET_PDEATHSIG).

use crate::host::{self, cores, pin_self};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// A system under test, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Sut {
    pub name: &'static str,
    child: Child,
    pub grpc: SocketAddr,
    /// OTLP/HTTP (redline only).
    pub http: Option<SocketAddr>,
    /// Dashboard, API and /metrics (redline only).
    pub web: Option<SocketAddr>,
    dir: tempfile::TempDir,
}

impl Sut {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (redline's database is `redline.db` in it).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended ("exit code 1", "signal 6"), or None while it runs.
    pub fn exit_status(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok()??;
        Some(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("{status}"),
        })
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins this process (the load generator) to core 0 when there are two cores; call before
/// any thread exists so every thread inherits it.
pub fn pin_generator() {
    if cores() >= 2 {
        pin_self(0..1);
    }
}

/// Prints the CPU model and how the benchmark pins itself and the systems under test.
pub fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    println!("machine: {} cores, {model}", cores());
    println!(
        "pinning: generator on core 0, system under test on core 1 ({})",
        if cores() >= 2 {
            "taskset"
        } else {
            "not pinned: one core"
        }
    );
}

/// A command pinned to core 1 (when there is one), dying with this process.
fn pinned_command(program: &Path) -> Command {
    let mut command = host::pinned_command(program, (cores() >= 2).then_some(1));
    // SAFETY: prctl is async-signal-safe; it only sets the parent-death signal of the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

pub fn redline_binary() -> PathBuf {
    std::env::var_os("REDLINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_redline")))
}

pub fn start_redline(extra: &[&str]) -> Result<Sut> {
    start_redline_binary(&redline_binary(), "redline", extra)
}

/// An older build to compare with, interleaved in the same run (`REDLINE_BASELINE_BIN`).
pub fn baseline_binary() -> Option<PathBuf> {
    std::env::var_os("REDLINE_BASELINE_BIN").map(PathBuf::from)
}

pub fn start_redline_binary(binary: &Path, name: &'static str, extra: &[&str]) -> Result<Sut> {
    let dir = tempfile::tempdir()?;
    let mut command = pinned_command(binary);
    command
        .args([
            "serve",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--web-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("stderr.log"),
        )?));
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // Keeps reading to the end so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let mut sut = Sut {
        name,
        child,
        grpc: "127.0.0.1:0".parse()?,
        http: None,
        web: None,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut grpc = None;
    while sut.web.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| "redline did not print its addresses within 30 s")?;
        let addr_after = |marker: &str| -> Option<SocketAddr> {
            let rest = line.split(marker).nth(1)?.trim();
            let rest = rest
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            rest.parse().ok()
        };
        if line.contains("OTLP/gRPC listening on") {
            grpc = addr_after("OTLP/gRPC listening on");
        } else if line.contains("OTLP/HTTP listening on") {
            sut.http = addr_after("OTLP/HTTP listening on");
        } else if line.contains("dashboard and API on") {
            sut.web = addr_after("dashboard and API on");
        }
    }
    sut.grpc = grpc.ok_or("redline did not print its OTLP/gRPC address")?;
    Ok(sut)
}

pub fn rotel_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROTEL_AGENT") {
        return Some(PathBuf::from(path));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.exists().then_some(path)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn start_rotel(binary: &Path) -> Result<Sut> {
    start_rotel_with(binary, "rotel", &["--exporter", "blackhole"], true)
}

/// rotel-agent forwarding everything it receives over OTLP/gRPC (uncompressed, as redline
/// forwards) to `upstream`.
pub fn start_rotel_forwarding(binary: &Path, upstream: SocketAddr) -> Result<Sut> {
    let endpoint = format!("http://{upstream}");
    let args = [
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        &endpoint,
        "--otlp-exporter-protocol",
        "grpc",
        "--otlp-exporter-compression",
        "none",
    ];
    start_rotel_with(binary, "rotel", &args, true)
}

/// rotel-agent with the blackhole exporter as the upstream both forwarding contenders send to;
/// on core 0 with the generator, so that core 1 is the contender's alone.
pub fn start_rotel_upstream(binary: &Path) -> Result<Sut> {
    start_rotel_with(binary, "upstream", &["--exporter", "blackhole"], false)
}

fn start_rotel_with(
    binary: &Path,
    name: &'static str,
    exporter: &[&str],
    on_core_1: bool,
) -> Result<Sut> {
    let dir = tempfile::tempdir()?;
    let (grpc_port, http_port) = (free_port()?, free_port()?);
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse()?;
    let mut command = if on_core_1 {
        pinned_command(binary)
    } else {
        host::pinned_command(binary, (cores() >= 2).then_some(0))
    };
    command
        .args(["start", "--otlp-grpc-endpoint"])
        .arg(grpc.to_string())
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http_port}"))
        .args(exporter)
        .arg("--pid-file")
        .arg(dir.path().join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.path().join("rotel.log"))
        .stdout(Stdio::from(std::fs::File::create(
            dir.path().join("stdout.log"),
        )?))
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("stderr.log"),
        )?));
    let child = command.spawn()?;
    let mut sut = Sut {
        name,
        child,
        grpc,
        http: None,
        web: None,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(grpc).is_err() {
        if Instant::now() > deadline || !sut.alive() {
            sut.stop();
            return Err("rotel-agent did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(sut)
}
