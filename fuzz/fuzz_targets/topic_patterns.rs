//! Claim lists and topics through `TopicPatterns`: parsing never panics, and
//! `allows` agrees with a plain reading of the rules (an entry equal to the
//! topic, or an entry `prefix*` whose prefix starts the topic).

#![no_main]

use herald::auth::TopicPatterns;
use herald::topic::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<String>, Vec<String>)| {
    let (entries, topics) = input;
    let Ok(patterns) = TopicPatterns::parse(&entries) else {
        return;
    };
    for entry in &entries {
        // Every accepted entry is a topic, or a topic-shaped prefix and `*`.
        let stem = entry.strip_suffix('*').unwrap_or(entry);
        assert!(!stem.contains('*'), "accepted a `*` before the end");
        assert!(
            stem.is_empty() || Topic::validate(stem).is_ok(),
            "accepted a non-topic entry"
        );
    }
    let probes = topics
        .iter()
        .map(String::as_str)
        .chain(entries.iter().map(String::as_str));
    for topic in probes {
        let expected = entries.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => entry == topic,
        });
        assert_eq!(
            patterns.allows(topic),
            expected,
            "allows disagrees with the rules"
        );
    }
});
