//! The echo handler: every byte read is written back, until EOF or shutdown.

use std::io;

use switchboard::{Connection, Handler};
use tokio::io::AsyncWriteExt;

/// The most bytes read (and so written back) at a time.
pub(crate) const CHUNK: usize = 4096;

/// Echoes bytes back until the client closes; once shutdown begins it
/// finishes writing the chunk in hand and returns.
///
/// It holds no buffer while it waits ([`Connection::read_chunk`]), so an
/// idle echo connection costs about a kilobyte (tokio's task and socket
/// registration) rather than a buffer more.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Echo;

impl Handler for Echo {
    type Error = io::Error;

    async fn handle(&self, mut conn: Connection) -> io::Result<()> {
        // `Unpin`: no pinning needed to race it in every iteration.
        let mut shutdown = conn.shutdown_requested();
        loop {
            let chunk = tokio::select! {
                biased;
                chunk = conn.read_chunk(CHUNK) => chunk?,
                () = &mut shutdown => return Ok(()),
            };
            if chunk.is_empty() {
                return Ok(());
            }
            conn.write_all(&chunk).await?;
            if conn.is_shutting_down() {
                return Ok(());
            }
        }
    }
}
