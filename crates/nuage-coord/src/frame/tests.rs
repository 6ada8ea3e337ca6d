use super::*;
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Election { id: u64 },
    Elected { id: u64 },
    Token { value: u32, text: String },
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<u64>().prop_map(|id| Msg::Election { id }),
        any::<u64>().prop_map(|id| Msg::Elected { id }),
        (any::<u32>(), ".{0,40}").prop_map(|(value, text)| Msg::Token { value, text }),
    ]
}

proptest! {
    /// Whatever the cuts (several frames per read, a frame over several reads), the
    /// decoder yields exactly the messages sent, in order.
    #[test]
    fn any_cut_of_the_stream_yields_the_messages(
        msgs in prop::collection::vec(msg(), 0..20),
        cuts in prop::collection::vec(0usize..200, 0..30),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(encode(m).unwrap());
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = Decoder::<Msg>::new();
        let mut got = Vec::new();
        let mut start = 0;
        for end in cuts {
            decoder.push(&stream[start..end]);
            start = end;
            while let Some(m) = decoder.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(decoder.pending(), 0);
    }

    /// Random bytes never panic the decoder: they give messages, "need more", or an error.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut decoder = Decoder::<Msg>::new();
        decoder.push(&bytes);
        for _ in 0..300 {
            match decoder.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn oversized_frame_is_refused_both_ways() {
    let mut decoder = Decoder::<Msg>::new();
    decoder.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
    let err = decoder.next_message().unwrap_err().to_string();
    assert!(err.contains("over the 65536-byte limit"), "{err}");
    let big = Msg::Token {
        value: 0,
        text: "x".repeat(MAX_FRAME),
    };
    assert!(encode(&big).is_err());
}

#[test]
fn malformed_body_is_an_error() {
    let mut decoder = Decoder::<Msg>::new();
    decoder.push(&3u32.to_be_bytes());
    decoder.push(b"{x}");
    assert!(decoder.next_message().is_err());
}

#[tokio::test]
async fn reader_over_a_socket_pair_with_split_writes() {
    let (mut a, b) = tokio::io::duplex(16);
    let msgs = vec![
        Msg::Election { id: 7 },
        Msg::Token {
            value: 3,
            text: "hello".into(),
        },
        Msg::Elected { id: 9 },
    ];
    let sent = msgs.clone();
    let writer = tokio::spawn(async move {
        // Two messages in one write, then one written a byte at a time.
        let mut first = encode(&sent[0]).unwrap();
        first.extend(encode(&sent[1]).unwrap());
        a.write_all(&first).await.unwrap();
        for byte in encode(&sent[2]).unwrap() {
            a.write_all(&[byte]).await.unwrap();
        }
    });
    let mut reader = FrameReader::<_, Msg>::new(b);
    let mut got = Vec::new();
    while let Some(m) = reader.read().await.unwrap() {
        got.push(m);
    }
    writer.await.unwrap();
    assert_eq!(got, msgs);
}

#[tokio::test]
async fn close_in_the_middle_of_a_frame_is_an_error() {
    let (mut a, b) = tokio::io::duplex(64);
    let bytes = encode(&Msg::Election { id: 1 }).unwrap();
    a.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
    drop(a);
    let mut reader = FrameReader::<_, Msg>::new(b);
    let err = reader.read().await.unwrap_err().to_string();
    assert!(err.contains("middle of a message"), "{err}");
}
