//! The MAIL/RCPT fast path ([`super::fast`]) against the general parser and against the
//! answer the generator knows.
//!
//! Lines are built from parts (verb and keyword in any case, a path of a known kind: null,
//! postmaster, a mailbox with a dot-string or quoted local part, a domain name, U-labels or
//! an address literal, a source route; parameters in any order and case, with several spaces)
//! and the generator keeps what it built: the expected [`Command`], or the error the limits
//! it chose around the parts' lengths must give. Each line is checked three ways: the
//! general parser gives the expected value, the fast path gives it too or declines (`None`,
//! never an answer of its own), and the lines the fast path exists for do take it. Near-valid
//! lines (one byte changed, inserted or removed) check that the fast path never answers
//! where the general parser refuses, and answers what the general parser answers otherwise;
//! for the changes whose effect is known (a bare CR or LF, a byte that is not UTF-8) the
//! error itself is checked.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{fast, general, Command, CommandError, CommandErrorKind, Limits};
use crate::address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
use crate::param::{
    xtext_encode, Body, MailParams, Notify, Orcpt, OtherParams, RcptParams, Ret, XText,
};

/// A part of a line: its wire text, and whether it keeps the line within what the fast path
/// takes (plain ASCII `<local@domain>` with SIZE, BODY, SMTPUTF8 or NOTIFY).
#[derive(Debug, Clone)]
struct Part<T> {
    wire: String,
    value: T,
    simple: bool,
}

/// Upper, lower or mixed case, chosen by `k`.
fn cased(s: &str, k: u8) -> String {
    match k % 3 {
        0 => s.to_ascii_uppercase(),
        1 => s.to_ascii_lowercase(),
        _ => s
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect(),
    }
}

/// `Local-part`: wire form, unquoted value.
fn local_part() -> impl Strategy<Value = Part<String>> {
    let atom = prop_oneof![
        6 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}".prop_map(|a| (a, true)),
        1 => "[a-zé中ü]{1,4}".prop_map(|a| { let ascii = a.is_ascii(); (a, ascii) }),
    ];
    let dot_string = prop::collection::vec(atom, 1..4).prop_map(|atoms| {
        let simple = atoms.iter().all(|(_, s)| *s);
        let s = atoms
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>()
            .join(".");
        Part {
            wire: s.clone(),
            value: s,
            simple,
        }
    });
    // QcontentSMTP: runs of qtextSMTP, and quoted-pairs.
    let qcontent = prop_oneof![
        3 => "[ !#-\\[\\]-~é]{1,6}".prop_map(|t| (t.clone(), t)),
        1 => proptest::char::range(' ', '~').prop_map(|c| (format!("\\{c}"), c.to_string())),
    ];
    let quoted = prop::collection::vec(qcontent, 0..5).prop_map(|q| {
        let wire = format!(
            "\"{}\"",
            q.iter().map(|(w, _)| w.as_str()).collect::<String>()
        );
        let value = q.into_iter().map(|(_, v)| v).collect();
        Part {
            wire,
            value,
            simple: false,
        }
    });
    prop_oneof![4 => dot_string, 1 => quoted]
}

/// `Domain / address-literal`.
fn domain() -> impl Strategy<Value = Part<Domain>> {
    let label = prop_oneof![
        6 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?".prop_map(|l| (l, true)),
        1 => "[a-zä例]{1,4}".prop_map(|l| { let ascii = l.is_ascii(); (l, ascii) }),
    ];
    let name = prop::collection::vec(label, 1..4).prop_map(|labels| {
        let simple = labels.iter().all(|(_, s)| *s);
        let wire = labels
            .into_iter()
            .map(|(l, _)| l)
            .collect::<Vec<_>>()
            .join(".");
        Part {
            value: Domain::name(wire.clone()).unwrap(),
            wire,
            simple,
        }
    });
    let v4 = any::<[u8; 4]>().prop_map(|a| {
        let ip = std::net::Ipv4Addr::from(a);
        Part {
            wire: format!("[{ip}]"),
            value: Domain::Ipv4(ip),
            simple: false,
        }
    });
    let v6 = (any::<[u16; 8]>(), any::<u8>()).prop_map(|(a, k)| {
        let ip = std::net::Ipv6Addr::from(a);
        Part {
            wire: format!("[{}:{ip}]", cased("IPv6", k)),
            value: Domain::Ipv6(ip),
            simple: false,
        }
    });
    prop_oneof![6 => name, 1 => v4, 1 => v6]
}

