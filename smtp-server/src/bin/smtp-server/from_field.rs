//! A strict reading of `From:` fields (RFC 5322 §3.4 and §3.6.2, groups as RFC 6854 allows
//! them), for the two places where what a reader is shown as the author matters: DMARC,
//! which checks the author domains, and DKIM signing, which vouches for one.
//!
//! Lenient parsers disagree on invalid fields. `b@fail.test <a@bounces.test>` is one address
//! to one parser (`a@bounces.test`) and another to the next (`b@fail.test`), and `b@fail.test
//! <>` is none at all to a parser that drops what it cannot read; a forger picks the reading
//! that escapes the check and the mail reader shows the other. So a field is read here by the
//! grammar only, and one that does not follow it is refused as a whole ([`mailboxes`]
//! returns why), never repaired. Comments and folding white space are allowed wherever RFC
//! 5322 allows CFWS, including around the `@` and the dots (`ceo@(x)bank.example` is
//! bank.example's), as are the obsolete local parts of words joined by dots and phrases with
//! dots (`John Q. Public`). UTF-8 is allowed in atoms and quoted strings (RFC 6532).

/// One address of a `From:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part as written (a dot-atom, or a quoted string with its quotes), without
    /// comments or white space.
    pub local: String,
    /// The domain, lower case, without a final dot; a domain literal keeps its brackets.
    pub domain: String,
    /// Whether it was a member of a group (`team: a@x, b@y;`).
    pub in_group: bool,
}

impl Mailbox {
    /// `local@domain`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// Whether the domain is a domain name that can be looked up: not a literal, and, in its
    /// ASCII form (IDNA, as the DNS queries use it), labels of 1 to 63 letters, digits, `-`
    /// and `_`, none starting or ending with `-`, the top one not all digits, 253 octets at
    /// most. A name IDNA refuses (`x\u{661}.example`, mixing scripts against its rules)
    /// is not one: a check could not look it up, while a reader shows it as under
    /// `example`.
    pub fn has_domain_name(&self) -> bool {
        let ascii = mail_auth::common::to_a_label(&self.domain);
        ascii.is_ascii() && is_host_name(&ascii)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `atext` characters (and any non-ASCII character).
    Atom(String),
    /// A quoted string, as written (quotes and quoted pairs kept).
    Quoted(String),
    /// A domain literal, as written with its brackets.
    Literal(String),
    /// One of `<>@,;:.`.
    Special(u8),
}

/// Whether `b` (a byte of UTF-8) may be in an atom: RFC 5322 `atext`, or any byte of a
/// non-ASCII character (RFC 6532).
pub fn atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// Where the comment that opens at `b[start]` (a `(`) ends: the index after its `)`, nested
/// comments and quoted pairs (`\)`) within; `None` when it does not end within `b`.
pub fn comment_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
}

/// Whether `name` (ASCII, a final dot already removed) is a host name a DNS lookup can use:
/// 253 octets at most, labels of 1 to 63 letters, digits, `-` and `_`, none starting or
/// ending with `-`, the top one not all digits (`192.0.2.1` is not a name).
pub fn is_host_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

/// The index after the first `close` at or after `from` that is not quoted by a backslash
/// (the end of a quoted string or a domain literal), if there is one.
fn closing(b: &[u8], from: usize, close: u8) -> Option<usize> {
    let mut i = from;
    loop {
        match *b.get(i)? {
            b'\\' => i += 2,
            c if c == close => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The tokens of a field value, comments and white space dropped.
fn tokens(value: &[u8]) -> Result<Vec<Token>, &'static str> {
    let text = std::str::from_utf8(value).map_err(|_| "From: is not UTF-8")?;
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            // A line break only as folding (CRLF, then white space); a bare CR or LF is
            // a line end to some readers and none to others.
            b'\r' if b.get(i + 1) == Some(&b'\n') => i += 2,
            b'\r' | b'\n' => return Err("From: has a bare CR or LF"),
            b' ' | b'\t' => i += 1,
            b'(' => i = comment_end(b, i).ok_or("From: has a comment that does not end")?,
            b'"' => {
                let end =
                    closing(b, i + 1, b'"').ok_or("From: has a quoted string that does not end")?;
                out.push(Token::Quoted(text[i..end].to_owned()));
                i = end;
            }
            b'[' => {
                let end = closing(b, i + 1, b']')
                    .ok_or("From: has a domain literal that does not end")?;
                out.push(Token::Literal(text[i..end].to_owned()));
                i = end;
            }
            c @ (b'<' | b'>' | b'@' | b',' | b';' | b':' | b'.') => {
                out.push(Token::Special(c));
                i += 1;
            }
            c if atext(c) => {
                let start = i;
                while i < b.len() && atext(b[i]) {
                    i += 1;
                }
                out.push(Token::Atom(text[start..i].to_owned()));
            }
            _ => return Err("From: has a character no address may hold"),
        }
    }
    Ok(out)
}

