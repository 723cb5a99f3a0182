//! Helpers shared by the handover tests: bounded waits, listeners to hand
//! over, and a temporary directory for control sockets.

use std::future::Future;
use std::time::Duration;

use super::Inherited;

/// A directory of its own under the system's temporary directory,
/// removed when dropped.
pub(super) fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("switchboard-handover-{name}-"))
        .tempdir()
        .expect("create the test directory")
}

/// The handover timeout in tests: long enough for a loaded CI machine.
pub(super) const STEP: Duration = Duration::from_secs(3);

/// Every await that could hang goes through this.
pub(super) async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub(super) fn tcp_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

pub(super) fn copy_tcp(listener: &std::net::TcpListener) -> Inherited {
    Inherited::Tcp(listener.try_clone().expect("dup"))
}
