//! RFC 6455 conformance of the codec, table-driven, following the case list of the Autobahn
//! TestSuite (numbers in the names are Autobahn's sections) against the echo example, in
//! process on loopback. Autobahn itself runs through `scripts/autobahn.sh` (it needs Python
//! 2.7); these cases keep the same checks in every `cargo test`. Sections 12 and 13
//! (permessage-deflate) do not apply: compression is not negotiated. See `docs/conformance.md`.

#[path = "../examples/echo.rs"]
#[allow(dead_code)]
mod echo;

use std::time::Duration;

use bytes::Bytes;
use firetower_client::ws::{self, Opcode};
use firetower_client::{Client, Event, Flavour};
use tokio::net::TcpListener;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// What the client sends.
#[derive(Clone)]
enum Step {
    /// One masked frame with raw opcode bits and reserved bits (RSV1..3 as 0..=7).
    Frame {
        fin: bool,
        opcode: u8,
        rsv: u8,
        payload: Vec<u8>,
    },
    /// The same, written `chunk` bytes at a time.
    Chunked {
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
        chunk: usize,
    },
    /// Bytes as they are.
    Raw(Vec<u8>),
}

/// What the echo server must answer, in order.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// The server closes with this code (and nothing comes after).
    Close(u16),
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn frame(fin: bool, opcode: u8, payload: impl Into<Vec<u8>>) -> Step {
    Step::Frame {
        fin,
        opcode,
        rsv: 0,
        payload: payload.into(),
    }
}

