//! The machine as every benchmark sees it — redline's (`benches/`) and the example API's
//! (`example-api/benches/`), which include this file by path: CPU time of a process and a
//! core's busy/steal time from /proc, CPU pinning of the load generator and of the systems
//! under test, and the median that every interleaved comparison reports.

use std::path::Path;
use std::process::{Command, Stdio};

/// The median (mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process (all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0], utime is field 14 overall → [11], stime [12].
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// One CPU's time from `/proc/stat`, in clock ticks since boot.
#[derive(Debug, Clone, Copy)]
pub struct CoreTicks {
    /// user + nice + system + irq + softirq: whoever ran on it.
    pub busy: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
    /// busy + steal + idle + iowait.
    pub total: u64,
}

/// The time of CPU `cpu` so far (`None` if `/proc/stat` does not list it).
pub fn core_ticks(cpu: usize) -> Option<CoreTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = f.try_into().ok()?;
    let busy = user + nice + system + irq + softirq;
    Some(CoreTicks {
        busy,
        steal,
        total: busy + steal + idle + iowait,
    })
}

/// Online CPUs of the machine (not of this process: it may have pinned itself).
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// Restricts the calling thread — the whole process when called before any other thread
/// exists, as threads inherit it — to `cpus`.
pub fn pin_self(cpus: std::ops::Range<usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Whether `program` is on the PATH.
pub fn which(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command running `program` on CPU `cpu` only (through `taskset`, when there is a CPU to
/// give it and `taskset` exists), or anywhere.
pub fn pinned_command(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) if which("taskset") => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        _ => Command::new(program),
    }
}
