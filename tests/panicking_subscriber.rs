//! A log subscriber that panics when a connection's end is logged cannot
//! leave the connection's place taken or the drain waiting: the task's
//! accounting is done before it logs.
//!
//! A test binary of its own because it installs a global subscriber.

mod common;

use std::time::Duration;

use common::{start, within};
use switchboard::{Connection, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// Panics on every "connection closed" event.
struct PanicOnClose;

struct Message(bool);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == "connection closed" {
            self.0 = true;
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for PanicOnClose {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            panic!("a broken subscriber");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_panicking_at_a_connections_end_frees_its_place() {
    let subscriber = Registry::default()
        .with(PanicOnClose.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let greet = handler_fn(|mut conn: Connection| async move {
        conn.write_all(b"hi").await?;
        Ok::<_, std::io::Error>(())
    });
    // One place: the second client is served only if the first one's place
    // was freed despite the panic.
    let running = start(greet, |b| {
        b.max_connections(1).drain_timeout(Duration::from_secs(30))
    })
    .await;
    for _ in 0..3 {
        let mut client = running.connect().await;
        let mut greeting = Vec::new();
        within("a greeting", client.read_to_end(&mut greeting))
            .await
            .unwrap();
        assert_eq!(greeting, b"hi");
    }
    // The drain does not wait for the panicked guards: they counted first.
    let report = within("the drain", running.stop()).await;
    assert_eq!(report.accepted, 3);
    assert_eq!(report.completed, 3, "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
}
