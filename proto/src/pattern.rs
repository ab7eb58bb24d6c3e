//! Topic patterns, as used by permissions (JWT claims, hook answers) and topic bans: a topic
//! exactly, or a prefix ending in `*` (`room.*` matches `room.1` and `room.a.b`, and `*`
//! matches every topic). `{sub}` stands for the user id and is replaced before matching.
//! Shared by gateways (enforcing) and managers (checking operator input), so both read a
//! pattern the same way.

/// True when `topic` matches `pattern` (with `{sub}` already replaced).
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// `pattern` with every `{sub}` replaced by `user`.
pub fn expand_user(pattern: &str, user: &str) -> String {
    pattern.replace("{sub}", user)
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The empty pattern.
    #[error("pattern is empty")]
    Empty,
    /// A `*` that is not the last character.
    #[error("pattern {0:?} has a `*` before its end; only a trailing `*` (a prefix) is allowed")]
    InnerStar(String),
    /// The fixed part is not a valid topic prefix.
    #[error("pattern {pattern:?}: {reason}")]
    BadTopic {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Check a pattern: a valid topic, or a prefix of one followed by `*`.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let fixed = pattern.strip_suffix('*').unwrap_or(pattern);
    if fixed.contains('*') {
        return Err(PatternError::InnerStar(pattern.to_string()));
    }
    if fixed.is_empty() {
        return Ok(());
    }
    crate::validate_topic(fixed).map_err(|e| PatternError::BadTopic {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_exact_patterns() {
        assert!(pattern_matches("room.*", "room.1"));
        assert!(pattern_matches("room.*", "room.a.b"));
        assert!(!pattern_matches("room.*", "chat.1"));
        assert!(!pattern_matches("room.*", "room"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("room.1", "room.1"));
        assert!(!pattern_matches("room.1", "room.10"));
        assert_eq!(expand_user("user.{sub}.*", "u1"), "user.u1.*");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(validate_pattern(""), Err(PatternError::Empty));
        assert!(matches!(
            validate_pattern("a*b"),
            Err(PatternError::InnerStar(_))
        ));
        assert!(matches!(
            validate_pattern("a b*"),
            Err(PatternError::BadTopic { .. })
        ));
        validate_pattern("*").unwrap();
        validate_pattern("room.*").unwrap();
        validate_pattern("user.{sub}").unwrap();
    }
}
