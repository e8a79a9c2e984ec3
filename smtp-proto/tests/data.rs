//! DATA codec: dot-stuffing, the end marker across chunk boundaries, bare CR/LF (SMTP
//! smuggling), limits, and encoder/decoder round trips.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::data::{
    encode_data, normalize_line_endings, BareLineEnding, DataConfig, DataDecoder, DataEncoder,
    DataError, DataStatus,
};

const NORMALIZE: DataConfig = DataConfig::new()
    .with_bare_line_ending(BareLineEnding::Normalize)
    .with_max_line_len(Some(1000))
    .with_max_size(None);

/// Feeds `input` in the given chunks; returns (body, consumed in total, result) or None when the
/// end marker was not reached.
fn decode_chunks(
    config: DataConfig,
    input: &[u8],
    cuts: &[usize],
) -> Option<(Vec<u8>, usize, Result<(), DataError>)> {
    let mut dec = DataDecoder::with_config(config);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= input.len()).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    for end in bounds {
        if end < start {
            continue;
        }
        match dec.decode(&input[start..end], &mut out) {
            DataStatus::NeedMore => start = end,
            DataStatus::End { consumed, result } => {
                assert!(dec.is_done());
                return Some((out, start + consumed, result));
            }
        }
    }
    None
}

fn decode_all(config: DataConfig, input: &[u8]) -> Option<(Vec<u8>, usize, Result<(), DataError>)> {
    decode_chunks(config, input, &[])
}

/// In the table below: the whole input is the message.
const ALL: usize = usize::MAX;

