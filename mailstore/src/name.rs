//! Mailbox names: the rules that turn the local part of an address into a directory name.
//!
//! Names come from the network (`RCPT TO:<../../etc/passwd@example.org>`), so they are checked
//! before any path is built, and a [`MailboxName`] that exists is always safe to join to a store's
//! root: the stores take nothing else.
//!
//! [`MailboxName::from_local_part`] maps an address's local part to a mailbox:
//!
//! 1. **Subaddress**: everything from the first `+` on is dropped (`alice+news` and
//!    `alice+a+b` go to `alice`). A local part that is empty before the `+` (`+x`) is refused.
//! 2. **Unicode spelling**: the name is put in Unicode Normalization Form C (NFC, UAX #15),
//!    so canonically equivalent spellings are one mailbox: `jo\u{301}rg` (decomposed, as some
//!    clients send it) and `jórg` (precomposed), Hangul written as conjoining jamo
//!    (`\u{1112}\u{1161}\u{11AB}`) and as the syllable `한`, `α\u{345}` and `ᾳ`. NFC is
//!    stable: Unicode's normalization stability policy never changes the NFC of assigned
//!    characters, and only assigned characters pass step 4, so a mailbox does not move when
//!    the normalization data is upgraded. (Compatibility forms, NFKC, are not applied:
//!    `ﬁ` and `fi` stay different names, as they are different text.)
//! 3. **Case**: ASCII letters are folded to lower case (`Alice` goes to `alice`). Non-ASCII
//!    letters are kept exactly as given: Unicode case folding depends on the Unicode version and
//!    on language, and a mailbox must not move when a library is upgraded. (`E\u{301}` is
//!    `É` after step 2, so it stays upper case as `É` does.)
//! 4. **Characters**: ASCII letters and digits, `.`, `-`, `_`, non-ASCII letters and digits
//!    (Unicode alphabetic or numeric characters, sent under SMTPUTF8), and combining marks
//!    (canonical combining class not 0) after the first character: those NFC leaves as they
//!    are because nothing precomposed holds them (`x\u{301}`, the nukta of `क़`, U+0958, which
//!    NFC writes as `क\u{93c}`). Everything else is refused: `/`, `\`, NUL and other
//!    controls, spaces, `%` (so `%2e%2e` is not decoded, just refused), quotes (quoted local
//!    parts are refused), the other RFC 5322 `atext` symbols, and a name that starts with a
//!    combining mark.
//!
//! Upgrading from a version before step 2: a mailbox whose directory was created under a
//! spelling that is not NFC (possible only with canonical singletons such as the Kelvin sign
//! `K` or the Ångström sign, conjoining jamo, or composition exclusions such as U+0958) is
//! now looked up under its NFC name; rename the directory to that name (what
//! [`MailboxName::from_local_part`] returns for the old one). Every name that was valid
//! before is still valid, unless its NFC spelling is longer than [`MAX_LEN`].
//! 5. **Dots**: no leading dot (which also refuses `.` and `..`), no trailing dot, and no two
//!    dots in a row. Names starting with a dot are reserved for the stores' own files.
//! 6. **Length**: 1 to [`MAX_LEN`] bytes after the steps above (64 is RFC 5321's limit for a
//!    local part).
//!
//! ```
//! use mailstore::name::{MailboxName, NameError};
//!
//! assert_eq!(MailboxName::from_local_part("Alice+news").unwrap().as_str(), "alice");
//! assert_eq!(MailboxName::from_local_part("jörg").unwrap().as_str(), "jörg");
//! assert!(matches!(MailboxName::from_local_part(".."), Err(NameError::LeadingDot)));
//! assert!(matches!(MailboxName::from_local_part("../etc"), Err(NameError::InvalidChar('/'))));
//! assert!(matches!(MailboxName::from_local_part("a/b"), Err(NameError::InvalidChar('/'))));
//! ```

use std::fmt;
use std::str::FromStr;

/// The longest mailbox name, in bytes.
pub const MAX_LEN: usize = 64;

/// Why a local part cannot be a mailbox name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing left (empty input, or nothing before the `+`).
    #[error("empty mailbox name")]
    Empty,
    /// Longer than [`MAX_LEN`] bytes.
    #[error("mailbox name longer than {MAX_LEN} bytes")]
    TooLong,
    /// A character outside the allowed set.
    #[error("character {0:?} not allowed in a mailbox name")]
    InvalidChar(char),
    /// Starts with a dot (this includes `.` and `..`).
    #[error("mailbox name starts with a dot")]
    LeadingDot,
    /// Ends with a dot.
    #[error("mailbox name ends with a dot")]
    TrailingDot,
    /// Two dots in a row.
    #[error("mailbox name contains \"..\"")]
    DoubleDot,
    /// Given to [`MailboxName::new`] in a form that `from_local_part` would change (upper-case
    /// ASCII, a `+detail`, or a spelling not in NFC).
    #[error("mailbox name not in canonical form (use from_local_part)")]
    NotCanonical,
}

