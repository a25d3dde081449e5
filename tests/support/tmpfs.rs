//! A small tmpfs for storage fault tests: a file system that fills up after a few MiB and can
//! be remounted read-only. Mounting needs root (tests run as root here and in CI); without it
//! the test fails and says so. Shared, by `#[path]`, between the library's unit tests and the
//! integration tests.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily, so open files cannot keep it) when dropped.
pub struct Tmpfs {
    mount_point: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` on a new temporary directory.
    pub fn mount(size_bytes: u64) -> Tmpfs {
        let mount_point = tempfile::tempdir().expect("a mount point");
        let target = mount_point.path().to_str().expect("a UTF-8 temp path");
        let size = format!("size={size_bytes}");
        if let Err(e) = run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", target]) {
            panic!("this test mounts a tmpfs and needs root (CAP_SYS_ADMIN): {e}");
        }
        Tmpfs { mount_point }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Writes a file until the file system is full; returns its path (delete it to free the
    /// space).
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial block too: nothing may be left.
        while let Ok(written) = file.write(&block[..512]) {
            if written == 0 {
                break;
            }
        }
        path
    }

    /// Remounts read-only. The kernel refuses (busy) while any file is open for writing on it.
    pub fn remount_read_only(&self) -> Result<(), String> {
        self.remount("remount,ro")
    }

    pub fn remount_read_write(&self) {
        self.remount("remount,rw").expect("remount read-write");
    }

    fn remount(&self, options: &str) -> Result<(), String> {
        let target = self.path().to_str().expect("a UTF-8 temp path");
        run("mount", &["-o", options, target])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = self.path().to_string_lossy().into_owned();
        if let Err(e) = run("umount", &["-l", &target]) {
            eprintln!("leaving the test tmpfs mounted: {e}");
        }
    }
}