#[test]
fn known_answers() {
    let reject = DataConfig::default();
    type Case = (
        &'static [u8],
        DataConfig,
        Option<(&'static [u8], usize, Result<(), DataError>)>,
    );
    let cases: &[Case] = &[
        // The empty message: the first line is already "." (RFC 5321 §4.1.1.4).
        (b".\r\n", reject, Some((b"", ALL, Ok(())))),
        (b".\r\nQUIT\r\n", reject, Some((b"", 3, Ok(())))),
        (b"\r\n.\r\n", reject, Some((b"\r\n", ALL, Ok(())))),
        (b"Hi\r\n.\r\n", reject, Some((b"Hi\r\n", ALL, Ok(())))),
        // Dot-stuffing removed from the first line, later lines, and a "." line.
        (
            b"..a\r\n..\r\nb\r\n...\r\n.\r\n",
            reject,
            Some((b".a\r\n.\r\nb\r\n..\r\n", ALL, Ok(()))),
        ),
        // A dot-led line that is not the end.
        (b".x\r\n.\r\n", reject, Some((b"x\r\n", ALL, Ok(())))),
        // Dots elsewhere are content.
        (
            b"a.\r\n a.b\r\n.\r\n",
            reject,
            Some((b"a.\r\n a.b\r\n", ALL, Ok(()))),
        ),
        // Not ended yet.
        (b"a\r\n.", reject, None),
        (b"a\r\n.\r", reject, None),
        (b"a\r\n", reject, None),
        (b"", reject, None),
        // Smuggling variants are content, and refused at the real end by default.
        (
            b"a\n.\nb\r\n.\r\n",
            reject,
            Some((b"a\n.\nb\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\r\n.\nb\r\n.\r\n",
            reject,
            Some((b"a\r\n\nb\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\n.\r\nb\r\n.\r\n",
            reject,
            Some((b"a\n.\r\nb\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\r.\rb\r\n.\r\n",
            reject,
            Some((b"a\r.\rb\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\r\n.\rb\r\n.\r\n",
            reject,
            Some((b"a\r\n\rb\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\r\n.\r\r\n.\r\n",
            reject,
            Some((b"a\r\n\r\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        (
            b"a\r\r\n.\r\n",
            reject,
            Some((b"a\r\r\n", ALL, Err(DataError::BareLineEnding))),
        ),
        // Same with normalisation: bare endings become CRLF, dots after them are not stuffing.
        (
            b"a\n.\nb\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n.\r\nb\r\n", ALL, Ok(()))),
        ),
        (
            b"a\r\n.\nb\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n\r\nb\r\n", ALL, Ok(()))),
        ),
        (
            b"a\n.\r\nb\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n.\r\nb\r\n", ALL, Ok(()))),
        ),
        (
            b"a\r.\rb\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n.\r\nb\r\n", ALL, Ok(()))),
        ),
        (
            b"a\r\n.\rb\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n\r\nb\r\n", ALL, Ok(()))),
        ),
        (
            b"a\r\r\n.\r\n",
            NORMALIZE,
            Some((b"a\r\n\r\n", ALL, Ok(()))),
        ),
        (b"\n\r\n.\r\n", NORMALIZE, Some((b"\r\n\r\n", ALL, Ok(())))),
        // Bare LF right before the marker does not make it an end: "\n.\r\n" twice.
        (b"x\n.\r\n", reject, None),
    ];
    for (input, config, expected) in cases {
        let got = decode_all(*config, input);
        let want =
            expected.map(|(b, n, r)| (b.to_vec(), if n == ALL { input.len() } else { n }, r));
        assert_eq!(
            got,
            want,
            "{:?} {:?}",
            String::from_utf8_lossy(input),
            config.bare_line_ending
        );
    }
}

fn message() -> Vec<u8> {
    b"From: a@example.org\r\n\r\n..stuffed\r\n.\rx\r\nlast\r\n.\r\n".to_vec()
}

/// The marker and everything else survive every split into two and three chunks.
#[test]
fn end_marker_split_at_every_position() {
    let mut input = b"Subject: t\r\n\r\n..one\r\ntwo\r\n.\r\n".to_vec();
    let msg_len = input.len();
    input.extend_from_slice(b"QUIT\r\n");
    let want = (
        b"Subject: t\r\n\r\n.one\r\ntwo\r\n".to_vec(),
        msg_len,
        Ok(()),
    );
    for a in 0..=input.len() {
        assert_eq!(
            decode_chunks(DataConfig::default(), &input, &[a]),
            Some(want.clone()),
            "cut {a}"
        );
        for b in a..=input.len() {
            assert_eq!(
                decode_chunks(DataConfig::default(), &input, &[a, b]),
                Some(want.clone()),
                "cuts {a} {b}"
            );
        }
    }
    let ones: Vec<usize> = (0..input.len()).collect();
    assert_eq!(
        decode_chunks(DataConfig::default(), &input, &ones),
        Some(want)
    );
}

/// Bare endings held across chunk boundaries behave as in one chunk, in both policies.
#[test]
fn bare_endings_split_at_every_position() {
    let inputs: &[&[u8]] = &[
        b"a\n.\nb\r.\rc\r\n.\rd\r\n.\ne\n.\r\nf\r\r\n.x\r\n.\r\nNOOP\r\n",
        &message(),
        b"\r\r\r\n\n\n.\r\r\n.\r\n",
    ];
    for input in inputs {
        for config in [DataConfig::default(), NORMALIZE] {
            let whole = decode_all(config, input).unwrap();
            let ones: Vec<usize> = (0..input.len()).collect();
            assert_eq!(decode_chunks(config, input, &ones).as_ref(), Some(&whole));
            for a in 0..=input.len() {
                assert_eq!(
                    decode_chunks(config, input, &[a]).as_ref(),
                    Some(&whole),
                    "cut {a}"
                );
            }
        }
    }
}

#[test]
fn message_with_bare_cr_is_refused_then_normalised() {
    let input = message();
    let (body, n, result) = decode_all(DataConfig::default(), &input).unwrap();
    assert_eq!(n, input.len());
    assert_eq!(result, Err(DataError::BareLineEnding));
    assert_eq!(
        body,
        b"From: a@example.org\r\n\r\n.stuffed\r\n\rx\r\nlast\r\n"
    );
    let (body, _, result) = decode_all(NORMALIZE, &input).unwrap();
    assert_eq!(result, Ok(()));
    assert_eq!(
        body,
        b"From: a@example.org\r\n\r\n.stuffed\r\n\r\nx\r\nlast\r\n"
    );
    assert_eq!(
        DataError::BareLineEnding.reply().to_bytes(),
        b"550 5.5.2 Message contains bare CR or LF; lines must end with CRLF\r\n"
    );
}

#[test]
fn long_lines_are_reported_at_the_end() {
    let limit = DataConfig::new().with_max_line_len(Some(10));
    // 8 octets + CRLF = 10: fits; 9 + CRLF: too long. A stuffed dot counts.
    let (_, _, r) = decode_all(limit, b"12345678\r\n.\r\n").unwrap();
    assert_eq!(r, Ok(()));
    let (body, n, r) = decode_all(limit, b"123456789\r\nok\r\n.\r\nRSET\r\n").unwrap();
    assert_eq!(
        (body.as_slice(), n, r),
        (
            &b"123456789\r\nok\r\n"[..],
            18,
            Err(DataError::LineTooLong { max: 10 })
        )
    );
    let (_, _, r) = decode_all(limit, b"..2345678\r\n.\r\n").unwrap();
    assert_eq!(r, Err(DataError::LineTooLong { max: 10 }));
    // Split across chunks, counted the same.
    let input = b"1234\r\n123456789\r\n.\r\n";
    for a in 0..=input.len() {
        assert_eq!(
            decode_chunks(limit, input, &[a]).unwrap().2,
            Err(DataError::LineTooLong { max: 10 })
        );
    }
    // Off by default only when asked.
    let off = DataConfig::new().with_max_line_len(None);
    let long = [b"x".repeat(5000).as_slice(), b"\r\n.\r\n"].concat();
    assert_eq!(decode_all(off, &long).unwrap().2, Ok(()));
    assert_eq!(
        decode_all(DataConfig::default(), &long).unwrap().2,
        Err(DataError::LineTooLong { max: 1000 })
    );
    assert_eq!(DataError::LineTooLong { max: 1000 }.reply().code(), 550);
}

#[test]
fn size_limit_stops_storing_but_reads_to_the_end() {
    let config = DataConfig::new().with_max_size(Some(10));
    let input = b"0123456\r\n0123456\r\n0123456\r\n.\r\nQUIT\r\n";
    for a in 0..=input.len() {
        let mut dec = DataDecoder::with_config(config);
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in [&input[..a], &input[a..]] {
            match dec.decode(chunk, &mut out) {
                DataStatus::NeedMore => consumed += chunk.len(),
                DataStatus::End {
                    consumed: c,
                    result,
                } => {
                    consumed += c;
                    assert_eq!(result, Err(DataError::SizeExceeded { max: 10 }));
                    break;
                }
            }
        }
        assert_eq!(consumed, input.len() - 6, "cut {a}");
        assert_eq!(out, b"0123456\r\n0", "cut {a}");
        assert_eq!(dec.size(), 27);
    }
    let exact = DataConfig::new().with_max_size(Some(9));
    assert_eq!(
        decode_all(exact, b"0123456\r\n.\r\n").unwrap(),
        (b"0123456\r\n".to_vec(), 12, Ok(()))
    );
    let reply = DataError::SizeExceeded { max: 10 }.reply();
    assert_eq!(
        reply.to_bytes(),
        b"552 5.3.4 message size exceeds the limit of 10 octets\r\n"
    );
}

#[test]
fn decoder_after_end_and_reset() {
    let mut dec = DataDecoder::new();
    let mut out = Vec::new();
    assert_eq!(
        dec.decode(b"a\r\n.\r\n", &mut out),
        DataStatus::End {
            consumed: 6,
            result: Ok(())
        }
    );
    assert_eq!(
        dec.decode(b"b\r\n.\r\n", &mut out),
        DataStatus::End {
            consumed: 0,
            result: Ok(())
        }
    );
    assert_eq!(out, b"a\r\n");
    dec.reset();
    assert!(!dec.is_done());
    assert_eq!(
        dec.decode(b"b\r\n.\r\n", &mut out),
        DataStatus::End {
            consumed: 6,
            result: Ok(())
        }
    );
    assert_eq!(out, b"a\r\nb\r\n");
}

#[test]
fn encoder_known_answers() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n.", b"..\r\n..\r\n.\r\n"),
        (b"a\n.b\rc\r\n\r\n", b"a\r\n..b\r\nc\r\n\r\n.\r\n"),
        (b"\r\r\n\n", b"\r\n\r\n\r\n.\r\n"),
        (b"x.\r\n .", b"x.\r\n .\r\n.\r\n"),
    ];
    for (body, wire) in cases {
        let mut out = Vec::new();
        encode_data(body, &mut out);
        assert_eq!(out, *wire, "{:?}", String::from_utf8_lossy(body));
        // The streaming encoder gives the same bytes for any split.
        for a in 0..=body.len() {
            let mut enc = DataEncoder::new();
            let mut out = Vec::new();
            enc.encode(&body[..a], &mut out);
            enc.encode(&body[a..], &mut out);
            enc.finish(&mut out);
            assert_eq!(out, *wire, "cut {a}");
        }
    }
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => prop::sample::select(b"\r\n.".to_vec()),
        ],
        0..300,
    )
}