/// A validated mailbox name: safe to use as one path component under a store's root.
///
/// It is never empty, at most [`MAX_LEN`] bytes, contains no `/`, no NUL and no other control
/// character, does not start or end with a dot and contains no `..`. See the [module
/// docs](self) for the full rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    /// Maps the local part of an address to its mailbox: drops the `+detail`, folds ASCII case,
    /// then checks the rules in the [module docs](self).
    ///
    /// # Errors
    /// [`NameError`] saying which rule the name breaks.
    pub fn from_local_part(local_part: &str) -> Result<MailboxName, NameError> {
        let base = match local_part.find('+') {
            Some(i) => &local_part[..i],
            None => local_part,
        };
        // NFC before folding, so that `E\u{301}` folds as `É` does (not at all); NFC again
        // after, in case folding made a letter that composes with the mark after it.
        let folded = nfc(&nfc(base).to_ascii_lowercase()).into_owned();
        validate(&folded)?;
        Ok(MailboxName(folded))
    }

    /// Accepts a name that is already canonical (what [`as_str`](Self::as_str) returns, e.g. a
    /// user name from an IMAP login or a directory listing).
    ///
    /// # Errors
    /// [`NameError::NotCanonical`] for upper-case ASCII, a `+` or a name not in NFC, otherwise
    /// as [`from_local_part`](Self::from_local_part).
    pub fn new(name: &str) -> Result<MailboxName, NameError> {
        if !is_nfc(name) {
            return Err(NameError::NotCanonical);
        }
        validate(name)?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(NameError::NotCanonical);
        }
        Ok(MailboxName(name.to_owned()))
    }

    /// The name, as used for the directory.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `s` in Normalization Form C.
fn nfc(s: &str) -> std::borrow::Cow<'_, str> {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(s)
}

/// Whether `s` is in Normalization Form C.
fn is_nfc(s: &str) -> bool {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc().is_normalized(s)
}

fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong);
    }
    let ccc = icu_normalizer::properties::CanonicalCombiningClassMapBorrowed::new();
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, '.' | '-' | '_')
            || (!c.is_ascii() && (c.is_alphabetic() || c.is_numeric()))
            || (i > 0 && ccc.get_u8(c) != 0);
        if !ok {
            // `+` only reaches here through `new`, where it means "not canonical".
            return Err(if c == '+' {
                NameError::NotCanonical
            } else {
                NameError::InvalidChar(c)
            });
        }
    }
    if name.starts_with('.') {
        return Err(NameError::LeadingDot);
    }
    if name.ends_with('.') {
        return Err(NameError::TrailingDot);
    }
    if name.contains("..") {
        return Err(NameError::DoubleDot);
    }
    Ok(())
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MailboxName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for MailboxName {
    type Err = NameError;

    /// Same as [`MailboxName::new`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MailboxName::new(s)
    }
}

impl TryFrom<&str> for MailboxName {
    type Error = NameError;

