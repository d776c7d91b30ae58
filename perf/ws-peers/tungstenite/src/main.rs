//! tokio-tungstenite's echo server (its examples/echo-server.rs: a task per
//! client, `accept_async`, the text and binary messages forwarded back),
//! the peer of perf/ws.sh. Usage: `ws-peer-tungstenite ADDR [READ_BUFFER]`.
//!
//! READ_BUFFER sets tungstenite's read buffer in bytes; without it the
//! default config is used (128 KiB, zero-filled before every read).

use futures_util::{StreamExt, TryStreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let config = args.next().map(|bytes| {
        let bytes = bytes.parse().expect("READ_BUFFER: a number of bytes");
        WebSocketConfig::default().read_buffer_size(bytes)
    });
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("tungstenite: listening on {}", listener.local_addr()?);
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(accept_connection(stream, config));
    }
    Ok(())
}

async fn accept_connection(stream: TcpStream, config: Option<WebSocketConfig>) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, config).await else {
        return;
    };
    let (write, read) = ws.split();
    // Only text and binary messages go back.
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