/// What a path holds.
#[derive(Debug, Clone)]
enum Path {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

/// The lengths a path's limits apply to (0 where none does).
#[derive(Debug, Clone, Copy, Default)]
struct Lengths {
    local: usize,
    domain: usize,
    path: usize,
}

/// `Reverse-path` (`null`) or `Forward-path` (`postmaster`): the wire text, what it holds,
/// its lengths, and whether the fast path takes it.
fn path(null: bool, postmaster: bool) -> impl Strategy<Value = (Part<Path>, Lengths)> {
    let route = prop_oneof![
        4 => Just(Vec::new()),
        1 => prop::collection::vec("[a-z][a-z0-9]{0,6}(\\.[a-z]{2,4})?", 1..3),
    ];
    let mailbox = (local_part(), domain(), prop::bool::weighted(0.1), route).prop_map(
        |(l, d, bare, route)| {
            let addr = format!("{}@{}", l.wire, d.wire);
            let route = if route.is_empty() || bare {
                String::new()
            } else {
                let r: Vec<String> = route.iter().map(|r| format!("@{r}")).collect();
                format!("{}:", r.join(","))
            };
            // Leniently, a mailbox without angle brackets (its limit counts them anyway).
            let wire = if bare {
                addr
            } else {
                format!("<{route}{addr}>")
            };
            let lengths = Lengths {
                local: l.wire.len(),
                domain: d.wire.len(),
                path: if bare { wire.len() + 2 } else { wire.len() },
            };
            let simple = l.simple && d.simple && !bare && route.is_empty();
            let m = Mailbox::new(l.value, d.value).unwrap();
            (
                Part {
                    wire,
                    value: Path::Mailbox(m),
                    simple,
                },
                lengths,
            )
        },
    );
    let special = any::<u8>().prop_map(move |k| {
        let (wire, value, simple) = if null {
            ("<>".to_owned(), Path::Null, true)
        } else if postmaster {
            (
                format!("<{}>", cased("Postmaster", k)),
                Path::Postmaster,
                false,
            )
        } else {
            unreachable!()
        };
        (
            Part {
                wire,
                value,
                simple,
            },
            Lengths::default(),
        )
    });
    prop_oneof![8 => mailbox, 1 => special]
}

/// An xtext value: its wire form and the decoded text.
fn xtext() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+=@._ é-]{1,12}".prop_map(|plain| xtext_encode(&plain))
}

/// Unknown parameters: distinct `X-` keywords, with or without a value.
fn unknown() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_map("X-[A-Z0-9]{1,6}", prop::option::of("[!-<>-~]{1,8}"), 0..3)
        .prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect()
        })
}

/// The unknown (`X-`) parameters among `items`, in their order.
fn others_in(items: &[String]) -> OtherParams {
    let x: Vec<&str> = items
        .iter()
        .filter(|i| i.starts_with("X-"))
        .map(String::as_str)
        .collect();
    if x.is_empty() {
        OtherParams::default()
    } else {
        OtherParams::new(x.join(" ")).unwrap()
    }
}

/// Mostly no unknown parameter.
fn maybe_unknown() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![3 => Just(Vec::new()), 1 => unknown()]
}

