//! The example protocol in `examples/kv.rs`, served by the real core.

mod common;
#[path = "../examples/kv.rs"]
mod kv;

use common::{connect, read_n, read_to_close, send, start};
use sockline::Config;

#[test]
fn clients_share_one_store() {
    let server = start(kv::Kv::default(), Config::default());
    let mut a = connect(server.addr);
    let mut b = connect(server.addr);
    send(
        &mut a,
        b"SET greeting hello world\r\nGET greeting\nGET missing\n",
    );
    let want = b"OK\nVALUE hello world\nNIL\n";
    assert_eq!(read_n(&mut a, want.len()), want);
    send(
        &mut b,
        b"get greeting\nDEL greeting\nGET greeting\nnonsense\n",
    );
    let want = b"VALUE hello world\nOK\nNIL\nERR usage: SET key value | GET key | DEL key | QUIT\n";
    assert_eq!(read_n(&mut b, want.len()), want);
    send(&mut b, b"QUIT\n");
    assert_eq!(read_to_close(&mut b), b"BYE\n");
    send(&mut a, b"GET greeting\n");
    assert_eq!(read_n(&mut a, 4), b"NIL\n");
}
