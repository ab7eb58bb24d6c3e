//! `firetower certs init|issue|revoke|list`: the cluster CA, the certificates of managers,
//! gateways and operators, and the CA's revocation list (`crl.pem`); `certs client-tls`: a
//! separate CA and server certificate for the gateway's client port. The role and id are
//! written into each certificate (`firetower_link::identity`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use firetower_link::certs::{self, CertificateAuthority, Reason, Revocation, Serial, DEFAULT_DAYS};
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
    /// Revoke a certificate: add its serial to DIR/crl.pem, signed by the CA of DIR. Copy the
    /// new crl.pem to every manager and gateway and restart them; revoking again is harmless.
    Revoke {
        /// The TLS directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate DIR/manager-ID.pem.
        #[arg(long, group = "target")]
        manager: Option<u64>,
        /// The certificate DIR/gateway-ID.pem.
        #[arg(long, group = "target")]
        gateway: Option<u64>,
        /// The certificate DIR/operator-NAME.pem.
        #[arg(long, group = "target")]
        operator: Option<String>,
        /// A certificate by serial number (hex, as `certs list` prints it), for one whose file
        /// is gone.
        #[arg(long, group = "target")]
        serial: Option<String>,
        /// Why: unspecified, key-compromise, affiliation-changed, superseded,
        /// cessation-of-operation, privilege-withdrawn, ...
        #[arg(long)]
        reason: Option<String>,
    },
    /// A CA and a server certificate for the gateway's client port (`[client_tls]`,
    /// `--client-tls-cert`/`--client-tls-key`): DIR/ca.pem (what clients trust),
    /// DIR/server.pem and DIR/server-key.pem, for localhost, 127.0.0.1, ::1 and each --host.
    /// Separate from the cluster CA; for trying TLS out and for tests (production
    /// certificates come from the CA browsers trust). Keeps files that exist.
    ClientTls {
        /// The directory to write to.
        #[arg(long)]
        dir: PathBuf,
        /// Another host name or IP address clients connect to (repeat the flag).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// List the certificates of DIR: file, role, serial, expiry, and whether crl.pem revokes it.
    List {
        /// The TLS directory.
        #[arg(long)]
        dir: PathBuf,
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
            let role = role_of(manager, gateway, operator)?;
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
        CertsCommand::Revoke {
            dir,
            manager,
            gateway,
            operator,
            serial,
            reason,
        } => revoke(&dir, manager, gateway, operator, serial, reason)?,
        CertsCommand::ClientTls { dir, hosts } => {
            let files = ensure_client_tls(&dir, &hosts)?;
            println!("client TLS certificate: {}", files.cert_file.display());
            println!("key:                    {}", files.key_file.display());
            println!(
                "clients trust:          {}",
                dir.join(CLIENT_CA_FILE).display()
            );
            println!(
                "next: firetower gateway ... --client-tls-cert {} --client-tls-key {}",
                files.cert_file.display(),
                files.key_file.display()
            );
        }
        CertsCommand::List { dir } => list(&dir)?,
    }
    Ok(())
}

/// Files of `firetower certs client-tls` (and `firetower dev --client-tls-dir`).
pub const CLIENT_CA_FILE: &str = "ca.pem";
pub const CLIENT_CERT_FILE: &str = "server.pem";
pub const CLIENT_KEY_FILE: &str = "server-key.pem";
/// Long enough for any dev setup, short enough that nobody mistakes it for production.
const CLIENT_CERT_DAYS: i64 = 90;

/// The client TLS files in `dir`, made (a CA of their own, not the cluster's, and a server
/// certificate for localhost, 127.0.0.1, ::1 and `hosts`) when the directory has none.
pub fn ensure_client_tls(
    dir: &Path,
    hosts: &[String],
) -> anyhow::Result<firetower_gateway::ClientTlsConfig> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let config = firetower_gateway::ClientTlsConfig {
        cert_file: dir.join(CLIENT_CERT_FILE),
        key_file: dir.join(CLIENT_KEY_FILE),
    };
    if config.cert_file.exists() && config.key_file.exists() {
        return Ok(config);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Firetower dev client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(CLIENT_CERT_DAYS);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(hosts.iter().cloned());
    names.dedup();
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - time::Duration::hours(1);
    server.not_after = now + time::Duration::days(CLIENT_CERT_DAYS);
    let cert_pem = server.signed_by(&key, &issuer)?.pem();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(CLIENT_CA_FILE, &ca_pem)?;
    write(CLIENT_CERT_FILE, &cert_pem)?;
    write(CLIENT_KEY_FILE, &key.serialize_pem())?;
    Ok(config)
}