fn whole(opcode: u8, payload: impl Into<Vec<u8>>) -> Step {
    frame(true, opcode, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn encode(fin: bool, opcode: u8, rsv: u8, payload: &[u8]) -> Vec<u8> {
    // Encoded as a text frame, then the first byte is rewritten: the codec cannot be asked for
    // reserved opcodes or bits, which is the point of these cases.
    let mut bytes =
        ws::encode_frame(fin, Opcode::Text, payload, Some([0x37, 0xfa, 0x21, 0x3d])).to_vec();
    bytes[0] = (u8::from(fin) << 7) | (rsv << 4) | opcode;
    bytes
}

type Case = (&'static str, Vec<Step>, Vec<Expect>);

fn cases() -> Vec<Case> {
    use Expect::*;
    let mut cases: Vec<Case> = Vec::new();
    // 1.x framing: payload lengths around the 7-, 16- and 64-bit length forms.
    for (i, len) in [0usize, 125, 126, 127, 128, 65535, 65536]
        .into_iter()
        .enumerate()
    {
        let text = vec![b'*'; len];
        let bin = vec![0xfe; len];
        cases.push(leak(
            format!("1.1.{} text of {len} bytes", i + 1),
            vec![whole(TEXT, text.clone())],
            vec![Text(text)],
        ));
        cases.push(leak(
            format!("1.2.{} binary of {len} bytes", i + 1),
            vec![whole(BINARY, bin.clone())],
            vec![Binary(bin)],
        ));
    }
    let text = vec![b'*'; 65536];
    cases.push((
        "1.1.8 text of 65536 bytes in 997-byte writes",
        vec![Step::Chunked {
            fin: true,
            opcode: TEXT,
            payload: text.clone(),
            chunk: 997,
        }],
        vec![Text(text)],
    ));
    // 2.x ping and pong.
    cases.push((
        "2.1 ping without payload",
        vec![whole(PING, vec![])],
        vec![Pong(vec![])],
    ));
    cases.push((
        "2.2 ping with text",
        vec![whole(PING, b"Hello, world!".to_vec())],
        vec![Pong(b"Hello, world!".to_vec())],
    ));
    cases.push((
        "2.3 ping with binary",
        vec![whole(PING, vec![0x00, 0xff, 0xfe, 0xfd])],
        vec![Pong(vec![0x00, 0xff, 0xfe, 0xfd])],
    ));
    cases.push((
        "2.4 ping of 125 bytes",
        vec![whole(PING, vec![0xfe; 125])],
        vec![Pong(vec![0xfe; 125])],
    ));
    cases.push((
        "2.5 ping of 126 bytes is refused",
        vec![whole(PING, vec![0xfe; 126])],
        vec![Close(1002)],
    ));
    cases.push((
        "2.6 ping of 125 bytes written byte by byte",
        vec![Step::Chunked {
            fin: true,
            opcode: PING,
            payload: vec![0xfe; 125],
            chunk: 1,
        }],
        vec![Pong(vec![0xfe; 125])],
    ));
    cases.push((
        "2.7 unsolicited pong is ignored",
        vec![whole(PONG, vec![]), whole(PING, b"x".to_vec())],
        vec![Pong(b"x".to_vec())],
    ));
    cases.push((
        "2.8 unsolicited pong with payload",
        vec![
            whole(PONG, b"unsolicited".to_vec()),
            whole(PING, b"y".to_vec()),
        ],
        vec![Pong(b"y".to_vec())],
    ));
    let pings: Vec<Step> = (0..10).map(|i| whole(PING, vec![i])).collect();
    cases.push((
        "2.10 ten pings, ten pongs in order",
        pings,
        (0..10).map(|i| Pong(vec![i])).collect(),
    ));
    // 3.x reserved bits without an extension.
    for rsv in 1..=7u8 {
        let (opcode, payload) = match rsv {
            5 => (BINARY, vec![0xff; 8]),
            6 => (PING, b"p".to_vec()),
            7 => (CLOSE, close_payload(1000, b"")),
            _ => (TEXT, b"Hello".to_vec()),
        };
        cases.push(leak(
            format!("3.{rsv} RSV bits {rsv:03b} are refused"),
            vec![
                whole(TEXT, b"before".to_vec()),
                Step::Frame {
                    fin: true,
                    opcode,
                    rsv,
                    payload,
                },
            ],
            vec![Text(b"before".to_vec()), Close(1002)],
        ));
    }
    // 4.x reserved opcodes.
    for (i, op) in [3u8, 4, 5, 6, 7].into_iter().enumerate() {
        cases.push(leak(
            format!("4.1.{} reserved data opcode {op}", i + 1),
            vec![whole(TEXT, b"ok".to_vec()), whole(op, b"x".to_vec())],
            vec![Text(b"ok".to_vec()), Close(1002)],
        ));
    }
    for (i, op) in [11u8, 12, 13, 14, 15].into_iter().enumerate() {
        cases.push(leak(
            format!("4.2.{} reserved control opcode {op}", i + 1),
            vec![whole(TEXT, b"ok".to_vec()), whole(op, vec![])],
            vec![Text(b"ok".to_vec()), Close(1002)],
        ));
    }
    // 5.x fragmentation.
    cases.push((
        "5.1 fragmented ping",
        vec![
            frame(false, PING, b"frag".to_vec()),
            frame(true, CONT, b"ment".to_vec()),
        ],
        vec![Close(1002)],
    ));
    cases.push((
        "5.2 fragmented pong",
        vec![
            frame(false, PONG, b"frag".to_vec()),
            frame(true, CONT, b"ment".to_vec()),
        ],
        vec![Close(1002)],
    ));
    cases.push((
        "5.3 text in two fragments",
        vec![
            frame(false, TEXT, b"frag".to_vec()),
            frame(true, CONT, b"ment".to_vec()),
        ],
        vec![Text(b"fragment".to_vec())],
    ));
    cases.push((
        "5.6 ping between text fragments",
        vec![
            frame(false, TEXT, b"frag".to_vec()),
            whole(PING, b"p".to_vec()),
            frame(true, CONT, b"ment".to_vec()),
        ],
        vec![Pong(b"p".to_vec()), Text(b"fragment".to_vec())],
    ));
    cases.push((
        "5.8 binary in many fragments with pings between",
        (0..10)
            .flat_map(|i| {
                [
                    frame(i == 9, if i == 0 { BINARY } else { CONT }, vec![i]),
                    whole(PING, vec![i]),
                ]
            })
            .collect(),
        // The last fragment comes before the last ping.
        (0..9)
            .map(|i| Pong(vec![i]))
            .chain([Binary((0..10).collect()), Pong(vec![9])])
            .collect(),
    ));
    cases.push((
        "5.9 continuation without a start, final",
        vec![frame(true, CONT, b"x".to_vec())],
        vec![Close(1002)],
    ));
    cases.push((
        "5.10 continuation without a start, not final",
        vec![frame(false, CONT, b"x".to_vec())],
        vec![Close(1002)],
    ));
    cases.push((
        "5.15 a continuation after a finished message",
        vec![
            frame(false, TEXT, b"a".to_vec()),
            frame(true, CONT, b"b".to_vec()),
            frame(false, CONT, b"c".to_vec()),
        ],
        vec![Text(b"ab".to_vec()), Close(1002)],
    ));
    cases.push((
        "5.18 a new text before the last one ended",
        vec![
            frame(false, TEXT, b"a".to_vec()),
            frame(true, TEXT, b"b".to_vec()),
        ],
        vec![Close(1002)],
    ));
    cases.push((
        "5.20 empty fragments",
        vec![
            frame(false, TEXT, vec![]),
            frame(false, CONT, vec![]),
            frame(true, CONT, vec![]),
        ],
        vec![Text(vec![])],
    ));
    // 6.x UTF-8.
    let kosme = "κόσμε".as_bytes().to_vec();
    cases.push((
        "6.2.1 valid UTF-8 in one frame",
        vec![whole(TEXT, kosme.clone())],
        vec![Text(kosme.clone())],
    ));
    cases.push((
        "6.2.3 valid UTF-8 split inside a code point",
        vec![
            frame(false, TEXT, kosme[..3].to_vec()),
            frame(true, CONT, kosme[3..].to_vec()),
        ],
        vec![Text(kosme.clone())],
    ));
    cases.push((
        "6.2.4 valid UTF-8 one byte per fragment",
        kosme
            .iter()
            .enumerate()
            .map(|(i, b)| {
                frame(
                    i + 1 == kosme.len(),
                    if i == 0 { TEXT } else { CONT },
                    vec![*b],
                )
            })
            .collect(),
        vec![Text(kosme.clone())],
    ));
    for (name, bytes) in [
        (
            "6.3.1 invalid UTF-8 (a lone continuation byte)",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"
                .to_vec(),
        ),
        (
            "6.4.x truncated sequence at the end",
            b"\xce\xba\xe1".to_vec(),
        ),
        ("6.5.x overlong slash", b"\xc0\xaf".to_vec()),
        ("6.6.x overlong NUL", b"\xe0\x80\x80".to_vec()),
        ("6.7.x UTF-16 surrogate", b"\xed\xa0\x80".to_vec()),
        ("6.8.x above U+10FFFF", b"\xf4\x90\x80\x80".to_vec()),
        ("6.9.x byte 0xFE", b"\xfe".to_vec()),
    ] {
        cases.push((name, vec![whole(TEXT, bytes)], vec![Close(1007)]));
    }
    cases.push((
        "6.10 U+10FFFF is valid",
        vec![whole(TEXT, b"\xf4\x8f\xbf\xbf".to_vec())],
        vec![Text(b"\xf4\x8f\xbf\xbf".to_vec())],
    ));
    cases.push((
        "6.11 invalid UTF-8 across fragments",
        vec![
            frame(false, TEXT, b"\xce\xba".to_vec()),
            frame(true, CONT, b"\xed\xa0\x80".to_vec()),
        ],
        vec![Close(1007)],
    ));
    // 7.x close handling.
    cases.push((
        "7.1.1 text then close",
        vec![
            whole(TEXT, b"Hello".to_vec()),
            whole(CLOSE, close_payload(1000, b"")),
        ],
        vec![Text(b"Hello".to_vec()), Close(1000)],
    ));
    cases.push((
        "7.1.2 close twice",
        vec![
            whole(CLOSE, close_payload(1000, b"")),
            whole(CLOSE, close_payload(1000, b"")),
        ],
        vec![Close(1000)],
    ));
    cases.push((
        "7.1.3 ping after close",
        vec![
            whole(CLOSE, close_payload(1000, b"")),
            whole(PING, b"late".to_vec()),
        ],
        vec![Close(1000)],
    ));
    cases.push((
        "7.1.4 text after close",
        vec![
            whole(CLOSE, close_payload(1000, b"")),
            whole(TEXT, b"late".to_vec()),
        ],
        vec![Close(1000)],
    ));
    cases.push((
        "7.3.1 close without payload",
        vec![whole(CLOSE, vec![])],
        vec![Close(1000)],
    ));
    cases.push((
        "7.3.2 close with one byte",
        vec![whole(CLOSE, vec![0x03])],
        vec![Close(1002)],
    ));
    cases.push((
        "7.3.3 close 1000 without reason",
        vec![whole(CLOSE, close_payload(1000, b""))],
        vec![Close(1000)],
    ));
    cases.push((
        "7.3.4 close 1000 with reason",
        vec![whole(CLOSE, close_payload(1000, b"Hello World!"))],
        vec![Close(1000)],
    ));
    cases.push((
        "7.3.5 close with a 123-byte reason",
        vec![whole(CLOSE, close_payload(1000, &[b'*'; 123]))],
        vec![Close(1000)],
    ));
    cases.push((
        "7.3.6 close with a 124-byte reason",
        vec![whole(CLOSE, close_payload(1000, &[b'*'; 124]))],
        vec![Close(1002)],
    ));
    cases.push((
        "7.5.1 close reason not UTF-8",
        vec![whole(
            CLOSE,
            close_payload(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
            ),
        )],
        vec![Close(1007)],
    ));
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        cases.push(leak(
            format!("7.7.x valid close code {code} is echoed"),
            vec![whole(CLOSE, close_payload(code, b""))],
            vec![Close(code)],
        ));
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push(leak(
            format!("7.9.x invalid close code {code}"),
            vec![whole(CLOSE, close_payload(code, b""))],
            vec![Close(1002)],
        ));
    }
    // 9.x large messages, within the echo server's 32 MiB limit.
    for (name, len) in [
        ("9.1.3 text of 1 MiB", 1usize << 20),
        ("9.1.5 text of 8 MiB", 8 << 20),
    ] {
        cases.push((
            name,
            vec![whole(TEXT, vec![b'*'; len])],
            vec![Text(vec![b'*'; len])],
        ));
    }
    cases.push((
        "9.2.3 binary of 1 MiB",
        vec![whole(BINARY, vec![0xfe; 1 << 20])],
        vec![Binary(vec![0xfe; 1 << 20])],
    ));
    let chunks = 16;
    cases.push((
        "9.4.x binary of 1 MiB in 64 KiB fragments",
        (0..chunks)
            .map(|i| {
                frame(
                    i + 1 == chunks,
                    if i == 0 { BINARY } else { CONT },
                    vec![0xfe; 64 << 10],
                )
            })
            .collect(),
        vec![Binary(vec![0xfe; 1 << 20])],
    ));
    // The header of a 33 MiB frame and a little of its payload: refused before it is buffered.
    let mut over = vec![0x82, 0xff];
    over.extend_from_slice(&(33u64 << 20).to_be_bytes());
    over.extend_from_slice(&[1, 2, 3, 4]);
    over.extend_from_slice(&[0; 1024]);
    cases.push((
        "9.x a frame over the limit is refused from its header",
        vec![Step::Raw(over)],
        vec![Close(1009)],
    ));
    cases
}

/// A case name built at run time (the table holds `&'static str`; a test leaks a few bytes).
fn leak(name: String, send: Vec<Step>, expect: Vec<Expect>) -> Case {
    (Box::leak(name.into_boxed_str()), send, expect)
}

async fn run_case(addr: &str, (name, sends, expects): Case) {
    let mut c = timeout(WAIT, Client::connect(addr, Flavour::Json))
        .await
        .expect("connect in time")
        .expect("connect");
    for send in sends {
        // A write may fail once the server closed; what it answered is still checked below.
        let _ = match send {
            Step::Frame {
                fin,
                opcode,
                rsv,
                payload,
            } => c.send_raw(&encode(fin, opcode, rsv, &payload)).await,
            Step::Raw(bytes) => c.send_raw(&bytes).await,
            Step::Chunked {
                fin,
                opcode,
                payload,
                chunk,
            } => {
                let mut result = Ok(());
                for piece in encode(fin, opcode, 0, &payload).chunks(chunk) {
                    result = c.send_raw(piece).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
    }
    let closes = matches!(expects.last(), Some(Expect::Close(_)));
    for expect in expects {
        let event = timeout(WAIT, c.next_event())
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer in time, expected {expect:?}"))
            .unwrap_or_else(|e| panic!("{name}: {e}, expected {expect:?}"));
        let got = match event {
            Some(Event::Text(t)) => Expect::Text(t.to_vec()),
            Some(Event::Binary(b)) => Expect::Binary(b.to_vec()),
            Some(Event::Pong(p)) => Expect::Pong(p.to_vec()),
            Some(Event::Close(reason)) => Expect::Close(reason.map_or(1000, |(code, _)| code)),
            None => panic!("{name}: end of stream, expected {expect:?}"),
        };
        assert!(
            got == expect,
            "{name}: got {}, expected {}",
            short(&got),
            short(&expect)
        );
    }
    if closes {
        // Nothing after the close: the server ends the TCP connection.
        let after = timeout(WAIT, c.next_event())
            .await
            .expect("end of stream in time");
        assert!(
            matches!(after, Ok(None) | Err(_)),
            "{name}: after the close: {after:?}"
        );
    } else {
        // The connection is still healthy: a clean close handshake ends it.
        timeout(WAIT, c.close())
            .await
            .expect("close in time")
            .unwrap_or_else(|e| panic!("{name}: close: {e}"));
    }
}

fn short(e: &Expect) -> String {
    let cut = |b: &[u8]| {
        format!(
            "{} bytes {:?}",
            b.len(),
            Bytes::copy_from_slice(&b[..b.len().min(16)])
        )
    };
    match e {
        Expect::Text(b) => format!("Text({})", cut(b)),
        Expect::Binary(b) => format!("Binary({})", cut(b)),
        Expect::Pong(b) => format!("Pong({})", cut(b)),
        Expect::Close(c) => format!("Close({c})"),
    }
}

#[tokio::test]
async fn autobahn_case_list_against_the_echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(echo::serve(listener));
    let cases = cases();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for case in cases {
        run_case(&addr, case).await;
    }
}