/// The MAIL parameters: each parameter's wire text (in an order to shuffle) and the value.
fn mail_params() -> impl Strategy<Value = Part<MailParams>> {
    (
        prop::option::of((any::<u64>(), 0..4usize)),
        prop::option::of((0..3usize, any::<u8>())),
        prop::option::of(any::<u8>()),
        prop::option::weighted(0.15, (any::<bool>(), any::<u8>())),
        prop::option::weighted(0.15, xtext()),
        prop::option::weighted(0.15, prop_oneof![Just("<>".to_owned()), xtext()]),
        maybe_unknown(),
        any::<[u8; 4]>(),
    )
        .prop_flat_map(|(size, body, utf8, ret, envid, auth, other, k)| {
            let mut items = Vec::new();
            let mut p = MailParams::default();
            let mut simple = true;
            if let Some((n, zeros)) = size {
                let digits = n.to_string();
                let zeros = zeros.min(20 - digits.len());
                items.push(format!(
                    "{}={}{digits}",
                    cased("SIZE", k[0]),
                    "0".repeat(zeros)
                ));
                p.size = Some(n);
            }
            if let Some((b, kc)) = body {
                let b = [Body::SevenBit, Body::EightBitMime, Body::BinaryMime][b];
                items.push(format!("{}={}", cased("BODY", k[1]), cased(b.as_str(), kc)));
                p.body = Some(b);
            }
            if let Some(kc) = utf8 {
                items.push(cased("SMTPUTF8", kc));
                p.smtputf8 = true;
            }
            if let Some((full, kc)) = ret {
                let r = if full { Ret::Full } else { Ret::Hdrs };
                items.push(format!("{}={}", cased("RET", k[2]), cased(r.as_str(), kc)));
                p.ret = Some(r);
                simple = false;
            }
            if let Some(e) = envid {
                items.push(format!("{}={e}", cased("ENVID", k[3])));
                p.envid = Some(XText::new(e).unwrap());
                simple = false;
            }
            if let Some(a) = auth {
                items.push(format!("AUTH={a}"));
                p.auth = Some(XText::new(a).unwrap());
                simple = false;
            }
            simple &= other.is_empty();
            items.extend(other);
            (Just(items).prop_shuffle(), Just(p), Just(simple))
        })
        .prop_map(|(items, mut value, simple)| {
            value.other = others_in(&items);
            Part {
                wire: items.join("\u{0}"),
                value,
                simple,
            }
        })
}

/// The RCPT parameters, as [`mail_params`].
fn rcpt_params() -> impl Strategy<Value = Part<RcptParams>> {
    let notify = prop_oneof![
        1 => any::<u8>().prop_map(|k| (vec![cased("NEVER", k)], Notify::NEVER)),
        4 => prop::collection::vec((0..3usize, any::<u8>()), 1..4).prop_map(|items| {
            let mut n = Notify::NEVER;
            let words = items
                .into_iter()
                .map(|(i, k)| {
                    match i {
                        0 => n.success = true,
                        1 => n.failure = true,
                        _ => n.delay = true,
                    }
                    cased(["SUCCESS", "FAILURE", "DELAY"][i], k)
                })
                .collect();
            (words, n)
        }),
    ];
    (
        prop::option::of((notify, any::<u8>())),
        prop::option::weighted(0.25, ("[a-zA-Z0-9-]{1,8}", xtext())),
        maybe_unknown(),
    )
        .prop_flat_map(|(notify, orcpt, other)| {
            let mut items = Vec::new();
            let mut p = RcptParams::default();
            let mut simple = true;
            if let Some(((words, n), k)) = notify {
                items.push(format!("{}={}", cased("NOTIFY", k), words.join(",")));
                p.notify = Some(n);
            }
            if let Some((t, a)) = orcpt {
                items.push(format!("ORCPT={t};{a}"));
                p.orcpt = Some(Orcpt::new(t, XText::new(a).unwrap()).unwrap());
                simple = false;
            }
            simple &= other.is_empty();
            items.extend(other);
            (Just(items).prop_shuffle(), Just(p), Just(simple))
        })
        .prop_map(|(items, mut value, simple)| {
            value.other = others_in(&items);
            Part {
                wire: items.join("\u{0}"),
                value,
                simple,
            }
        })
}

