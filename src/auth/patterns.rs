//! Topic permissions carried in a token: the `topics` and `publish` claims,
//! parsed once at verification into a [`TopicPatterns`] that answers
//! "may this user use this topic?" without allocating.
//!
//! An entry is either an exact topic name (`room:1`) or a prefix pattern
//! ending in one `*` (`room:*`). The `*` matches any rest of the name,
//! including nothing, so `room:*` allows `room:` and `room:1` but not `room`
//! or `roo`; a lone `*` allows every topic. A `*` anywhere but at the end, an
//! empty entry, or a character a topic may not hold makes the whole list
//! invalid, and with it the token ([`PatternError`] becomes
//! `TokenError::BadClaims`): silently dropping an entry would hide a bug in
//! the token issuer behind "forbidden" replies that are hard to trace.

use std::collections::HashSet;

use crate::topic::{MAX_TOPIC_LEN, Topic, is_topic_byte};

/// The most entries one claim may list. Tokens are capped in size anyway;
/// this bounds the work `allows` does per subscribe.
pub const MAX_PATTERNS: usize = 1_000;

/// A set of topic names and `prefix*` patterns.
///
/// Matching an exact name is a hash lookup; prefixes are scanned, and a `*`
/// entry short-circuits to "everything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPatterns {
    exact: HashSet<Box<str>>,
    prefixes: Vec<Box<str>>,
    all: bool,
}

/// Why a claim list is not a valid set of topic patterns. Messages name the
/// entry by position, never by content, so they are safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// More than [`MAX_PATTERNS`] entries.
    #[error("lists more than {MAX_PATTERNS} entries")]
    TooMany,
    /// An entry is neither a topic name nor a `prefix*` pattern.
    #[error("entry {index} is not a topic name or `prefix*` pattern: {reason}")]
    Invalid {
        /// The entry's position in the list, from 0.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl TopicPatterns {
    /// No topic at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses claim entries. See the module docs for the rules.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, PatternError> {
        if entries.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany);
        }
        let mut patterns = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            let invalid = |reason| PatternError::Invalid { index, reason };
            match entry.strip_suffix('*') {
                Some(prefix) => {
                    check_prefix(prefix).map_err(invalid)?;
                    if prefix.is_empty() {
                        patterns.all = true;
                    } else {
                        patterns.prefixes.push(prefix.into());
                    }
                }
                None => {
                    if entry.contains('*') {
                        return Err(invalid("`*` may only end an entry"));
                    }
                    Topic::validate(entry).map_err(|_| invalid(INVALID_TOPIC))?;
                    patterns.exact.insert(entry.into());
                }
            }
        }
        Ok(patterns)
    }

    /// Whether `topic` is one of the names or starts with one of the
    /// prefixes. Pure string matching: callers pass an already validated
    /// topic.
    pub fn allows(&self, topic: &str) -> bool {
        self.all
            || self.exact.contains(topic)
            || self.prefixes.iter().any(|p| topic.starts_with(&**p))
    }

    /// Whether no topic is allowed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

const INVALID_TOPIC: &str = "topics are 1 to 255 bytes of ASCII letters, digits and _ - . : / @ =";

fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.contains('*') {
        return Err("`*` may only end an entry");
    }
    // A prefix as long as the longest topic still matches that one topic.
    if prefix.len() > MAX_TOPIC_LEN || !prefix.bytes().all(is_topic_byte) {
        return Err(INVALID_TOPIC);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(entries: &[&str]) -> TopicPatterns {
        TopicPatterns::parse(entries).expect("valid patterns")
    }

    #[test]
    fn a_prefix_pattern_matches_names_with_that_prefix_only() {
        let p = patterns(&["room:*"]);
        assert!(p.allows("room:1"));
        assert!(p.allows("room:1/thread:2"));
        assert!(p.allows("room:"), "`*` also matches nothing");
        assert!(!p.allows("roo"));
        assert!(!p.allows("room"));
        assert!(!p.allows("xroom:1"));
    }

    #[test]
    fn a_lone_star_matches_every_topic() {
        let p = patterns(&["*"]);
        assert!(p.allows("room:1"));
        assert!(p.allows("a"));
        assert!(p.allows("user:someone-else"));
        assert!(!p.is_empty());
    }

    #[test]
    fn an_exact_name_matches_only_itself() {
        let p = patterns(&["room:1", "news"]);
        assert!(p.allows("room:1"));
        assert!(p.allows("news"));
        assert!(!p.allows("room:10"));
        assert!(!p.allows("room:"));
        assert!(!p.allows("new"));
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let p = patterns(&[]);
        assert!(p.is_empty());
        assert!(!p.allows("room:1"));
        assert_eq!(p, TopicPatterns::none());
    }

    #[test]
    fn a_star_before_the_end_is_refused_and_names_the_entry() {
        for bad in ["ro*m", "*room", "room:**", "**"] {
            assert_eq!(
                TopicPatterns::parse(&["ok", bad]),
                Err(PatternError::Invalid {
                    index: 1,
                    reason: "`*` may only end an entry"
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_entries_and_characters_outside_the_topic_rule_are_refused() {
        for bad in ["", "room 1", "café", "a\"b", "room\n*", "é*"] {
            assert!(
                matches!(
                    TopicPatterns::parse(&[bad]),
                    Err(PatternError::Invalid { index: 0, .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn names_and_prefixes_up_to_the_topic_length_limit_are_accepted() {
        let longest = "a".repeat(MAX_TOPIC_LEN);
        let p = patterns(&[longest.as_str(), &format!("{longest}*")]);
        assert!(p.allows(&longest));
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(TopicPatterns::parse(&[too_long.as_str()]).is_err());
        assert!(TopicPatterns::parse(&[format!("{too_long}*")]).is_err());
    }

    #[test]
    fn more_than_the_maximum_number_of_entries_is_refused() {
        let many = vec!["a"; MAX_PATTERNS + 1];
        assert_eq!(TopicPatterns::parse(&many), Err(PatternError::TooMany));
        assert!(TopicPatterns::parse(&many[..MAX_PATTERNS]).is_ok());
    }

    #[test]
    fn error_messages_never_contain_the_entry() {
        let err = TopicPatterns::parse(&["secret-looking value"]).expect_err("invalid");
        assert!(!err.to_string().contains("secret"));
    }
}
