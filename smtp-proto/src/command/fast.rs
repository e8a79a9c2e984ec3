//! The common forms of `MAIL` and `RCPT` in one forward pass.
//!
//! Almost every client sends `MAIL FROM:<local@domain>` or `RCPT TO:<local@domain>` with a
//! dot-string ASCII local part and an ASCII domain name, the keyword and `<` with no space
//! between. These functions recognise exactly that form and return `None` for anything else
//! (spaces after the colon, no angle brackets, quoted local parts, source routes, address
//! literals, U-labels, paths over the limits, any error), leaving the decision to the general
//! parser in [`super::mail`]. They never refuse a line, so they cannot be stricter than the
//! general parser, and what they accept they build exactly as it would.
//!
//! This is a second, partial copy of the grammar, kept only because it pays at session
//! level (issue 14 part 5; figures in `smtp-proto/README.md`): with it a session of plain
//! transactions costs 14 % fewer instructions. Two tests hold it to the general parser:
//! the proptests below (random pieces, agreement whenever it answers) and
//! `super::differential` (lines built from known parts: the fast path's answer, the general
//! parser's and the value the generator built must all be equal, and every line of the form
//! above must take the fast path). Extending it (to ORCPT, say) means extending both.
use super::{Command, Limits};
use crate::address::{atext_class, eq_upper, ldh_class, sub, ForwardPath, Mailbox, ReversePath};
use crate::param::{Body, MailParams, Notify, RcptParams};

/// ASCII `atext`: a dot-string byte other than the dot.
const ATOM: u8 = 1;
/// ASCII letter, digit or hyphen: a label byte.
const LABEL: u8 = 2;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    // ASCII only: UTF-8 addresses take the general parser.
    while i < 128 {
        let b = i as u8;
        if atext_class(b) {
            t[i] |= ATOM;
        }
        if ldh_class(b) {
            t[i] |= LABEL;
        }
        i += 1;
    }
    t
};

/// Length of the prefix of `p[from..]` whose bytes have `class`, as an end offset in `p`.
#[inline(always)]
fn run(p: &[u8], from: usize, class: u8) -> usize {
    let Some(rest) = p.get(from..) else {
        return from;
    };
    from + rest
        .iter()
        .position(|&b| CLASS[b as usize] & class == 0)
        .unwrap_or(rest.len())
}

/// For `p` starting with `<`: the offsets of the `@` and the `>` of `<local@domain>`, when
/// the local part is an ASCII dot-string, the domain ASCII labels, and the lengths within
/// `limits`; `None` otherwise.
#[inline(always)]
fn simple_path(p: &[u8], limits: &Limits) -> Option<(usize, usize)> {
    let mut i = 1;
    let at = loop {
        let start = i;
        i = run(p, i, ATOM);
        if i == start {
            return None;
        }
        match p.get(i) {
            Some(b'.') => i += 1,
            Some(b'@') => break i,
            _ => return None,
        }
    };
    i = at + 1;
    let end = loop {
        let start = i;
        i = run(p, i, LABEL);
        if i == start || p.get(start) == Some(&b'-') || p.get(i - 1) == Some(&b'-') {
            return None;
        }
        match p.get(i) {
            Some(b'.') => i += 1,
            Some(b'>') => break i,
            _ => return None,
        }
    };
    if at - 1 > limits.max_local_part
        || end - at - 1 > limits.max_domain
        || end + 1 > limits.max_path
    {
        return None;
    }
    Some((at, end))
}

/// The mailbox `<local@domain>` that [`simple_path`] found at `input[path..]`, with `@` at
/// `path + at` and `>` at `path + end`; `line_end` is where the line's CRLF starts.
///
/// Every byte of the line was checked to be ASCII on the way, so any range of it is text:
/// UTF-8 is validated once, over a range that [`super::text_covering`] may widen to whole
/// blocks, and the two parts are sliced from it.
#[inline(always)]
fn mailbox(
    input: &[u8],
    path: usize,
    at: usize,
    end: usize,
    line_end: usize,
) -> Option<Mailbox<&str>> {
    let text = super::text_covering(input, path, line_end)?;
    let addr = sub(text, input.get(path + 1..path + end)?)?;
    let (local, domain) = addr.split_at_checked(at - 1)?;
    Some(Mailbox::from_checked(local, domain.get(1..)?))
}