    /// Same as [`MailboxName::new`].
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        MailboxName::new(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let long = "a".repeat(65);
        let max = "a".repeat(64);
        let cases: &[(&str, Result<&str, NameError>)] = &[
            ("alice", Ok("alice")),
            ("Alice", Ok("alice")),
            ("alice+news", Ok("alice")),
            ("ALICE+News+x", Ok("alice")),
            ("first.last", Ok("first.last")),
            ("a-b_c.9", Ok("a-b_c.9")),
            ("jörg", Ok("jörg")),
            ("JÖRG", Ok("jÖrg")),
            ("用户", Ok("用户")),
            (&max, Ok(&max)),
            ("", Err(NameError::Empty)),
            ("+x", Err(NameError::Empty)),
            ("+", Err(NameError::Empty)),
            (&long, Err(NameError::TooLong)),
            (".", Err(NameError::LeadingDot)),
            ("..", Err(NameError::LeadingDot)),
            ("../x", Err(NameError::InvalidChar('/'))),
            ("a/b", Err(NameError::InvalidChar('/'))),
            ("/etc", Err(NameError::InvalidChar('/'))),
            (".hidden", Err(NameError::LeadingDot)),
            ("a.", Err(NameError::TrailingDot)),
            ("a..b", Err(NameError::DoubleDot)),
            ("a\0b", Err(NameError::InvalidChar('\0'))),
            ("%2e%2e", Err(NameError::InvalidChar('%'))),
            ("a\\b", Err(NameError::InvalidChar('\\'))),
            ("a b", Err(NameError::InvalidChar(' '))),
            ("\"alice\"", Err(NameError::InvalidChar('"'))),
            ("a\nb", Err(NameError::InvalidChar('\n'))),
            // One mailbox for canonically equivalent spellings (NFC).
            ("e\u{301}", Ok("é")),
            ("jo\u{301}rg", Ok("jórg")),
            ("E\u{301}", Ok("É")),
            ("É", Ok("É")),
            ("\u{1112}\u{1161}\u{11AB}", Ok("\u{D55C}")),
            ("\u{D55C}", Ok("\u{D55C}")),
            ("α\u{345}", Ok("\u{1FB3}")),
            ("\u{212B}", Ok("\u{C5}")),
            ("A\u{30A}ngstr\u{F6}m", Ok("\u{C5}ngstr\u{F6}m")),
            // Marks NFC cannot compose stay, after a first character.
            ("x\u{301}", Ok("x\u{301}")),
            ("\u{958}", Ok("\u{915}\u{93c}")),
            ("\u{915}\u{93c}", Ok("\u{915}\u{93c}")),
            ("\u{FB2A}", Ok("\u{5E9}\u{5C1}")),
            ("\u{212A}elvin", Ok("kelvin")),
            ("\u{301}", Err(NameError::InvalidChar('\u{301}'))),
            ("\u{301}x", Err(NameError::InvalidChar('\u{301}'))),
            (".\u{301}", Err(NameError::LeadingDot)),
            ("ﬁ", Ok("ﬁ")),
            ("a\u{202e}b", Err(NameError::InvalidChar('\u{202e}'))),
            // The detail is dropped before the checks: what follows `+` does not matter.
            ("bob+../../x", Ok("bob")),
        ];
        for (input, want) in cases {
            let got = MailboxName::from_local_part(input);
            assert_eq!(
                got.as_ref().map(|n| n.as_str()),
                want.as_ref().map(|s| *s),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn new_wants_canonical() {
        assert_eq!(MailboxName::new("bob").unwrap().as_str(), "bob");
        assert_eq!(MailboxName::new("Bob"), Err(NameError::NotCanonical));
        assert_eq!(MailboxName::new("bob+x"), Err(NameError::NotCanonical));
        assert_eq!(MailboxName::new(".."), Err(NameError::LeadingDot));
        assert_eq!(MailboxName::new("jórg").unwrap().as_str(), "jórg");
        assert_eq!(
            MailboxName::new("jo\u{301}rg"),
            Err(NameError::NotCanonical)
        );
        assert_eq!(
            MailboxName::new("\u{1112}\u{1161}\u{11AB}"),
            Err(NameError::NotCanonical)
        );
    }

    fn valid_name() -> impl Strategy<Value = String> {
        "[a-z0-9_\\-é用]{1,10}(\\.[a-z0-9_\\-]{1,10}){0,3}"
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(name in valid_name()) {
            let n = MailboxName::from_local_part(&name).unwrap();
            prop_assert_eq!(n.as_str(), name.as_str());
            prop_assert_eq!(MailboxName::new(n.as_str()).unwrap(), n.clone());
            let upper = format!("{}+{}", name.to_ascii_uppercase(), name);
            prop_assert_eq!(MailboxName::from_local_part(&upper).unwrap(), n);
        }

        /// Letters and digits, whatever their NFC spelling, are still a valid name (as they
        /// were before names were normalised).
        #[test]
        fn letters_stay_valid(s in "[\\p{Alphabetic}\\p{N}]{1,8}") {
            let letters = s.chars().all(|c| c.is_alphanumeric());
            let fits = nfc(&s).len() <= MAX_LEN;
            if letters && fits && !s.starts_with(|c: char| !c.is_alphanumeric()) {
                prop_assert!(MailboxName::from_local_part(&s).is_ok(), "{:?}", s);
            }
        }

        /// Canonically equivalent spellings are the same mailbox (or the same refusal).
        #[test]
        fn equivalent_spellings_are_one_mailbox(
            s in "([a-zA-Z+.]|\\PC){0,12}",
        ) {
            let nfd = icu_normalizer::DecomposingNormalizerBorrowed::new_nfd().normalize(&s);
            prop_assert_eq!(
                MailboxName::from_local_part(&nfd),
                MailboxName::from_local_part(&s)
            );
            prop_assert_eq!(
                MailboxName::from_local_part(&nfc(&s)),
                MailboxName::from_local_part(&s)
            );
        }

        #[test]
        fn anything_is_refused_or_safe(s in any::<String>()) {
            if let Ok(n) = MailboxName::from_local_part(&s) {
                let n = n.as_str();
                prop_assert!(!n.is_empty() && n.len() <= MAX_LEN);
                prop_assert!(!n.contains('/') && !n.contains('\0') && !n.contains(".."));
                prop_assert!(!n.starts_with('.'));
                prop_assert!(!n.chars().any(char::is_control));
                prop_assert!(n != "." && n != "..");
                let again = MailboxName::new(n).unwrap();
                prop_assert_eq!(again.as_str(), n);
            }
        }

        #[test]
        fn path_shaped_input_is_refused_or_safe(s in "[./a%\\\\+\0]{0,8}") {
            if let Ok(n) = MailboxName::from_local_part(&s) {
                prop_assert!(n.as_str().chars().all(|c| c == 'a' || c == '.'));
                prop_assert!(!n.as_str().starts_with('.') && !n.as_str().contains(".."));
            }
        }
    }
}
