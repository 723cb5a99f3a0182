//! The axum scenarios' own parts: `axum::serve` on the example's router (the
//! server switchboard's axum example is compared with), and the h2c load
//! generator. HTTP/1.1 keep-alive load is the harness's own client
//! (`client::http`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ::axum::serve::ListenerExt;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{Budget, Load};
use crate::routes;
use crate::server::{announce, spawn_commands};

/// h2c connections of the load; `clients` streams are spread over them.
pub(crate) const H2_CONNECTIONS: usize = 4;

/// `axum::serve` on the example's router, with `TCP_NODELAY` like every
/// other server of the bench. No graceful shutdown: `exit` ends the process.
pub(crate) async fn axum_serve() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    announce(listener.local_addr().expect("local_addr"));
    spawn_commands(None);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    ::axum::serve(listener, routes::router())
        .await
        .expect("axum::serve");
}

/// `clients` concurrent streams, each one request at a time (`GET /`), over
/// [`H2_CONNECTIONS`] HTTP/2 connections with prior knowledge.
pub(crate) async fn h2c(server: SocketAddr, clients: usize, budget: Budget) -> Load {
    let start = Instant::now();
    let deadline = start + budget.duration;
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut load = Load::default();
    for c in 0..H2_CONNECTIONS {
        let sender = match tokio::time::timeout(budget.op_timeout, connect(server)).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(e)) => {
                load.errors += 1;
                load.first_error
                    .get_or_insert(format!("h2c handshake: {e}"));
                continue;
            }
            Err(_) => {
                load.errors += 1;
                load.first_error
                    .get_or_insert("h2c handshake timed out".to_owned());
                continue;
            }
        };
        let streams = clients / H2_CONNECTIONS + usize::from(c < clients % H2_CONNECTIONS);
        for _ in 0..streams {
            let mut sender = sender.clone();
            let started = Arc::clone(&started);
            tasks.spawn(async move {
                let mut tally = Load::default();
                while Instant::now() < deadline
                    && started.fetch_add(1, Ordering::Relaxed) < budget.max_ops
                {
                    let op = Instant::now();
                    let result = tokio::time::timeout(budget.op_timeout, get(&mut sender)).await;
                    match result {
                        Ok(Ok(())) => {
                            tally.ops += 1;
                            let us = op.elapsed().as_micros();
                            tally
                                .latencies_us
                                .push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Ok(Err(e)) => tally.fail(e),
                        Err(_) => tally.fail("timed out".to_owned()),
                    }
                    // A broken connection fails every stream at once: stop.
                    if tally.errors > 50 {
                        break;
                    }
                }
                tally
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => {
                load.ops += tally.ops;
                load.errors += tally.errors;
                if load.first_error.is_none() {
                    load.first_error = tally.first_error;
                }
                load.latencies_us.extend(tally.latencies_us);
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    load.elapsed = start.elapsed();
    load
}

impl Load {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// One h2c connection, its driver spawned; ends when every sender is gone.
async fn connect(server: SocketAddr) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET /` and its whole body, which must be the greeting.
async fn get(sender: &mut http2::SendRequest<Empty<Bytes>>) -> Result<(), String> {
    let request = Request::get("http://bench/")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if body != routes::HELLO.as_bytes() {
        return Err("not the greeting".to_owned());
    }
    Ok(())
}
