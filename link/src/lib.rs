//! What both ends of Firetower's cluster QUIC share (being moved here from the gateway and raft).