/// A generated line, and what parsing it must give.
#[derive(Debug, Clone)]
struct Case {
    line: Vec<u8>,
    limits: Limits,
    /// The parsed command, or the error kind.
    expected: Result<Command<'static>, CommandErrorKind>,
    /// The fast path must take this line (it is of the form it exists for).
    simple: bool,
}

/// Spaces between parameters (the first one is required) and at the end of the line.
fn spacing() -> impl Strategy<Value = (Vec<&'static str>, &'static str)> {
    (
        prop::collection::vec(
            prop_oneof![6 => Just(" "), 1 => Just("  "), 1 => Just("   ")],
            8,
        ),
        prop_oneof![6 => Just(""), 1 => Just(" "), 1 => Just("  "), 1 => Just("\t"), 1 => Just(" \t")],
    )
}

/// A limit near `len` (one under, at, one over) or far above it.
fn limit_near(len: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        20 => Just(100_000usize),
        1 => Just(len.saturating_sub(1).max(1)),
        1 => Just(len.max(1)),
        1 => Just(len + 1),
    ]
}

/// Leaks what the expected command borrows (tests only).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_mailbox(m: &Mailbox) -> Mailbox<&'static str> {
    let d = match m.domain() {
        Domain::Name(n) => Domain::name(leak(n.as_str().to_owned())).unwrap(),
        Domain::Ipv4(a) => Domain::Ipv4(*a),
        Domain::Ipv6(a) => Domain::Ipv6(*a),
    };
    Mailbox::new(leak(m.local_part().into_owned()), d).unwrap()
}

fn leak_xtext(x: &XText) -> XText<&'static str> {
    XText::new(leak(x.as_encoded().to_owned())).unwrap()
}

fn leak_other(o: &OtherParams) -> OtherParams<&'static str> {
    let text = o
        .iter()
        .map(|(k, v)| v.map_or_else(|| k.to_owned(), |v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        OtherParams::default()
    } else {
        OtherParams::new(leak(text)).unwrap()
    }
}

