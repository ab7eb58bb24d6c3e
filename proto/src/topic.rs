//! What a topic name may be. Shared by gateways (checking client input) and managers
//! (checking gateway input), so both refuse the same names with the same words.

/// The longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Why a topic name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The empty string names nothing.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {0} bytes long; the limit is {MAX_TOPIC_BYTES}")]
    TooLong(usize),
    /// Control characters (including NUL) and whitespace make topics ambiguous in logs and
    /// storage keys.
    #[error("topic contains a control or whitespace character at byte {0}")]
    BadCharacter(usize),
}

impl TopicError {
    /// The snake_case error code clients see.
    pub fn code(&self) -> &'static str {
        "invalid_topic"
    }
}

/// Check a topic name: 1 to 256 bytes of UTF-8 without control or whitespace characters.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    if let Some((i, _)) = topic
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        return Err(TopicError::BadCharacter(i));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for t in ["room.1", "a", "чат/1", &"x".repeat(MAX_TOPIC_BYTES)] {
            validate_topic(t).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic(&"x".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TopicError::TooLong(MAX_TOPIC_BYTES + 1))
        );
        assert_eq!(validate_topic("a\0b"), Err(TopicError::BadCharacter(1)));
        assert_eq!(validate_topic("a b"), Err(TopicError::BadCharacter(1)));
        assert_eq!(validate_topic("ab\n"), Err(TopicError::BadCharacter(2)));
    }
}
