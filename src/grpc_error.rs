//! gRPC statuses as the CLI shows them: the server's own explanation first.

use anyhow::anyhow;

/// Turn a gRPC status into an error whose text is the server's own explanation.
pub fn status(s: tonic::Status) -> anyhow::Error {
    let message = s.message();
    let message = if message.is_empty() {
        format!("{:?}", s.code())
    } else {
        message.to_string()
    };
    anyhow!(message).context(format!("request failed ({:?})", s.code()))
}
