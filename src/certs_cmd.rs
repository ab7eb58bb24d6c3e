//! `firetower certs init|issue`: the cluster CA and the certificates of managers, gateways and
//! operators. The role and id are written into each certificate (`firetower_link::identity`).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use firetower_link::certs::{self, CertificateAuthority, DEFAULT_DAYS};
use firetower_link::identity::valid_operator_name;
use firetower_link::Role;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA (DIR/ca.pem, DIR/ca-key.pem) and the operator certificate
    /// `operator-admin` that `firetower cluster` presents by default.
    Init {
        /// The TLS directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// A name for the CA, shown in its subject.
        #[arg(long, default_value = "firetower")]
        name: String,
    },
    /// Issue a certificate with the CA of DIR: DIR/<role>-<id>.pem and DIR/<role>-<id>-key.pem.
    Issue {
        /// The TLS directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// A manager certificate for this manager id.
        #[arg(long, group = "role")]
        manager: Option<u64>,
        /// A gateway certificate for this gateway id.
        #[arg(long, group = "role")]
        gateway: Option<u64>,
        /// An operator certificate with this name (a-z, 0-9, `.`, `_`, `-`).
        #[arg(long, group = "role")]
        operator: Option<String>,
        /// A host name or IP address the manager is reached at (repeat the flag), for clients
        /// that check host names; `firetower` and `localhost` are always included.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: u32,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, name } => {
            certs::init(&dir, &name)?;
            println!("cluster CA created in {}", dir.display());
            println!(
                "  {}  (give it to every manager, gateway and operator)",
                dir.join(certs::CA_CERT_FILE).display()
            );
            println!(
                "  {}  (keep it secret; only `certs issue` needs it)",
                dir.join(certs::CA_KEY_FILE).display()
            );
            println!(
                "  {}  (the operator certificate `cluster` presents)",
                dir.join("operator-admin.pem").display()
            );
            println!(
                "next: firetower certs issue --dir {} --manager 1 --host <its address>",
                dir.display()
            );
        }
        CertsCommand::Issue {
            dir,
            manager,
            gateway,
            operator,
            hosts,
            days,
        } => {
            let role = match (manager, gateway, operator) {
                (Some(0), _, _) | (_, Some(0), _) => {
                    return Err(anyhow!("ids start at 1 (0 is reserved)"))
                }
                (Some(id), None, None) => Role::Manager(id),
                (None, Some(id), None) => Role::Gateway(id),
                (None, None, Some(name)) if valid_operator_name(&name) => Role::Operator(name),
                (None, None, Some(name)) => {
                    return Err(anyhow!(
                        "operator name {name:?}: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
                    ))
                }
                _ => return Err(anyhow!("give one of --manager ID, --gateway ID or --operator NAME")),
            };
            if !hosts.is_empty() && !role.is_server() {
                return Err(anyhow!(
                    "--host is for manager certificates only ({role} certificates are client certificates)"
                ));
            }
            let ca = CertificateAuthority::load(&dir).with_context(|| {
                format!(
                    "no CA in {} (run `firetower certs init --dir {}` first)",
                    dir.display(),
                    dir.display()
                )
            })?;
            let path = ca.issue(&role, &hosts, days)?.write(&dir)?;
            println!("{role}: {}", path.display());
        }
    }
    Ok(())
}
