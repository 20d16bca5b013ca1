//! A small TCP service that parses untrusted input in killable worker processes: the job
//! forkworker exists for, on a multi-threaded tokio runtime.
//!
//! Each connection sends lines; each line is parsed by a worker of a shared pool
//! (`ParserPool`, `Send + Sync + Clone`) and answered with the document's summary or the
//! error. A line that makes the parser hang is killed by the pool's timeout, one that crashes
//! it is reported as a crash: the server, and every other connection, go on. A connection
//! that goes away cancels its calls (dropping a call's future cancels it).
//!
//! ```sh
//! cargo run --release --example server                 # serves, runs a demo client, exits
//! cargo run --release --example server -- --serve      # serves on 127.0.0.1:7878 until Ctrl-C
//! ```
//! Then, for example: `printf '1 2 3\nhang\ncrash\n' | nc 127.0.0.1 7878`.

use std::time::{Duration, Instant};

use forkworker::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What a parsed line is.
#[derive(Debug, Serialize, Deserialize)]
pub struct Doc {
    pub numbers: Vec<i64>,
    pub sum: i64,
}

/// A parser of untrusted input: here a list of integers, with two inputs that stand for what
/// a real parser (an FFI library, a decoder) does on a hostile file.
pub struct Parser;

#[forkworker::worker]
impl Parser {
    pub fn parse(&self, input: &[u8]) -> Result<Doc, String> {
        let text = std::str::from_utf8(input).map_err(|e| format!("not UTF-8: {e}"))?;
        match text.trim() {
            // A parser stuck in a loop on a crafted input.
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(1));
            },
            // A parser that writes through a wild pointer.
            "crash" => {
                // SAFETY: not safe at all: crashing the worker is the point.
                unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
                unreachable!()
            }
            text => {
                let numbers = text
                    .split_whitespace()
                    .map(|w| w.parse::<i64>().map_err(|e| format!("{w:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let sum = numbers.iter().try_fold(0i64, |a, &n| a.checked_add(n));
                let sum = sum.ok_or("the sum overflows")?;
                Ok(Doc { numbers, sum })
            }
        }
    }
}

/// One line's answer.
async fn answer(pool: &ParserPool, line: &str) -> String {
    match pool.parse(line.as_bytes()).await {
        Ok(Ok(doc)) => format!("ok: {} numbers, sum {}", doc.numbers.len(), doc.sum),
        Ok(Err(parse_error)) => format!("invalid: {parse_error}"),
        Err(CallError::Timeout { .. }) => "refused: the parser took too long (killed)".into(),
        Err(CallError::Crashed { cause, .. }) => format!("refused: the parser crashed ({cause})"),
        Err(e) => format!("error: {e}"),
    }
}

async fn serve_connection(pool: ParserPool, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = answer(&pool, &line).await;
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
    Ok(())
}

/// Sends each line on its own connection, at once, and prints what came back.
async fn demo_client(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let inputs = ["1 2 3", "hang", "40 2", "crash", "7 x", "10 20 30"];
    let clients = inputs.iter().map(|&input| async move {
        let t = Instant::now();
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("{input}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(&mut stream).read_line(&mut reply).await?;
        Ok::<_, std::io::Error>((input, reply.trim().to_owned(), t.elapsed()))
    });
    for result in futures::future::join_all(clients).await {
        let (input, reply, took) = result?;
        println!("{input:>10?} -> {reply} ({} ms)", took.as_millis());
    }
    Ok(())
}

/// A ticker on the same runtime: how late a 5 ms sleep woke, at worst, while the pool
/// worked (no call blocks an executor thread).
async fn ticker(stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let mut worst = Duration::ZERO;
    while !*stop.borrow() {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        worst = worst.max(t.elapsed().saturating_sub(Duration::from_millis(5)));
    }
    worst
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let pool = ParserPool::builder("Parser", Parser)
        .workers(4)
        .timeout(Duration::from_millis(500))
        .on_error(|call, log| log.warn(format_args!("call {}: {:?}", call.id(), call.error())))
        .start()?;
    let listener = TcpListener::bind(if serve {
        "127.0.0.1:7878"
    } else {
        "127.0.0.1:0"
    })
    .await?;
    let addr = listener.local_addr()?;
    println!("parsing untrusted input on {addr}");
    let accepting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                tokio::spawn(serve_connection(pool.clone(), stream));
            }
        })
    };
    if serve {
        tokio::signal::ctrl_c().await?;
    } else {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let ticking = tokio::spawn(ticker(watch));
        demo_client(addr).await?;
        stop.send(true)?;
        println!(
            "a 5 ms ticker on the same runtime woke at worst {:.1} ms late",
            ticking.await?.as_secs_f64() * 1e3
        );
    }
    accepting.abort();
    let stats = pool.stats();
    println!("{stats}");
    // The last clone goes with `pool`: the workers are stopped and reaped.
    drop(pool);
    Ok(())
}
