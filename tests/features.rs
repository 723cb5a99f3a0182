//! Optional parts are optional: a server built without the default features
//! pulls in none of the dependencies that only the PROXY protocol, the
//! handover or TLS need. Asks `cargo tree` (offline, from the lock file)
//! for the dependency graph of each feature set.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The packages (names only) in the normal dependency graph with `flags`.
fn packages(flags: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let child = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(flags)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo runs");
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("cargo tree's output"),
        Err(_) => {
            // Ours to end: the `cargo tree` this test started.
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("cargo tree {flags:?} did not finish within 120 s");
        }
    };
    assert!(
        output.status.success(),
        "cargo tree {flags:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Crates the library needs in no configuration (the handover used
/// tokio-util once; tests and examples still may).
const NEVER: &[&str] = &["tokio-util", "futures-sink"];
/// Crates only TLS needs.
const TLS_ONLY: &[&str] = &["tokio-rustls", "rustls", "rustls-pki-types", "ring"];
/// Crates only the `metrics` feature needs.
const METRICS_ONLY: &[&str] = &["metrics", "rapidhash"];

fn assert_absent(packages: &[String], absent: &[&str], what: &str) {
    for name in absent {
        assert!(
            !packages.iter().any(|p| p == name),
            "{what}: {name} is in the dependency graph: {packages:?}"
        );
    }
}

fn assert_present(packages: &[String], present: &[&str], what: &str) {
    for name in present {
        assert!(
            packages.iter().any(|p| p == name),
            "{what}: {name} is missing from the dependency graph: {packages:?}"
        );
    }
}

#[test]
fn without_default_features_no_optional_dependency_is_built() {
    let none = packages(&["--no-default-features"]);
    assert_present(&none, &["tokio", "switchboard"], "no features");
    assert_absent(&none, NEVER, "no features");
    assert_absent(&none, TLS_ONLY, "no features");
    assert_absent(&none, METRICS_ONLY, "no features");
}

#[test]
fn each_feature_brings_only_its_own_dependencies() {
    let defaults = packages(&[]);
    assert_absent(&defaults, NEVER, "defaults (handover on)");
    assert_absent(&defaults, TLS_ONLY, "defaults (TLS is opt-in)");
    assert_absent(&defaults, METRICS_ONLY, "defaults (metrics are opt-in)");

    let proxy = packages(&["--no-default-features", "--features", "proxy-protocol"]);
    assert_absent(&proxy, NEVER, "proxy-protocol alone");
    assert_absent(&proxy, TLS_ONLY, "proxy-protocol alone");

    let tls = packages(&["--no-default-features", "--features", "tls"]);
    assert_present(&tls, TLS_ONLY, "tls alone");
    assert_absent(&tls, NEVER, "tls alone");
    assert_absent(&tls, METRICS_ONLY, "tls alone");

    let metrics = packages(&["--no-default-features", "--features", "metrics"]);
    assert_present(&metrics, METRICS_ONLY, "metrics alone");
    assert_absent(&metrics, TLS_ONLY, "metrics alone");
    assert_absent(&metrics, NEVER, "metrics alone");
}
