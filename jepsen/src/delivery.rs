//! The `delivery` workload (real gateways and WebSocket clients): not implemented yet.

use crate::worker::WorkerConfig;
use crate::JepsenError;

/// Run the delivery worker.
pub async fn run_delivery_worker(_config: WorkerConfig) -> Result<(), JepsenError> {
    Err(JepsenError::Usage(
        "the delivery workload is not implemented yet".into(),
    ))
}
