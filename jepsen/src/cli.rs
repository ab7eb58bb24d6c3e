//! stub
/// Args.
#[derive(clap::Args, Debug)]
pub struct JepsenArgs {}
/// Run.
pub async fn run(_args: JepsenArgs) -> Result<(), std::io::Error> {
    Ok(())
}