/// `MAIL FROM:` (`mail`) or `RCPT TO:` lines with what they must parse to.
fn case(mail: bool) -> impl Strategy<Value = Case> {
    let params = if mail {
        mail_params()
            .prop_map(|p| (p.wire, Some(p.value), None, p.simple))
            .boxed()
    } else {
        rcpt_params()
            .prop_map(|p| (p.wire, None, Some(p.value), p.simple))
            .boxed()
    };
    (
        any::<[u8; 2]>(),
        prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("  ")],
        path(mail, !mail),
        params,
        spacing(),
    )
        .prop_flat_map(
            move |(k, after_colon, (path, lengths), params, (seps, end))| {
                let (verb, keyword) = if mail {
                    ("MAIL", "FROM:")
                } else {
                    ("RCPT", "TO:")
                };
                let mut line = format!(
                    "{} {}{after_colon}{}",
                    cased(verb, k[0]),
                    cased(keyword, k[1]),
                    path.wire
                );
                let (pw, mp, rp, psimple) = params;
                if !pw.is_empty() {
                    for (item, sep) in pw.split('\u{0}').zip(seps.iter().cycle()) {
                        line.push_str(sep);
                        line.push_str(item);
                    }
                }
                line.push_str(end);
                line.push_str("\r\n");
                let simple =
                    path.simple && psimple && after_colon.is_empty() && !end.contains('\t');
                let line_len = line.len();
                (
                    Just((line, path.value, lengths, mp, rp, simple)),
                    limit_near(line_len),
                    limit_near(lengths.local),
                    limit_near(lengths.domain),
                    limit_near(lengths.path),
                )
            },
        )
        .prop_map(
            move |((line, path, lengths, mp, rp, simple), l, lp, d, p)| {
                let limits = Limits {
                    max_command_line: l,
                    max_local_part: lp,
                    max_domain: d,
                    max_path: p,
                };
                let addr = |e: AddressError| {
                    if mail {
                        CommandErrorKind::BadSender(e)
                    } else {
                        CommandErrorKind::BadRecipient(e)
                    }
                };
                let is_mailbox = matches!(path, Path::Mailbox(_));
                let expected = if line.len() > limits.max_command_line {
                    Err(CommandErrorKind::LineTooLong { complete: true })
                } else if is_mailbox && lengths.local > limits.max_local_part {
                    Err(addr(AddressError::LocalPartTooLong))
                } else if is_mailbox && lengths.domain > limits.max_domain {
                    Err(addr(AddressError::DomainTooLong))
                } else if is_mailbox && lengths.path > limits.max_path {
                    Err(addr(AddressError::PathTooLong))
                } else if mail {
                    let from = match &path {
                        Path::Null => ReversePath::Null,
                        Path::Mailbox(m) => ReversePath::Mailbox(leak_mailbox(m)),
                        Path::Postmaster => unreachable!(),
                    };
                    let p = mp.unwrap();
                    let params = MailParams {
                        size: p.size,
                        body: p.body,
                        smtputf8: p.smtputf8,
                        auth: p.auth.as_ref().map(leak_xtext),
                        ret: p.ret,
                        envid: p.envid.as_ref().map(leak_xtext),
                        other: leak_other(&p.other),
                    };
                    Ok(Command::Mail { from, params })
                } else {
                    let to = match &path {
                        Path::Postmaster => ForwardPath::Postmaster,
                        Path::Mailbox(m) => ForwardPath::Mailbox(leak_mailbox(m)),
                        Path::Null => unreachable!(),
                    };
                    let p = rp.unwrap();
                    let orcpt = p.orcpt.as_ref().map(|o| {
                        Orcpt::new(leak(o.addr_type().to_owned()), leak_xtext(o.addr())).unwrap()
                    });
                    let params = RcptParams {
                        notify: p.notify,
                        orcpt,
                        other: leak_other(&p.other),
                    };
                    Ok(Command::Rcpt { to, params })
                };
                let simple = simple && expected.is_ok();
                Case {
                    line: line.into_bytes(),
                    limits,
                    expected,
                    simple,
                }
            },
        )
}

/// Both parsers on `case`: the general one gives the expected value, the fast path the same
/// or `None`, and `Some` whenever the line is of the form it exists for.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let Case {
        line,
        limits,
        expected,
        simple,
    } = case;
    let want = match expected {
        Ok(c) => Ok(Some((*c, line.len()))),
        Err(kind) => Err(CommandError {
            kind: *kind,
            consumed: line.len(),
        }),
    };
    let text = String::from_utf8_lossy(line);
    prop_assert_eq!(
        &general(line, limits),
        &want,
        "general parser on {:?}",
        text
    );
    match fast::mail_or_rcpt(line, limits) {
        Some(got) => prop_assert_eq!(Ok(Some(got)), want, "fast path on {:?}", text),
        None => prop_assert!(!simple, "the fast path declined {:?}", text),
    }
    // And through the public entry point, fast path first.
    prop_assert_eq!(super::parse_command(line, limits), want);
    Ok(())
}

/// A byte changed, inserted or removed somewhere in a valid line.
#[derive(Debug, Clone, Copy)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(b"\0\x7f\r\n\xff\xc3\x80 \t\"\\<>@.,:;[]=+-_aZ9".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(p, b)| Edit::Replace(p, b)),
        (any::<usize>(), byte).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Remove),
    ]
}

/// `line` (CRLF at its end) with `edit` applied before the CRLF, and where it applied.
fn apply(line: &[u8], edit: Edit) -> (Vec<u8>, usize, Option<u8>) {
    let body = line.len() - 2;
    let mut l = line.to_vec();
    match edit {
        Edit::Replace(p, b) => {
            let p = p % body;
            l[p] = b;
            (l, p, Some(b))
        }
        Edit::Insert(p, b) => {
            let p = p % (body + 1);
            l.insert(p, b);
            (l, p, Some(b))
        }
        Edit::Remove(p) => {
            let p = p % body;
            l.remove(p);
            (l, p, None)
        }
    }
}

