//! `.mh_sequences`: the file that makes a numbered spool mailbox an MH folder.
//!
//! MH (nmh, mutt, Claws Mail, Python's `mailbox.MH`) keeps named sets of message numbers in a
//! folder's `.mh_sequences`, one per line: the name, a colon, then numbers and ranges separated
//! by spaces, e.g. `unseen: 1-3 5` + LF. mutt only takes a directory with that file for an MH
//! folder, and Python's `mailbox.MH` needs it to read sequences. The spool keeps it in step with
//! the `.status` files (which stay the record): new mail is in `unseen`; a flag change sets
//! `unseen` (no `\Seen`), `flagged` (`\Flagged`) and `replied` (`\Answered`), the names mutt
//! uses; a deletion removes the number from every sequence.
//!
//! Lines this crate does not understand (other programs' formats, continuation lines it cannot
//! parse) are kept as they are; sequences it does not manage are kept too. Empty sequences are
//! left out, as nmh and Python do.

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// `name: 1-3 5`, as sorted, disjoint, non-adjacent inclusive ranges.
    Seq(String, Vec<(u64, u64)>),
    /// Anything else, kept byte for byte (without its line end).
    Raw(Vec<u8>),
}

/// The parsed contents of a `.mh_sequences` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sequences {
    lines: Vec<Line>,
}

fn parse_items(text: &str) -> Option<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    for item in text.split_ascii_whitespace() {
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u64>().ok()
            }
        };
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(item)?;
                (n, n)
            }
        };
        if a > b {
            return None;
        }
        ranges.push((a, b));
    }
    Some(normalize(ranges))
}

fn normalize(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'-')
}

impl Sequences {
    /// Parses a file's bytes; never fails (what it cannot read is kept as it is).
    pub fn parse(bytes: &[u8]) -> Sequences {
        let mut lines: Vec<Line> = Vec::new();
        for raw in bytes.split(|&b| b == b'\n') {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(raw).ok();
            // A continuation line (RFC 822 style, as nmh reads them) extends the sequence above.
            if raw[0] == b' ' || raw[0] == b'\t' {
                if let (Some(Line::Seq(_, ranges)), Some(items)) =
                    (lines.last_mut(), text.and_then(parse_items))
                {
                    ranges.extend(items);
                    *ranges = normalize(std::mem::take(ranges));
                    continue;
                }
            }
            let parsed = text.and_then(|t| {
                let (name, items) = t.split_once(':')?;
                let name = name.trim();
                if !valid_name(name) {
                    return None;
                }
                Some(Line::Seq(name.to_owned(), parse_items(items)?))
            });
            lines.push(parsed.unwrap_or_else(|| Line::Raw(raw.to_vec())));
        }
        Sequences { lines }
    }

    /// The file's bytes: `name: a-b c` + LF per non-empty sequence, other lines as read.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in &self.lines {
            match line {
                Line::Seq(_, ranges) if ranges.is_empty() => {}
                Line::Seq(name, ranges) => {
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    for &(a, b) in ranges {
                        if a == b {
                            out.extend_from_slice(format!(" {a}").as_bytes());
                        } else {
                            out.extend_from_slice(format!(" {a}-{b}").as_bytes());
                        }
                    }
                    out.push(b'\n');
                }
                Line::Raw(raw) => {
                    out.extend_from_slice(raw);
                    out.push(b'\n');
                }
            }
        }
        out
    }

    /// The numbers in sequence `name` (empty if there is none), as ranges.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Vec<(u64, u64)> {
        self.lines
            .iter()
            .find_map(|l| match l {
                Line::Seq(n, r) if n == name => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Puts `number` in sequence `name` (creating it at the end) or takes it out.
    pub fn set(&mut self, name: &str, number: u64, member: bool) {
        let pos = self
            .lines
            .iter()
            .position(|l| matches!(l, Line::Seq(n, _) if n == name));
        let ranges = match pos {
            Some(i) => match &mut self.lines[i] {
                Line::Seq(_, r) => r,
                Line::Raw(_) => return,
            },
            None if !member => return,
            None => {
                self.lines.push(Line::Seq(name.to_owned(), Vec::new()));
                match self.lines.last_mut() {
                    Some(Line::Seq(_, r)) => r,
                    _ => return,
                }
            }
        };
        if member {
            // Usually the newest number: extend the last range.
            ranges.push((number, number));
            *ranges = normalize(std::mem::take(ranges));
        } else {
            let mut out = Vec::with_capacity(ranges.len() + 1);
            for &(a, b) in ranges.iter() {
                if number < a || number > b {
                    out.push((a, b));
                    continue;
                }
                if a < number {
                    out.push((a, number - 1));
                }
                if number < b {
                    out.push((number + 1, b));
                }
            }
            *ranges = out;
        }
    }

    /// Takes `number` out of every sequence.
    pub fn remove_everywhere(&mut self, number: u64) {
        let names: Vec<String> = self
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Seq(n, _) => Some(n.clone()),
                Line::Raw(_) => None,
            })
            .collect();
        for name in names {
            self.set(&name, number, false);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn format_as_mh_writes_it() {
        let mut s = Sequences::default();
        for n in [1, 2, 3, 5] {
            s.set("unseen", n, true);
        }
        assert_eq!(s.encode(), b"unseen: 1-3 5\n");
        s.set("flagged", 2, true);
        s.set("unseen", 2, false);
        assert_eq!(s.encode(), b"unseen: 1 3 5\nflagged: 2\n");
        s.remove_everywhere(2);
        s.remove_everywhere(5);
        assert_eq!(s.encode(), b"unseen: 1 3\n");
        s.set("unseen", 2, true);
        assert_eq!(s.encode(), b"unseen: 1-3\n");
    }

    #[test]
    fn keeps_what_others_wrote() {
        let text = b"cur: 4\nunseen: 1-3 7\n  9-10\nweird line\nflagged:\n";
        let mut s = Sequences::parse(text);
        assert_eq!(s.get("unseen"), vec![(1, 3), (7, 7), (9, 10)]);
        assert_eq!(s.get("cur"), vec![(4, 4)]);
        s.set("unseen", 11, true);
        assert_eq!(
            s.encode(),
            b"cur: 4\nunseen: 1-3 7 9-11\nweird line\n".to_vec()
        );
        assert_eq!(
            Sequences::parse(b"unseen: 18446744073709551615\n").get("unseen"),
            vec![(u64::MAX, u64::MAX)]
        );
        // Out of range or reversed: kept verbatim, not misread.
        let odd = b"unseen: 99999999999999999999\nx: 5-2\n";
        assert_eq!(Sequences::parse(odd).encode(), odd.to_vec());
    }

    proptest! {
        #[test]
        fn set_matches_a_set_of_numbers(ops in proptest::collection::vec((0u64..40, any::<bool>()), 0..60)) {
            let mut s = Sequences::default();
            let mut model = std::collections::BTreeSet::new();
            for (n, member) in ops {
                s.set("unseen", n, member);
                if member { model.insert(n); } else { model.remove(&n); }
            }
            let got: Vec<u64> = s.get("unseen").iter().flat_map(|&(a, b)| a..=b).collect();
            prop_assert_eq!(got, model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(Sequences::parse(&s.encode()).encode(), s.encode());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Sequences::parse(&bytes).encode();
        }
    }
}
