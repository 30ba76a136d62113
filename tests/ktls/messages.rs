//! Messages around and across TLS record boundaries (16 KiB of plaintext per record) come back
//! intact once the kernel does the record layer: the server's reads see kernel-decrypted
//! plaintext cut wherever the kernel cuts it, its writes are split into records by the kernel.

use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::kernel::*;

/// The most plaintext one TLS record carries.
const RECORD_PLAINTEXT: usize = 16384;

/// Around one record, around several, and far beyond.
const SIZES: [usize; 8] = [
    1,
    100,
    RECORD_PLAINTEXT - 1,
    RECORD_PLAINTEXT,
    RECORD_PLAINTEXT + 1,
    65536,
    100_000,
    1 << 20,
];

#[tokio::test]
async fn messages_crossing_record_boundaries_are_echoed_intact() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let mut ws = srv.ws().await;

    let mut min_records = 0;
    for size in SIZES {
        let data = pattern(size);
        let back = echo(&mut ws, Message::binary(data.clone())).await;
        assert!(
            back == Message::binary(data),
            "binary message of {size} B came back different"
        );
        let text = text_of_len(size);
        let back = echo(&mut ws, Message::text(text.clone())).await;
        assert!(
            message_text(&back) == text,
            "text message of {size} B came back different"
        );
        min_records += 2 * size.div_ceil(RECORD_PLAINTEXT);
    }

    base.assert_offloaded(&srv, 1).await;
    // Every echo went out through the kernel's record layer (the counter is exact for tx).
    srv.wait_metric(
        "wssedge_ktls_records_total",
        &[("direction", "tx")],
        min_records as f64,
    )
    .await;
    within(WAIT, "close", ws.close(None)).await.expect("close");
}

/// `len` bytes of UTF-8 whose three-byte characters straddle record and read boundaries, so
/// the server's incremental UTF-8 check sees characters split across kernel reads.
fn text_of_len(len: usize) -> String {
    let mut s = String::with_capacity(len);
    for c in "ab✓".chars().cycle() {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s
}

#[test]
fn text_of_len_is_exact() {
    for len in SIZES {
        assert_eq!(text_of_len(len).len(), len);
    }
}
