//! A TCP relay that puts a network between the clients and the TLS server: every chunk read on
//! one side is written to the other half a round trip later (`rtt / 2` each way, order kept,
//! no bandwidth limit). Run as a child process (`lurk-bench relay`) so that its CPU time is
//! nobody's. The Crypto Service stays on loopback: the case of a CS beside its engine and a
//! server across a network.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::handshake::{self, Client, Mode, Proc};
use crate::report::Target;
use crate::sys::{self, ms, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Listens on 127.0.0.1:`port`, relays each connection to 127.0.0.1:`to`. Prints `READY`.
pub(crate) fn run(port: u16, to: u16, rtt: Duration) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("READY 127.0.0.1:{port}");
        loop {
            let (a, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(b) = TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                let one_way = rtt / 2;
                tokio::join!(pump(ar, bw, one_way), pump(br, aw, one_way));
            });
        }
    })
}

/// Copies `from` to `to`, each chunk `delay` after it was read; EOF is passed on the same way.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay, Vec::new()));
                    return;
                }
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if bytes.is_empty() || to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Starts `lurk-bench relay` from a free port to `to`.
fn start(to: u16, rtt: Duration) -> Result<(Proc, u16), BoxError> {
    let port = sys::free_port();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("relay")
        .arg("--port")
        .arg(port.to_string())
        .arg("--to")
        .arg(to.to_string())
        .arg("--rtt-ms")
        .arg(rtt.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Err(e) = handshake::wait_for_line(&mut child, "READY") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((Proc { child }, port))
}

/// One (round trip, mode, client) figure.
struct Row {
    rtt: Duration,
    /// The TCP handshake delayed by a round trip too (`handshake::get_once_connect`).
    tcp_rtt: bool,
    mode: Mode,
    client: String,
    lat: Lat,
    resumed: f64,
    critical: Option<usize>,
    errors: usize,
}

/// Every client through relays of each round trip in `rtts` to the rustls server on
/// `server_port`; `clients(mode)` gives (name, client, is LURK) for a mode. Returns the markdown
/// section and notes.
pub(crate) async fn measure(
    server_port: u16,
    server_pid: u32,
    rtts: &[Duration],
    clients: impl Fn(Mode) -> Result<Vec<(String, Client, bool)>, BoxError>,
    n: usize,
    budget: Duration,
) -> Result<(String, Vec<String>, Vec<Target>), BoxError> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &rtt in rtts {
        let (relay, port) = start(server_port, rtt)?;
        for mode in [Mode::Full, Mode::Resumed] {
            for ((name, client, lurk), tcp_rtt) in clients(mode)?
                .into_iter()
                .flat_map(|c| [(c.clone(), false), (c, true)])
            {
                crate::step(&format!(
                    "relay {} ms{} · {} · {name}",
                    rtt.as_millis(),
                    if tcp_rtt { " + TCP handshake" } else { "" },
                    mode.name()
                ));
                let connect_rtt = tcp_rtt.then_some(rtt);
                match handshake::latency_connect(
                    &client,
                    port,
                    (server_pid, None),
                    n,
                    budget,
                    connect_rtt,
                )
                .await
                {
                    Ok((lat, _, resumed, _, errors, critical)) => rows.push(Row {
                        rtt,
                        tcp_rtt,
                        mode,
                        client: name,
                        lat,
                        resumed,
                        critical: lurk.then_some(critical),
                        errors,
                    }),
                    Err(e) => notes.push(format!(
                        "relay {} ms · {} · {name}: failed: {e}",
                        rtt.as_millis(),
                        mode.name()
                    )),
                }
            }
        }
        drop(relay);
    }
    Ok((markdown(&rows), notes, targets(&rows)))
}

/// Issue 10: with a 10 ms server round trip, full and resumed handshakes ≤ 1.05× rustls
/// wall (p50), for each engine mode.
fn targets(rows: &[Row]) -> Vec<Target> {
    rows.iter()
        .filter(|r| r.critical.is_some() && r.rtt == Duration::from_millis(10))
        .filter_map(|r| {
            let b = rows.iter().find(|b| {
                b.rtt == r.rtt && b.tcp_rtt == r.tcp_rtt && b.mode == r.mode && b.critical.is_none()
            })?;
            let x = ms(r.lat.p50) / ms(b.lat.p50).max(1e-9);
            Some((
                format!(
                    "10 ms server round trip{}, {} handshake, {}: wall (p50) ≤ 1.05× rustls",
                    if r.tcp_rtt {
                        " (TCP handshake too; engine: connect_with)"
                    } else {
                        " (TCP handshake not delayed)"
                    },
                    r.mode.name(),
                    r.client
                ),
                format!(
                    "{:.2} ms vs {:.2} ms = {x:.3}×",
                    ms(r.lat.p50),
                    ms(b.lat.p50)
                ),
                Some(x <= 1.05),
            ))
        })
        .collect()
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "### A server across a network (delaying relay)\n\n\
         The rustls server behind a TCP relay (`lurk-bench relay`, its own process) that delays \
         every chunk by half the round trip each way; the CS stays on loopback beside the \
         engine. Same connection as above, concurrency 1. The relay accepts the TCP connection \
         itself, so the TCP handshake is not delayed; every byte after it is: a full rustls \
         handshake then GET and response take two round trips to the server. Rows marked \
         *TCP handshake* also delay the connect by one round trip (the client's connect \
         future waits that long after the loopback connect, as with a server that far): the \
         rustls client sends its ClientHello after it, the engine connects with \
         `Connector::connect_with`, which runs its first CS exchange meanwhile.\n\n\
         | server round trip | mode | client | latency ms p50/p90/p99 | ×rustls p50 | CS round trips before the handshake ends | resumed | n | failed |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows.iter().find(|b| {
            b.rtt == r.rtt && b.tcp_rtt == r.tcp_rtt && b.mode == r.mode && b.critical.is_none()
        });
        let ratio = base.map_or(String::new(), |b| {
            format!("{:.3}×", ms(r.lat.p50) / ms(b.lat.p50).max(1e-9))
        });
        let _ = writeln!(
            s,
            "| {} ms{} | {} | {} | {:.2} / {:.2} / {:.2} | {} | {} | {:.0}% | {} | {} |",
            r.rtt.as_millis(),
            if r.tcp_rtt { " + TCP handshake" } else { "" },
            r.mode.name(),
            r.client,
            ms(r.lat.p50),
            ms(r.lat.p90),
            ms(r.lat.p99),
            ratio,
            r.critical.map_or("—".into(), |c| c.to_string()),
            r.resumed * 100.0,
            r.lat.n,
            r.errors
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay really delays: an echo through it takes at least one round trip.
    #[test]
    fn an_echo_through_the_relay_takes_a_round_trip() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
            let echo_port = echo.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut s, _) = echo.accept().await.unwrap();
                let mut b = [0u8; 5];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            });
            let port = sys::free_port();
            std::thread::spawn(move || run(port, echo_port, Duration::from_millis(40)));
            let mut c = loop {
                if let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let t = std::time::Instant::now();
            c.write_all(b"hello").await.unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"hello");
            assert!(
                t.elapsed() >= Duration::from_millis(40),
                "{:?}",
                t.elapsed()
            );
        });
    }
}
