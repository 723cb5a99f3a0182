//! The preamble of a build without the `proxy-protocol` and `tls`
//! features, where no listener has work before its handler: a type with no
//! values, so that `Option<&Arc<Preamble>>` is always `None` and the code
//! that would run one is never reached (the compiler removes it).

use std::sync::Arc;

use crate::Connection;
use crate::stats::Counters;

/// A listener's per-connection work before the handler: there is none.
#[derive(Debug)]
pub(crate) enum Preamble {}

impl Preamble {
    /// There is nothing to do before the handler.
    pub(crate) fn new() -> Option<Arc<Self>> {
        None
    }

    /// Whether connections on this listener have a PROXY header read.
    pub(crate) fn reads_proxy_header(&self) -> bool {
        match *self {}
    }

    /// Never called: there is no preamble to run.
    pub(crate) async fn run(
        &self,
        _conn: Connection,
        _counters: &Counters,
    ) -> Result<Connection, std::convert::Infallible> {
        match *self {}
    }
}