fn crlf_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec("(\\.{0,2}[a-z .]{0,20})", 0..20).prop_map(|lines| {
        let mut b = Vec::new();
        for l in lines {
            b.extend_from_slice(l.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b
    })
}

fn split_points(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len + 2, 0..8)
}

proptest! {
    #[test]
    fn any_body_round_trips_normalised(
        (body, cuts) in body_bytes().prop_flat_map(|b| { let n = b.len() * 2 + 8; (Just(b), split_points(n)) }),
        policy in prop::sample::select(vec![BareLineEnding::Reject, BareLineEnding::Normalize]),
    ) {
        let mut wire = Vec::new();
        encode_data(&body, &mut wire);
        let wire_len = wire.len();
        wire.extend_from_slice(b"MAIL FROM:<>\r\n");
        let config = DataConfig::new().with_bare_line_ending(policy).with_max_line_len(None);
        let (decoded, consumed, result) = decode_chunks(config, &wire, &cuts).unwrap();
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(consumed, wire_len);
        prop_assert_eq!(decoded, normalize_line_endings(&body));
    }

    #[test]
    fn crlf_body_round_trips_identical(
        (body, cuts) in crlf_body().prop_flat_map(|b| { let n = b.len() * 2 + 8; (Just(b), split_points(n)) }),
    ) {
        let mut wire = Vec::new();
        encode_data(&body, &mut wire);
        let (decoded, consumed, result) = decode_chunks(DataConfig::default(), &wire, &cuts).unwrap();
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(consumed, wire.len());
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn decoder_never_panics_and_chunking_does_not_matter(
        (input, cuts) in body_bytes().prop_flat_map(|b| { let n = b.len() + 1; (Just(b), split_points(n)) }),
        policy in prop::sample::select(vec![BareLineEnding::Reject, BareLineEnding::Normalize]),
        max_size in prop::option::of(0u64..100),
    ) {
        let config = DataConfig::new().with_bare_line_ending(policy).with_max_line_len(Some(20)).with_max_size(max_size);
        let whole = decode_chunks(config, &input, &[]);
        prop_assert_eq!(decode_chunks(config, &input, &cuts), whole.clone());
        if let Some((body, consumed, result)) = whole {
            prop_assert!(consumed <= input.len());
            // The wire up to `consumed` ends with the marker; no earlier CRLF.CRLF exists.
            let wire = [b"\r\n".as_slice(), &input[..consumed]].concat();
            prop_assert!(wire.ends_with(b"\r\n.\r\n"));
            prop_assert!(!wire[..wire.len() - 1].windows(5).any(|w| w == b"\r\n.\r\n"));
            if result.is_ok() {
                // Re-encoding the accepted body and decoding it again gives the same body.
                let mut again = Vec::new();
                encode_data(&body, &mut again);
                let plain = config.with_max_line_len(None).with_max_size(None);
                let (b2, _, r2) = decode_all(plain, &again).unwrap();
                prop_assert_eq!(r2, Ok(()));
                prop_assert_eq!(b2, body);
            }
        }
    }
}
