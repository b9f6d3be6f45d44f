//! Topic names: the validated key that publishers address and subscribers
//! listen on.

use std::fmt;
use std::sync::Arc;

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// A validated topic name: 1 to [`MAX_TOPIC_LEN`] bytes of ASCII letters,
/// digits and `_ - . : / @ =`.
///
/// None of these characters needs escaping in JSON, which lets the frame
/// encoder write a topic into a frame without an escaping pass. Cloning is a
/// reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a string is not a topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is empty.
    #[error("topic is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {0} bytes long; the limit is {MAX_TOPIC_LEN}")]
    TooLong(usize),
    /// The name holds a character outside the allowed set.
    #[error(
        "topic has {found:?} at byte {at}; allowed are ASCII letters, digits and _ - . : / @ ="
    )]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// FNV-1a's starting value (its 64-bit offset basis).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `hash`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Whether `b` may appear in a topic name.
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'=')
}

impl Topic {
    /// Validates `name` and makes it a topic.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// A hash of the name that every pod and every build computes alike
    /// (FNV-1a): what rendezvous ranks and epochs are made from.
    pub fn stable_hash(&self) -> u64 {
        fnv1a(FNV_OFFSET, self.0.as_bytes())
    }

    /// Checks `name` without allocating.
    pub fn validate(name: &str) -> Result<(), TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong(name.len()));
        }
        match name.bytes().position(|b| !is_topic_byte(b)) {
            None => Ok(()),
            Some(at) => Err(TopicError::InvalidChar {
                found: name[at..].chars().next().unwrap_or('?'),
                at,
            }),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let name = "Room_1-a.b:c/d@e=f";
        assert_eq!(Topic::new(name).map(|t| t.to_string()), Ok(name.to_owned()));
    }

    #[test]
    fn accepts_a_name_of_exactly_the_limit() {
        assert!(Topic::new(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn refuses_an_empty_name() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn refuses_a_name_over_the_limit() {
        assert_eq!(
            Topic::new(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong(256))
        );
    }

    #[test]
    fn refuses_spaces_quotes_and_non_ascii_and_says_where() {
        assert_eq!(
            Topic::new("room 1"),
            Err(TopicError::InvalidChar { found: ' ', at: 4 })
        );
        assert_eq!(
            Topic::new("a\"b"),
            Err(TopicError::InvalidChar { found: '"', at: 1 })
        );
        assert_eq!(
            Topic::new("café"),
            Err(TopicError::InvalidChar { found: 'é', at: 3 })
        );
        assert!(Topic::new("a\nb").is_err());
        assert!(Topic::new("a*").is_err());
    }
}