/// Skips spaces, then returns the rest, or `None` at the end of the line (a CR).
#[inline(always)]
fn next_param(mut s: &[u8]) -> Option<&[u8]> {
    while let [b' ', r @ ..] = s {
        s = r;
    }
    (!matches!(s, [] | [b'\r', ..])).then_some(s)
}

/// True when `s` starts with a space or CR (or is empty): the end of a parameter.
#[inline(always)]
fn at_end(s: &[u8]) -> bool {
    matches!(s, [] | [b' ' | b'\r', ..])
}

/// What follows the `>`: the line end, or a space and the parameters.
#[inline(always)]
fn params_of(p: &[u8], end: usize) -> Option<&[u8]> {
    match p.get(end + 1..)? {
        s @ [b'\r', ..] => Some(s),
        [b' ', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// Where the line ends, given what is left after the parameters: `rest` must be only spaces
/// then CRLF. Returns the offset of the CR in `input` and the line's length with its CRLF.
#[inline(always)]
fn line_end(input: &[u8], mut rest: &[u8], limits: &Limits) -> Option<(usize, usize)> {
    while let [b' ', r @ ..] = rest {
        rest = r;
    }
    if !rest.starts_with(b"\r\n") {
        return None;
    }
    let cr = input.len() - rest.len();
    (cr + 2 <= limits.max_command_line).then_some((cr, cr + 2))
}

/// The whole line `MAIL FROM:<local@domain> [params] CRLF` or `RCPT TO:<local@domain>
/// [params] CRLF` (verb in any case) at the start of `input`, with its length; `None` for
/// anything else, including lines over [`Limits::max_command_line`].
///
/// No byte this accepts is an LF, so the CRLF it ends at is the line's first line end.
#[inline(always)]
pub(super) fn mail_or_rcpt<'a>(input: &'a [u8], limits: &Limits) -> Option<(Command<'a>, usize)> {
    let verb = input.get(..5)?;
    if eq_upper(verb, b"MAIL ") {
        mail(input, limits)
    } else if eq_upper(verb, b"RCPT ") {
        rcpt(input, limits)
    } else {
        None
    }
}

/// `MAIL FROM:<local@domain> [params] CRLF` or `MAIL FROM:<> [params] CRLF`.
#[inline(always)]
fn mail<'a>(input: &'a [u8], limits: &Limits) -> Option<(Command<'a>, usize)> {
    const PATH: usize = b"MAIL FROM:".len();
    if !input
        .get(5..PATH + 1)
        .is_some_and(|k| eq_upper(k, b"FROM:<"))
    {
        return None;
    }
    let p = &input[PATH..];
    if p.get(1) == Some(&b'>') {
        let (params, rest) = mail_params(params_of(p, 1)?)?;
        let (_, used) = line_end(input, rest, limits)?;
        let from = ReversePath::Null;
        return Some((Command::Mail { from, params }, used));
    }
    let (at, end) = simple_path(p, limits)?;
    let (params, rest) = mail_params(params_of(p, end)?)?;
    let (cr, used) = line_end(input, rest, limits)?;
    let from = ReversePath::Mailbox(mailbox(input, PATH, at, end, cr)?);
    Some((Command::Mail { from, params }, used))
}

/// `RCPT TO:<local@domain> [params] CRLF`.
#[inline(always)]
fn rcpt<'a>(input: &'a [u8], limits: &Limits) -> Option<(Command<'a>, usize)> {
    const PATH: usize = b"RCPT TO:".len();
    if !input.get(5..PATH + 1).is_some_and(|k| eq_upper(k, b"TO:<")) {
        return None;
    }
    let p = &input[PATH..];
    let (at, end) = simple_path(p, limits)?;
    let (params, rest) = rcpt_params(params_of(p, end)?)?;
    let (cr, used) = line_end(input, rest, limits)?;
    let to = ForwardPath::Mailbox(mailbox(input, PATH, at, end, cr)?);
    Some((Command::Rcpt { to, params }, used))
}

