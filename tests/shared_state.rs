//! A handler with shared state, as the crate docs and README show it: a
//! key-value store in `Arc<Mutex<HashMap>>` inside the handler struct. A
//! SET on one connection is seen by a GET on another, over in-memory test
//! connections and over a real server's.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use common::{start, within};
use switchboard::testing::{Served, TestConnection};
use switchboard::{Connection, Handler};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest line read: a client cannot make the server buffer more.
const MAX_LINE: u64 = 1024;

/// The crate docs' store, unchanged.
#[derive(Clone, Default)]
struct Kv {
    store: Arc<Mutex<HashMap<String, String>>>,
}

impl Kv {
    fn apply(&self, command: &str) -> String {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let mut words = command.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("SET"), Some(key), Some(value)) => {
                store.insert(key.to_owned(), value.to_owned());
                "OK\n".to_owned()
            }
            (Some("GET"), Some(key), None) => match store.get(key) {
                Some(value) => format!("{value}\n"),
                None => "NONE\n".to_owned(),
            },
            _ => "ERR unknown command\n".to_owned(),
        }
    }
}

impl Handler for Kv {
    type Error = std::io::Error;

    async fn handle(&self, conn: Connection) -> Result<(), Self::Error> {
        let mut shutdown = conn.shutdown_requested();
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            let mut limited = (&mut conn).take(MAX_LINE);
            let read = tokio::select! {
                read = limited.read_line(&mut line) => read?,
                () = &mut shutdown => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
            let Some(command) = line.strip_suffix('\n') else {
                return conn.write_all(b"ERR line too long\n").await;
            };
            let reply = self.apply(command.trim_end_matches('\r'));
            conn.write_all(reply.as_bytes()).await?;
        }
    }
}

/// Sends one command and reads its one-line reply (bounded).
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut BufReader<S>,
    command: &str,
) -> String {
    within(
        "the write",
        client.write_all(format!("{command}\n").as_bytes()),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    within("the reply", client.read_line(&mut reply))
        .await
        .unwrap();
    reply
}

#[tokio::test]
async fn test_connections_share_one_store() {
    let kv = Kv::default();
    let mut clients = Vec::new();
    let mut handlers = Vec::new();
    for id in 1..=3 {
        let Served {
            client,
            shutdown,
            task,
            ..
        } = TestConnection::new().id(id).serve(kv.clone());
        clients.push(BufReader::new(client));
        handlers.push((shutdown, task));
    }

    assert_eq!(ask(&mut clients[1], "GET colour").await, "NONE\n");
    assert_eq!(ask(&mut clients[0], "SET colour blue").await, "OK\n");
    assert_eq!(ask(&mut clients[1], "GET colour").await, "blue\n");
    assert_eq!(ask(&mut clients[2], "GET colour").await, "blue\n");
    // The last connection's write is what the first one reads back.
    assert_eq!(ask(&mut clients[2], "SET colour dark red").await, "OK\n");
    assert_eq!(ask(&mut clients[0], "GET colour").await, "dark red\n");
    // And the application's own clone sees the same map.
    assert_eq!(
        kv.store.lock().unwrap().get("colour").map(String::as_str),
        Some("dark red")
    );

    for (shutdown, task) in handlers {
        shutdown.shutdown();
        within("the handler to return", task)
            .await
            .expect("no panic")
            .expect("the handler's result");
    }
}

#[tokio::test]
async fn a_server_shares_its_one_handler_across_connections() {
    let kv = Kv::default();
    let running = start(kv.clone(), |b| b).await;
    let mut first = BufReader::new(running.connect().await);
    let mut second = BufReader::new(running.connect().await);
    assert_eq!(ask(&mut first, "SET answer 42").await, "OK\n");
    assert_eq!(ask(&mut second, "GET answer").await, "42\n");
    assert_eq!(ask(&mut second, "GET question").await, "NONE\n");
    let report = running.stop().await;
    assert_eq!(report.accepted, 2, "{report}");
    assert_eq!(
        report.completed, 2,
        "the handlers return on the notice: {report}"
    );
}

#[tokio::test]
async fn a_line_longer_than_the_bound_is_refused() {
    let served = TestConnection::new().serve(Kv::default());
    let mut client = BufReader::new(served.client);
    let long = vec![b'x'; MAX_LINE as usize + 1];
    within("the write", client.write_all(&long)).await.unwrap();
    let mut rest = String::new();
    within("the reply and close", client.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, "ERR line too long\n");
    within("the handler", served.task)
        .await
        .unwrap()
        .expect("the refusal is the handler's answer, not an error");
}
