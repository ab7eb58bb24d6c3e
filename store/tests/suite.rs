//! openraft's storage conformance suite against a fresh WAL + state store per test.

mod common;

use common::TestConfig;
use firetower_store::{LogStore, StateMachine, StateStore, Wal, WalOptions};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};

/// Builds stores in a fresh temporary directory, kept alive as the suite's guard value.
struct TempDirBuilder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, StateMachine<TestConfig>, tempfile::TempDir>
    for TempDirBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<TestConfig>,
            StateMachine<TestConfig>,
        ),
        StorageError<u64>,
    > {
        let io = |e: &dyn std::error::Error| {
            StorageError::from(StorageIOError::write(AnyError::error(e.to_string())))
        };
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let wal = Wal::<TestConfig>::open(dir.path(), WalOptions::default()).map_err(|e| io(&e))?;
        let states = StateStore::open(dir.path()).map_err(|e| io(&e))?;
        let sm = states.state_machine::<TestConfig>(3).map_err(|e| io(&e))?;
        Ok((dir, wal.log_store(3), sm))
    }
}

#[test]
fn conformance_suite() {
    if let Err(e) = Suite::test_all(TempDirBuilder) {
        panic!("storage conformance suite failed: {e}");
    }
}