/// `1*20DIGIT` up to the end of the parameter, as [`crate::param`] reads `SIZE=`.
#[inline(always)]
fn size(v: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    let mut digits = 0;
    let mut rest = v;
    while let [d @ b'0'..=b'9', r @ ..] = rest {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        digits += 1;
        rest = r;
    }
    ((1..=20).contains(&digits) && at_end(rest)).then_some((n, rest))
}

/// `BODY=` values, up to the end of the parameter.
#[inline(always)]
fn body(v: &[u8]) -> Option<(Body, &[u8])> {
    let (b, n) = match v.first() {
        Some(b'8') if v.get(..8).is_some_and(|w| eq_upper(w, b"8BITMIME")) => {
            (Body::EightBitMime, 8)
        }
        Some(b'7') if v.get(..4).is_some_and(|w| eq_upper(w, b"7BIT")) => (Body::SevenBit, 4),
        _ if v.get(..10).is_some_and(|w| eq_upper(w, b"BINARYMIME")) => (Body::BinaryMime, 10),
        _ => return None,
    };
    let rest = &v[n..];
    at_end(rest).then_some((b, rest))
}

/// `NOTIFY=` values, up to the end of the parameter: `NEVER` or a comma list.
#[inline(always)]
fn notify(v: &[u8]) -> Option<(Notify, &[u8])> {
    if let Some(w) = v.get(..5) {
        if eq_upper(w, b"NEVER") {
            let rest = &v[5..];
            return at_end(rest).then_some((Notify::NEVER, rest));
        }
    }
    let mut n = Notify::NEVER;
    let mut rest = v;
    loop {
        let len = if rest.get(..7).is_some_and(|w| eq_upper(w, b"SUCCESS")) {
            n.success = true;
            7
        } else if rest.get(..7).is_some_and(|w| eq_upper(w, b"FAILURE")) {
            n.failure = true;
            7
        } else if rest.get(..5).is_some_and(|w| eq_upper(w, b"DELAY")) {
            n.delay = true;
            5
        } else {
            return None;
        };
        match &rest[len..] {
            [b',', r @ ..] => rest = r,
            r if at_end(r) => return Some((n, r)),
            _ => return None,
        }
    }
}

/// MAIL parameters made only of `SIZE`, `BODY` and `SMTPUTF8`, each at most once, with
/// what is left after them.
#[inline(always)]
fn mail_params<'a>(mut s: &[u8]) -> Option<(MailParams<&'a str>, &[u8])> {
    let mut p = MailParams::default();
    while let Some(r) = next_param(s) {
        s = if r.get(..5).is_some_and(|k| eq_upper(k, b"SIZE=")) && p.size.is_none() {
            let (n, rest) = size(&r[5..])?;
            p.size = Some(n);
            rest
        } else if r.get(..5).is_some_and(|k| eq_upper(k, b"BODY=")) && p.body.is_none() {
            let (b, rest) = body(&r[5..])?;
            p.body = Some(b);
            rest
        } else if r.get(..8).is_some_and(|k| eq_upper(k, b"SMTPUTF8"))
            && !p.smtputf8
            && at_end(&r[8..])
        {
            p.smtputf8 = true;
            &r[8..]
        } else {
            return None;
        };
    }
    Some((p, s))
}

