//! A database redline cannot use at start-up stops it with a message that names the file and
//! says what to do: a file that is not a database or is damaged, a file system mounted
//! read-only, a database locked by another process, another redline on the same data directory.

use std::path::Path;
use std::time::Duration;

use redline::app::App;
use redline::config::Settings;

use crate::helpers::{TestRedline, port_zero_layer};

use crate::tmpfs;

/// The error `App::build` fails with on `data_dir`.
async fn start_up_error(data_dir: &Path) -> String {
    let settings = Settings::resolve(port_zero_layer(data_dir)).expect("valid settings");
    match App::build(settings).await {
        Ok(_) => panic!("redline started on {}", data_dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_says(error: &str, database: &Path, phrases: &[&str]) {
    assert!(
        error.contains(&database.display().to_string()),
        "the message names {}: {error}",
        database.display()
    );
    for phrase in phrases {
        assert!(
            error.contains(phrase),
            "the message says {phrase:?}: {error}"
        );
    }
}

const NOT_A_DATABASE: &[&str] = &[
    "is not a SQLite database (or is damaged)",
    "move it aside and redline will create a new one, or restore it from a backup",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("redline.db");
    std::fs::write(&database, "these are notes, not a database\n".repeat(200)).unwrap();
    let error = start_up_error(dir.path()).await;
    assert_says(&error, &database, NOT_A_DATABASE);
    // Nothing was written over it.
    assert!(
        std::fs::read_to_string(&database)
            .unwrap()
            .starts_with("these are notes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("redline.db");
    // A database redline made, then damaged: its first page (the schema) overwritten past the
    // 100-byte file header.
    TestRedline::start_in(port_zero_layer(dir.path()))
        .await
        .stop()
        .await;
    let mut bytes = std::fs::read(&database).unwrap();
    assert!(bytes.len() > 4096, "a database of several pages");
    bytes[100..4096].fill(0xA5);
    std::fs::write(&database, &bytes).unwrap();
    let error = start_up_error(dir.path()).await;
    assert_says(&error, &database, NOT_A_DATABASE);
}

const CANNOT_BE_WRITTEN: &[&str] = &[
    "cannot be written",
    "check the file system is mounted read-write and the permissions",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_on_a_read_only_file_system_is_named_with_what_to_do() {
    let disk = tmpfs::Tmpfs::mount(16 << 20);
    let data_dir = disk.path().join("data");
    TestRedline::start_in(port_zero_layer(&data_dir))
        .await
        .stop()
        .await;
    disk.remount_read_only().expect("remount read-only");
    let error = start_up_error(&data_dir).await;
    assert_says(&error, &data_dir.join("redline.db"), CANNOT_BE_WRITTEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_on_a_read_only_file_system_is_named_with_what_to_do() {
    let disk = tmpfs::Tmpfs::mount(1 << 20);
    disk.remount_read_only().expect("remount read-only");
    let error = start_up_error(disk.path()).await;
    assert_says(&error, &disk.path().join("redline.db"), CANNOT_BE_WRITTEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("redline.db");
    TestRedline::start_in(port_zero_layer(dir.path()))
        .await
        .stop()
        .await;
    // Another program holds a write transaction open for longer than redline waits.
    let other = rusqlite::Connection::open(&database).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let error = start_up_error(dir.path()).await;
    assert_says(
        &error,
        &database,
        &["is locked by another process: is another redline using this data directory?"],
    );
    other.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_redline_on_the_same_data_directory_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestRedline::start_in(port_zero_layer(dir.path())).await;
    let error = start_up_error(dir.path()).await;
    assert_says(
        &error,
        &dir.path().join("redline.db"),
        &["is locked by another process: is another redline using this data directory?"],
    );
    // The first goes on serving, and once it has stopped the directory is free again.
    let (status, _) = first.get("/healthz").await;
    assert_eq!(status, 200);
    first.stop().await;
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        TestRedline::start_in(port_zero_layer(dir.path())),
    )
    .await
    .expect("starts");
    second.stop().await;
}