struct Parser {
    t: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.at)
    }

    fn special(&self, c: u8) -> bool {
        self.peek() == Some(&Token::Special(c))
    }

    fn expect(&mut self, c: u8, why: &'static str) -> Result<(), &'static str> {
        if self.special(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Skips empty list elements (the obsolete syntax's `a@x, , b@y`, RFC 5322 §4.4).
    fn skip_commas(&mut self) {
        while self.special(b',') {
            self.at += 1;
        }
    }

    /// Words (atoms, quoted strings) and dots, up to the next other token.
    fn words(&mut self) -> Vec<Token> {
        let mut w = Vec::new();
        while let Some(t) = self.peek() {
            match t {
                Token::Atom(_) | Token::Quoted(_) | Token::Special(b'.') => w.push(t.clone()),
                _ => break,
            }
            self.at += 1;
        }
        w
    }

    /// The rest of an addr-spec after its local part: `@` domain.
    fn domain(&mut self) -> Result<String, &'static str> {
        self.expect(b'@', "From: has an address without @")?;
        match self.peek() {
            Some(Token::Literal(l)) => {
                let l = l.clone();
                self.at += 1;
                Ok(l)
            }
            Some(Token::Atom(_)) => {
                let mut d = String::new();
                while let Some(Token::Atom(a)) = self.peek() {
                    d.push_str(a);
                    self.at += 1;
                    if !self.special(b'.') {
                        break;
                    }
                    self.at += 1;
                    // A final dot (a fully qualified name) ends the domain.
                    if matches!(self.peek(), Some(Token::Atom(_))) {
                        d.push('.');
                    }
                }
                Ok(d.to_lowercase())
            }
            _ => Err("From: has an address without a domain"),
        }
    }

    /// `words` as a local part: words joined by single dots, none at either end.
    fn local(words: &[Token]) -> Result<String, &'static str> {
        let mut s = String::new();
        let mut want_word = true;
        for w in words {
            match (w, want_word) {
                (Token::Atom(a) | Token::Quoted(a), true) => s.push_str(a),
                (Token::Special(b'.'), false) => s.push('.'),
                _ => return Err("From: has a local part with an empty word"),
            }
            want_word = !want_word;
        }
        if want_word {
            return Err("From: has a local part with an empty word");
        }
        Ok(s)
    }

    /// An addr-spec whose local part was read as `words`: its `@` and domain follow.
    fn addr_spec(&mut self, words: &[Token]) -> Result<Mailbox, &'static str> {
        let local = Self::local(words)?;
        let domain = self.domain()?;
        Ok(Mailbox {
            local,
            domain,
            in_group: false,
        })
    }

    /// `<` addr-spec `>`.
    fn angle_addr(&mut self) -> Result<Mailbox, &'static str> {
        self.expect(b'<', "From: has a name without an address")?;
        if self.special(b'@') || self.special(b',') {
            // An obsolete source route (`<@a.example,@b.example:x@y.example>`, RFC 5322
            // §4.4), which readers ignore.
            self.skip_commas();
            loop {
                let _route = self.domain()?;
                self.skip_commas();
                if !self.special(b'@') {
                    break;
                }
            }
            self.expect(b':', "From: has a source route without :")?;
        }
        let words = self.words();
        if words.is_empty() {
            return Err("From: has an empty address <>");
        }
        let mailbox = self.addr_spec(&words)?;
        self.expect(b'>', "From: has an address that does not end with >")?;
        Ok(mailbox)
    }

    /// A mailbox (addr-spec, or a name-addr whose display name was read as `words`).
    fn mailbox_after(&mut self, words: &[Token]) -> Result<Mailbox, &'static str> {
        if self.special(b'<') {
            if words.first() == Some(&Token::Special(b'.')) {
                return Err("From: has a display name starting with a dot");
            }
            return self.angle_addr();
        }
        if words.is_empty() {
            return Err("From: has no address where one is due");
        }
        self.addr_spec(words)
    }

    /// A mailbox-list item or a group.
    fn item(&mut self, out: &mut Vec<Mailbox>, in_group: bool) -> Result<(), &'static str> {
        let words = self.words();
        if !in_group && self.special(b':') && !words.is_empty() {
            self.at += 1;
            loop {
                // Empty elements are skipped in a group too.
                self.skip_commas();
                if self.special(b';') {
                    self.at += 1;
                    return Ok(());
                }
                self.item(out, true)?;
                if self.special(b',') {
                    self.at += 1;
                    continue;
                }
                return self.expect(b';', "From: has a group that does not end with ;");
            }
        }
        let mut m = self.mailbox_after(&words)?;
        m.in_group = in_group;
        out.push(m);
        Ok(())
    }
}

