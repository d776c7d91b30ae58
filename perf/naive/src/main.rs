//! The baseline sockline is measured against: a tokio task per client,
//! `BufReader::lines`, and one `write_all` per reply. Usage: `naive ADDR`.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5001".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("naive: listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write.write_all(b" MSG Received\n").await.is_err() {
                    break;
                }
                if line.eq_ignore_ascii_case("BYE") {
                    break;
                }
            }
        });
    }
}