/// RCPT parameters made only of one `NOTIFY`, with what is left after them.
#[inline(always)]
fn rcpt_params<'a>(s: &[u8]) -> Option<(RcptParams<&'a str>, &[u8])> {
    let mut p = RcptParams::default();
    let Some(r) = next_param(s) else {
        return Some((p, s));
    };
    if !r.get(..7).is_some_and(|k| eq_upper(k, b"NOTIFY=")) {
        return None;
    }
    let (n, rest) = notify(&r[7..])?;
    p.notify = Some(n);
    next_param(rest).is_none().then_some((p, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::super::{general, Limits};

    /// Pieces that make valid, near-valid and unusual MAIL/RCPT arguments.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "Bob",
            "x9",
            "-",
            "+",
            "_",
            "!",
            "=",
            ".",
            "..",
            "@",
            "@@",
            "<",
            ">",
            "<>",
            "\"",
            "\\",
            " ",
            "  ",
            ",",
            ":",
            ";",
            "[",
            "]",
            "é",
            "\u{80}",
            "\t",
            "example",
            "ex-ample",
            "-x",
            "x-",
            "com",
            "1",
            "postmaster",
            "PostMaster",
            "[192.0.2.1]",
            "[IPv6:::1]",
            "@a,@b:",
            "SIZE=",
            "size=123",
            "SIZE=00000000000000000001",
            "SIZE=99999999999999999999",
            "SIZE=18446744073709551615",
            "SIZE=1x",
            "BODY=",
            "BODY=8bitmime",
            "BODY=7BIT",
            "body=binarymime",
            "BODY=8BITMIMEX",
            "SMTPUTF8",
            "smtputf8=1",
            "NOTIFY=",
            "notify=never",
            "NOTIFY=SUCCESS,FAILURE",
            "NOTIFY=DELAY,delay",
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SUCCESS,",
            "ORCPT=rfc822;a",
            "RET=FULL",
            "ENVID=x",
            "AUTH=<>",
            "X-Y",
            "X=1",
            "=",
        ])
    }

    /// Mostly pieces of ordinary addresses and parameters, sometimes anything from [`piece`].
    fn mostly(clean: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => prop::sample::select(clean.to_vec()), 1 => piece()]
    }

    const ATOMS: &[&str] = &[
        "a",
        "Bob",
        "x9",
        "jo.nes",
        "d+l",
        "a_b",
        "postmaster",
        ".",
        "-",
        "~",
    ];
    const LABELS: &[&str] = &[
        "example", "com", "ex-ample", "1", ".org", ".", "sub.", "x-", "-x", ".-",
    ];
    const MAIL_PARAMS: &[&str] = &["SIZE=100", "BODY=8BITMIME", "body=7bit", "SMTPUTF8"];
    const RCPT_PARAMS: &[&str] = &["NOTIFY=NEVER", "NOTIFY=SUCCESS,FAILURE", "notify=delay"];

    /// Mostly `usual`, sometimes one of `other`.
    fn weighted(
        usual: &'static str,
        other: &'static [&'static str],
    ) -> impl Strategy<Value = &'static str> {
        prop_oneof![10 => Just(usual), 1 => prop::sample::select(other.to_vec())]
    }

    /// `keyword` then a path-like run of pieces, sometimes in angle brackets, then
    /// parameter-like pieces.
    fn args(
        keyword: &'static [&'static str],
        params: &'static [&'static str],
    ) -> impl Strategy<Value = String> {
        (
            prop::sample::select(keyword.to_vec()),
            prop::bool::weighted(0.9),
            prop::collection::vec(mostly(ATOMS), 0..4).prop_map(|v| {
                if v.is_empty() {
                    vec!["a"]
                } else {
                    v
                }
            }),
            weighted("@", &["", "@@", "<"]),
            prop::collection::vec(mostly(LABELS), 0..4),
            weighted(">", &["", ">>", "> "]),
            prop::collection::vec((weighted(" ", &["  ", ""]), mostly(params)), 0..3),
        )
            .prop_map(|(k, angle, local, at, domain, close, params)| {
                let mut s = k.to_string();
                if angle {
                    s.push('<');
                }
                s.extend(local);
                s.push_str(at);
                s.extend(domain);
                s.push_str(close);
                for (sp, p) in params {
                    s.push_str(sp);
                    s.push_str(p);
                }
                s
            })
    }

    fn limits() -> impl Strategy<Value = Limits> {
        prop_oneof![
            Just(Limits::default()),
            (1..8usize, 1..12usize, 2..20usize).prop_map(|(l, d, p)| Limits {
                max_local_part: l,
                max_domain: d,
                max_path: p,
                ..Limits::default()
            }),
        ]
    }

    fn line_limits() -> impl Strategy<Value = Limits> {
        (limits(), prop_oneof![4 => Just(512usize), 1 => 8..80usize]).prop_map(|(l, max)| Limits {
            max_command_line: max,
            ..l
        })
    }

    /// What may follow a line in the buffer: nothing, the next command, or bytes that are
    /// not UTF-8 (so the widened UTF-8 check has to fall back to the line).
    fn next() -> impl Strategy<Value = &'static [u8]> {
        prop::sample::select(vec![
            &b""[..],
            b"RCPT TO:<x@y>\r\n",
            b"\xff\xfe\xfd",
            b"\n",
            b"\r\n",
        ])
    }

    /// `verb args CRLF next` as bytes.
    fn line(verb: &str, args: &str, next: &[u8]) -> Vec<u8> {
        let mut l = format!("{verb} {args}\r\n").into_bytes();
        l.extend_from_slice(next);
        l
    }

    /// Whenever the fast path answers for `verb args CRLF next`, the general parser gives the
    /// same command and length.
    fn agrees(verb: &str, args: &str, next: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
        let l = line(verb, args, next);
        if let Some(c) = super::mail_or_rcpt(&l, limits) {
            prop_assert_eq!(Ok(Some(c)), general(&l, limits), "{:?}", args);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn mail_fast_path_agrees_with_the_general_parser(
            verb in prop::sample::select(vec!["MAIL", "mail", "MaIl"]),
            a in args(&["FROM:", "from:", "FrOm:", "FROM: ", "FROM:<>", "FROM"], MAIL_PARAMS),
            next in next(),
            limits in line_limits(),
        ) {
            agrees(verb, &a, next, &limits)?;
        }

        #[test]
        fn rcpt_fast_path_agrees_with_the_general_parser(
            verb in prop::sample::select(vec!["RCPT", "rcpt", "rCpT"]),
            a in args(&["TO:", "to:", "tO:", "TO: ", "TO:<>", "TO"], RCPT_PARAMS),
            next in next(),
            limits in line_limits(),
        ) {
            agrees(verb, &a, next, &limits)?;
        }
    }

    /// A fair share of generated lines take the fast path, so the properties above test it.
    #[test]
    fn generated_lines_reach_the_fast_path() {
        let mut runner = TestRunner::deterministic();
        let l = Limits::default();
        let (mut mail_hits, mut rcpt_hits) = (0, 0);
        for _ in 0..2000 {
            let a = args(&["FROM:"], MAIL_PARAMS)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            mail_hits += usize::from(super::mail_or_rcpt(&line("MAIL", &a, b""), &l).is_some());
            let a = args(&["TO:"], RCPT_PARAMS)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            rcpt_hits += usize::from(super::mail_or_rcpt(&line("RCPT", &a, b""), &l).is_some());
        }
        eprintln!("fast path taken: MAIL {mail_hits}/2000, RCPT {rcpt_hits}/2000");
        assert!(
            mail_hits > 100 && rcpt_hits > 100,
            "{mail_hits} {rcpt_hits}"
        );
    }

    /// The forms the fast path exists for do take it (so the property above is not vacuous).
    #[test]
    fn common_forms_take_the_fast_path() {
        let l = Limits::default();
        for a in [
            "FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME",
            "FROM:<> BODY=7BIT",
            "from:<a@b>  smtputf8",
        ] {
            let l2 = line("MAIL", a, b"");
            let c = super::mail_or_rcpt(&l2, &l).unwrap();
            assert_eq!(Ok(Some(c)), general(&l2, &l), "{a}");
        }
        for a in [
            "TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE",
            "TO:<dave+lists@example.com> NOTIFY=failure,delay",
            "to:<erin@sub.example.co.uk>",
            "TO:<postmaster@example.org> notify=NEVER",
        ] {
            let l2 = line("RCPT", a, b"");
            let c = super::mail_or_rcpt(&l2, &l).unwrap();
            assert_eq!(Ok(Some(c)), general(&l2, &l), "{a}");
        }
        for a in [
            "TO: <a@b>",
            "TO:<\"a b\"@c>",
            "TO:<a@[192.0.2.1]>",
            "TO:<a@b> ORCPT=x;y",
        ] {
            assert!(
                super::mail_or_rcpt(&line("RCPT", a, b""), &l).is_none(),
                "{a}"
            );
        }
    }
}