/// The mailboxes of one `From:` field's value (unfolded or not), or why it does not follow
/// the grammar (see the module doc). An empty group gives no mailbox; an empty value is an
/// error.
pub fn mailboxes(value: &[u8]) -> Result<Vec<Mailbox>, &'static str> {
    let mut p = Parser {
        t: tokens(value)?,
        at: 0,
    };
    if p.t.is_empty() {
        return Err("From: is empty");
    }
    let mut out = Vec::new();
    loop {
        // Empty elements, a leading or trailing comma included: every reader skips them.
        p.skip_commas();
        if p.peek().is_none() {
            return if out.is_empty() && !p.t.contains(&Token::Special(b':')) {
                Err("From: holds no address")
            } else {
                Ok(out)
            };
        }
        p.item(&mut out, false)?;
        match p.peek() {
            None => return Ok(out),
            Some(Token::Special(b',')) => p.at += 1,
            Some(_) => return Err("From: has more after an address than a comma and another"),
        }
    }
}

/// The fields of a header section (up to its blank line) as (name, value) pairs, the value
/// with its continuation lines.
pub fn header_fields(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    // (name, where its value starts, where it ends so far)
    let mut fields: Vec<(&[u8], usize, usize)> = Vec::new();
    let mut start = 0;
    while start < header.len() {
        let line_end = header[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| start + p + 1);
        let line = &header[start..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A continuation of the field before (or of nothing, at the start: ignored).
            if let Some((_, _, end)) = fields.last_mut() {
                *end = line_end;
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            fields.push((&line[..colon], start + colon + 1, line_end));
        }
        start = line_end;
    }
    fields
        .into_iter()
        .map(|(name, from, to)| (name, &header[from..to]))
        .collect()
}

/// The values of the `From:` fields of a header section given as (name, value) pairs (a
/// name compared without case, white space before the colon ignored).
pub fn from_values<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<&'a [u8]> {
    headers
        .into_iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"from"))
        .map(|(_, value)| value)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn domains(v: &str) -> Result<Vec<String>, &'static str> {
        mailboxes(v.as_bytes()).map(|m| m.into_iter().map(|m| m.domain).collect())
    }

    #[test]
    fn valid_fields_give_every_address() {
        let cases: &[(&str, &[&str])] = &[
            ("ceo@bank.example", &["bank.example"]),
            (" Alice <alice@Example.ORG>\r\n", &["example.org"]),
            ("\"Doe, John\" <j@x.test>, k@y.test", &["x.test", "y.test"]),
            ("John Q. Public <jqp@x.test>", &["x.test"]),
            ("ceo@(comment)bank.example", &["bank.example"]),
            ("ceo (c) @ bank . example (trailing)", &["bank.example"]),
            ("ceo@bank.example.", &["bank.example"]),
            ("\"a b\"@x.test", &["x.test"]),
            ("first.last@x.test", &["x.test"]),
            ("=?utf-8?q?J=C3=BCrgen?= <j@x.test>", &["x.test"]),
            (
                "J\u{fc}rgen <j\u{fc}@b\u{fc}cher.test>",
                &["b\u{fc}cher.test"],
            ),
            ("team: a@x.test, b@y.test;", &["x.test", "y.test"]),
            ("undisclosed:;", &[]),
            ("a@[127.0.0.1]", &["[127.0.0.1]"]),
            ("<a@x.test>", &["x.test"]),
            ("a@x.test,\r\n\tb@y.test", &["x.test", "y.test"]),
            // The obsolete forms readers still take (RFC 5322 §4.4).
            ("Name <a@x.test>,", &["x.test"]),
            (", a@x.test", &["x.test"]),
            ("a@x.test,,b@y.test", &["x.test", "y.test"]),
            ("<@a.test,@b.test:x@y.test>", &["y.test"]),
            ("Bob <,@a.test:x@y.test>", &["y.test"]),
            ("g:, a@x.test;", &["x.test"]),
            ("g: a@x.test,, b@y.test;", &["x.test", "y.test"]),
            ("g: ,;", &[]),
        ];
        for (v, want) in cases {
            let want: Vec<String> = want.iter().map(|d| (*d).to_owned()).collect();
            assert_eq!(domains(v), Ok(want), "{v:?}");
        }
        let m = &mailboxes(b"\"a b\" . c@X.test").unwrap()[0];
        assert_eq!(m.address(), "\"a b\".c@x.test");
    }

    #[test]
    fn invalid_fields_are_refused_whole() {
        for v in [
            "",
            "   ",
            "b@fail.test <a@bounces.test>",
            "b@fail.test<a@bounces.test>",
            "Bob <b@fail.test> <a@bounces.test>",
            "b@fail.test <>",
            "a@bounces.test, b@fail.test <>",
            "<>",
            "b",
            "=?utf-8?q?b=40fail.test?=",
            "Bob b@fail.test",
            "a@x..test",
            "a@.x.test",
            "a@",
            "@x.test",
            ".a@x.test",
            "a.@x.test",
            "a..b@x.test",
            ",",
            "a@x.test\rFrom: b@y.test",
            "a@x.test\nb@y.test",
            "<@a.test x@y.test>",
            "Bob <b@x.test",
            "(open comment a@x.test",
            "\"open a@x.test",
            "g: a@x.test",
            "g: h: a@x.test;;",
            "a@x.test; b@y.test",
            "a@x.test\\",
        ] {
            assert!(mailboxes(v.as_bytes()).is_err(), "{v:?}: {:?}", domains(v));
        }
        assert!(mailboxes(b"a@\xff.test").is_err());
    }

    #[test]
    fn domain_names_and_literals() {
        let m = |v: &str| mailboxes(v.as_bytes()).unwrap().remove(0);
        assert!(m("a@x.test").has_domain_name());
        assert!(m("a@b\u{fc}cher.test").has_domain_name());
        assert!(!m("a@[127.0.0.1]").has_domain_name());
        assert!(!m("a@x!.test").has_domain_name());
        for bad in [
            "a@x\u{661}.example.test",
            "a@-x.example.test",
            "a@x-.example.test",
            "a@example.123",
            "a@1.2.3.4",
        ] {
            assert!(!m(bad).has_domain_name(), "{bad}");
        }
        let long = format!("a@{}.example.test", "x".repeat(64));
        assert!(!m(&long).has_domain_name());
        assert!(m(&format!("a@{}.example.test", "x".repeat(63))).has_domain_name());
    }

    /// A mailbox written in one of the forms RFC 5322 allows, with comments and folding.
    fn write_mailbox(local: &str, domain: &str, name: &str, form: u8) -> String {
        match form % 4 {
            0 => format!("{local}@{domain}"),
            1 => format!("{name} <{local}@{domain}>"),
            2 => format!("\"{name}, x\" (c) <{local} @ {domain}>"),
            _ => format!("(a (nested) comment)\r\n\t{local}@(here){domain}."),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Every list written by the grammar reads back as its addresses, in order; and cut
        /// short anywhere it is either refused or reads as a prefix's addresses, never as
        /// other ones (the grammar gives each field one reading).
        #[test]
        fn written_lists_read_back(
            boxes in proptest::collection::vec(
                ("[a-z0-9]{1,8}(\\.[a-z0-9+_-]{1,5})?", "[a-z0-9-]{1,8}(\\.[a-z]{2,5}){1,2}",
                 "[A-Za-z]{1,6}( [A-Za-z.]{1,6})?", 0u8..4),
                1..5),
            cut in 0usize..200,
        ) {
            let written: Vec<String> = boxes
                .iter()
                .map(|(l, d, n, f)| write_mailbox(l, d, n, *f))
                .collect();
            let value = written.join(",\r\n ");
            let got = mailboxes(value.as_bytes()).map_err(|e| format!("{e}: {value:?}"));
            let want: Vec<String> = boxes
                .iter()
                .map(|(l, d, _, _)| format!("{l}@{}", d.to_lowercase()))
                .collect();
            let got: Vec<String> = got
                .map_err(proptest::test_runner::TestCaseError::fail)?
                .iter()
                .map(Mailbox::address)
                .collect();
            proptest::prop_assert_eq!(&got, &want);
            let cut = cut.min(value.len());
            if value.is_char_boundary(cut) {
                if let Ok(prefix) = mailboxes(&value.as_bytes()[..cut]) {
                    for (i, m) in prefix.iter().enumerate() {
                        let last = i + 1 == prefix.len();
                        // The last address may be cut inside its domain or local part.
                        proptest::prop_assert!(
                            last || m.address() == want[i],
                            "{:?} -> {:?}", &value[..cut], prefix
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn header_fields_keep_their_continuations() {
        let h = b"Subject: a\r\nFrom: Alice\r\n <a@x.test>\r\nTo: b\r\n\r\nFrom: body@y.test\r\n";
        let f = header_fields(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1], (&b"From"[..], &b" Alice\r\n <a@x.test>\r\n"[..]));
        assert_eq!(from_values(f), [&b" Alice\r\n <a@x.test>\r\n"[..]]);
        assert!(mailboxes(b"team: a@x.test;").unwrap()[0].in_group);
    }

    #[test]
    fn from_fields_are_found_by_name() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"Subject", b" x"),
            (b"From ", b" a@x.test"),
            (b"FROM", b" b@y.test"),
            (b"X-From", b" c@z.test"),
        ];
        assert_eq!(from_values(h), [&b" a@x.test"[..], b" b@y.test"]);
    }
}