/// An edited line: the fast path answers only what the general parser answers; where the
/// edit's effect is known, the general parser gives that error.
fn check_edited(case: &Case, edit: Edit) -> Result<(), TestCaseError> {
    let (line, at, byte) = apply(&case.line, edit);
    let limits = &case.limits;
    let text = String::from_utf8_lossy(&line);
    let parsed = general(&line, limits);
    if let Some(got) = fast::mail_or_rcpt(&line, limits) {
        prop_assert_eq!(Ok(Some(got)), parsed, "fast path on {:?}", text);
    }
    if line.len() > limits.max_command_line {
        return Ok(());
    }
    let mail = line[..4].eq_ignore_ascii_case(b"MAIL");
    let cr_lf = |p: usize| line.get(p) == Some(&b'\r') && line.get(p + 1) == Some(&b'\n');
    let kind = parsed.map_err(|e| (e.kind, e.consumed));
    match (edit, byte) {
        // A LF not after a CR ends the line there, badly.
        (Edit::Replace(..) | Edit::Insert(..), Some(b'\n')) if at == 0 || line[at - 1] != b'\r' => {
            prop_assert_eq!(
                kind,
                Err((CommandErrorKind::BareLineFeed, at + 1)),
                "{:?}",
                text
            );
        }
        // A CR not before a LF.
        (Edit::Replace(..) | Edit::Insert(..), Some(b'\r')) if !cr_lf(at) => {
            prop_assert_eq!(
                kind,
                Err((CommandErrorKind::BareCarriageReturn, line.len())),
                "{:?}",
                text
            );
        }
        // A byte that cannot be in UTF-8, in the arguments.
        // (After the verb and its space: the arguments are checked to be UTF-8 first.)
        (Edit::Replace(..) | Edit::Insert(..), Some(0xff)) if at > 4 => {
            let e = if mail {
                CommandErrorKind::BadSender(AddressError::InvalidUtf8)
            } else {
                CommandErrorKind::BadRecipient(AddressError::InvalidUtf8)
            };
            prop_assert_eq!(kind, Err((e, line.len())), "{:?}", text);
        }
        _ => {
            // Whatever the general parser accepts, it reads back from its own encoding.
            if let Ok(Some((c, used))) = kind.map_err(|_| ()) {
                prop_assert_eq!(used, line.len());
                let again = c.to_string();
                let roomy = Limits {
                    max_command_line: 100_000,
                    max_local_part: 100_000,
                    max_domain: 100_000,
                    max_path: 100_000,
                };
                let parsed =
                    general(again.as_bytes(), &roomy).map(|o| o.map(|(c, _)| c.to_string()));
                prop_assert_eq!(parsed, Ok(Some(again.clone())), "{:?}", text);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mail_lines_parse_to_what_was_built(c in case(true)) {
        check(&c)?;
    }

    #[test]
    fn rcpt_lines_parse_to_what_was_built(c in case(false)) {
        check(&c)?;
    }

    #[test]
    fn edited_mail_lines(c in case(true), e in edit()) {
        check_edited(&c, e)?;
    }

    #[test]
    fn edited_rcpt_lines(c in case(false), e in edit()) {
        check_edited(&c, e)?;
    }
}

/// The generators reach the fast path often, and the general parser's other forms too.
#[test]
fn generated_lines_cover_both_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut simple, mut ok, mut limit_errors) = (0, 0, 0);
    for mail in [true, false] {
        for _ in 0..1000 {
            let c = case(mail).new_tree(&mut runner).unwrap().current();
            simple += usize::from(c.simple);
            ok += usize::from(c.expected.is_ok());
            limit_errors += usize::from(c.expected.is_err());
        }
    }
    eprintln!("of 2000 lines: {simple} for the fast path, {ok} valid, {limit_errors} over a limit");
    assert!(
        simple > 150 && ok - simple > 800 && limit_errors > 150,
        "{simple} {ok} {limit_errors}"
    );
}
