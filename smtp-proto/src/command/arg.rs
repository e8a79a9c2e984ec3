//! The free-text arguments of commands, valid by construction: a [`Command`](super::Command)
//! built by hand can put neither CR, LF, NUL nor another control character on the wire.

use std::fmt;
use std::ops::Deref;

/// A command argument that was refused: empty, or holding a character it may not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("invalid command argument: {0}")]
pub struct InvalidArgument(&'static str);

/// One word of a command line (the argument of `EHLO`/`HELO`, an AUTH mechanism or initial
/// response): at least one character, none of them a space, tab or control character.
///
/// ```
/// use smtp_proto::command::{Command, Word};
///
/// let ehlo = Command::Ehlo(Word::new("client.example").unwrap());
/// assert_eq!(ehlo.to_string(), "EHLO client.example\r\n");
/// assert!(Word::new("client.example\r\nRSET").is_err());
/// assert!(Word::new("two words").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Word<'a>(&'a str);

impl<'a> Word<'a> {
    /// Checks that `s` is one word.
    ///
    /// # Errors
    /// [`InvalidArgument`] when `s` is empty or holds a space, tab or control character.
    pub fn new(s: &'a str) -> Result<Self, InvalidArgument> {
        if s.is_empty() {
            return Err(InvalidArgument("empty"));
        }
        if !is_word(s.as_bytes()) {
            return Err(InvalidArgument("space or control character in a word"));
        }
        Ok(Self(s))
    }

    /// The word, borrowed from where it came.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// A word the parser has checked.
    pub(crate) fn checked(s: &'a str) -> Self {
        debug_assert!(!s.is_empty() && is_word(s.as_bytes()));
        Self(s)
    }
}

/// The rest of a command line as text (the argument of `VRFY`, `EXPN`, `HELP`): at least one
/// character, printable ASCII, space, tab or UTF-8 beyond ASCII; no CR, LF or other control
/// character.
///
/// ```
/// use smtp_proto::command::{Command, Text};
///
/// let vrfy = Command::Vrfy(Text::new("John Smith").unwrap());
/// assert_eq!(vrfy.to_string(), "VRFY John Smith\r\n");
/// assert!(Text::new("x\r\nMAIL FROM:<a@b>").is_err());
/// assert!(Text::new("nul\0").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text<'a>(&'a str);

impl<'a> Text<'a> {
    /// Checks that `s` is text that can follow a verb.
    ///
    /// # Errors
    /// [`InvalidArgument`] when `s` is empty or holds a control character other than tab.
    pub fn new(s: &'a str) -> Result<Self, InvalidArgument> {
        if s.is_empty() {
            return Err(InvalidArgument("empty"));
        }
        if !is_text(s.as_bytes()) {
            return Err(InvalidArgument("control character in text"));
        }
        Ok(Self(s))
    }

    /// The text, borrowed from where it came.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Text the parser has checked.
    pub(crate) fn checked(s: &'a str) -> Self {
        debug_assert!(!s.is_empty() && is_text(s.as_bytes()));
        Self(s)
    }
}

/// No space, tab or control character (bytes of UTF-8 beyond ASCII are allowed).
pub(crate) fn is_word(b: &[u8]) -> bool {
    b.iter().fold(true, |ok, &c| ok & (c > b' ' && c != 0x7f))
}

/// Printable ASCII, space, tab, or bytes of UTF-8 beyond ASCII.
pub(crate) fn is_text(b: &[u8]) -> bool {
    b.iter()
        .all(|&c| (b' '..=b'~').contains(&c) || c == b'\t' || c >= 0x80)
}

macro_rules! str_newtype {
    ($t:ident) => {
        impl Deref for $t<'_> {
            type Target = str;

            fn deref(&self) -> &str {
                self.0
            }
        }

        impl AsRef<str> for $t<'_> {
            fn as_ref(&self) -> &str {
                self.0
            }
        }

        impl fmt::Display for $t<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }

        impl fmt::Debug for $t<'_> {
            /// As the string's `Debug`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.0, f)
            }
        }

        impl PartialEq<str> for $t<'_> {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t<'_> {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl<'a> TryFrom<&'a str> for $t<'a> {
            type Error = InvalidArgument;

            fn try_from(s: &'a str) -> Result<Self, InvalidArgument> {
                Self::new(s)
            }
        }
    };
}

str_newtype!(Word);
str_newtype!(Text);
