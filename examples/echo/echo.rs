//! The echo handler: every byte read is written back, until EOF or shutdown.

use std::io;

use bytes::BytesMut;
use switchboard::{Connection, Handler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most bytes read (and so written back) at a time.
pub(crate) const CHUNK: usize = 4096;

/// Echoes bytes back until the client closes; once shutdown begins it
/// finishes writing the chunk in hand and returns.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Echo;

impl Handler for Echo {
    type Error = io::Error;

    async fn handle(&self, mut conn: Connection) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let shutdown = conn.shutdown_requested();
        tokio::pin!(shutdown);
        loop {
            buf.clear();
            let n = tokio::select! {
                biased;
                n = conn.read_buf(&mut buf) => n?,
                () = &mut shutdown => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf).await?;
            if conn.is_shutting_down() {
                return Ok(());
            }
        }
    }
}