fn role_of(
    manager: Option<u64>,
    gateway: Option<u64>,
    operator: Option<String>,
) -> anyhow::Result<Role> {
    Ok(match (manager, gateway, operator) {
        (Some(0), _, _) | (_, Some(0), _) => return Err(anyhow!("ids start at 1 (0 is reserved)")),
        (Some(id), None, None) => Role::Manager(id),
        (None, Some(id), None) => Role::Gateway(id),
        (None, None, Some(name)) if valid_operator_name(&name) => Role::Operator(name),
        (None, None, Some(name)) => {
            return Err(anyhow!(
                "operator name {name:?}: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            ))
        }
        _ => return Err(anyhow!("give one of --manager ID, --gateway ID or --operator NAME")),
    })
}

fn revoke(
    dir: &Path,
    manager: Option<u64>,
    gateway: Option<u64>,
    operator: Option<String>,
    serial: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    // Check everything the operator typed before touching the list.
    let reason = reason.map(|r| r.parse::<Reason>()).transpose()?;
    let (what, serial) = match serial {
        Some(hex) => {
            let serial: Serial = hex.parse()?;
            (format!("serial {serial}"), serial)
        }
        None if manager.is_none() && gateway.is_none() && operator.is_none() => {
            return Err(anyhow!(
                "give one of --manager ID, --gateway ID, --operator NAME or --serial HEX"
            ))
        }
        None => {
            let role = role_of(manager, gateway, operator)?;
            let (cert_path, _) = certs::cert_paths(dir, &role);
            if !cert_path.exists() {
                return Err(anyhow!(
                    "no certificate {} to read the serial of {role} from; if the file is gone, \
                     revoke by --serial HEX (`firetower certs list` on a copy of the directory \
                     shows serials)",
                    cert_path.display()
                ));
            }
            let serial = certs::serial_of_role(dir, &role)?;
            (format!("{role} (serial {serial})"), serial)
        }
    };
    let crl = dir.join(certs::CRL_FILE);
    match certs::revoke(dir, &serial, reason).with_context(|| {
        format!(
            "cannot revoke {what} with the CA in {} (nothing was changed)",
            dir.display()
        )
    })? {
        Revocation::Added { number } => {
            println!("revoked {what}: {} (CRL number {number})", crl.display());
            println!(
                "next: copy {} to the TLS directory of every manager and gateway and restart them; \
                 they read it at start",
                crl.display()
            );
        }
        Revocation::AlreadyRevoked { number } => {
            println!(
                "{what} was already revoked: {} unchanged (CRL number {number})",
                crl.display()
            );
        }
    }
    Ok(())
}

fn list(dir: &Path) -> anyhow::Result<()> {
    let (crl, infos) = certs::list(dir)?;
    match &crl {
        Some(crl) => println!(
            "{}: CRL number {}, {} revoked",
            dir.join(certs::CRL_FILE).display(),
            crl.number,
            crl.revoked.len()
        ),
        None => println!(
            "no {} in {}: nothing revoked",
            certs::CRL_FILE,
            dir.display()
        ),
    }
    let rows: Vec<[String; 5]> = infos
        .iter()
        .map(|info| {
            let file = info
                .file
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let role = match (&info.role, info.is_ca) {
                (_, true) => "ca".to_owned(),
                (Some(role), false) => role.spec(),
                (None, false) => "(no role)".to_owned(),
            };
            let role = if info.issued_by_ca {
                role
            } else {
                format!("{role} (other CA)")
            };
            let t = info.not_after;
            let expires = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            let revoked = match &info.revoked {
                None => "no".to_owned(),
                Some(entry) => match entry.reason {
                    Some(reason) => format!("yes ({reason})"),
                    None => "yes".to_owned(),
                },
            };
            [file, role, info.serial.to_string(), expires, revoked]
        })
        .collect();
    let header = ["FILE", "ROLE", "SERIAL", "EXPIRES", "REVOKED"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}
