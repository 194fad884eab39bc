//! `fd-certs`: the operator's tool for the federation PKI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Make the federation's certificate authority and issue certificates from it.
///
/// Every node and the coordinator talk over QUIC with mutual TLS. One CA per federation signs
/// all their certificates: the coordinator accepts only nodes holding a certificate from this
/// CA, and knows each node by the name in its certificate. The operator runs this tool on a
/// machine they control, once `init`, then `issue` per node and once for the coordinator.
///
/// What goes where:
///   ca.pem            public: copy to every node and to the coordinator
///   ca.key            secret: stays with the operator, never leaves the CA directory
///   <name>.pem/.key   a node's (or the coordinator's) certificate and private key: give them,
///                     with ca.pem, to that machine only (the key over a secure channel)
#[derive(Debug, Parser)]
#[command(name = "fd-certs", version, about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the federation CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    ///
    /// Refuses to replace an existing CA unless --force: a new CA invalidates every
    /// certificate the old one issued.
    Init {
        /// CA directory (created, mode 0700, if missing).
        #[arg(
            long,
            value_name = "DIR",
            env = "FD_CERTS_DIR",
            default_value = "certs"
        )]
        dir: PathBuf,
        /// Federation name; the CA is called "<NAME> federation CA".
        #[arg(long, value_name = "NAME", default_value = "fd")]
        federation: String,
        /// Replace an existing ca.pem/ca.key.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (or, with --server, the coordinator's) signed by the CA in DIR.
    ///
    /// Writes DIR/<NAME>.pem and DIR/<NAME>.key (mode 0600); never overwrites them. A node
    /// certificate carries NAME as its identity (e.g. hospital-a); a server certificate is
    /// valid for the names and addresses in --san, which nodes use to dial the coordinator.
    Issue {
        /// CA directory holding ca.pem and ca.key (see `init`).
        #[arg(
            long,
            value_name = "DIR",
            env = "FD_CERTS_DIR",
            default_value = "certs"
        )]
        dir: PathBuf,
        /// Node or server name: 1-64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Issue a server (coordinator) certificate instead of a node certificate.
        #[arg(long)]
        server: bool,
        /// Comma-separated DNS names and IP addresses of the server (default: NAME),
        /// e.g. --san localhost,127.0.0.1,coordinator.example.org
        #[arg(long, value_name = "SANS", value_delimiter = ',', requires = "server")]
        san: Vec<String>,
    },
    /// Revoke a certificate this CA issued: adds DIR/<NAME>.pem's serial to DIR/revoked.txt and
    /// rewrites DIR/crl.pem, the revocation list signed by the CA.
    ///
    /// The coordinator refuses revoked certificates in the TLS handshake when its config names
    /// the list (`crl = "certs/crl.pem"`); it reads the list at start, so copy the new crl.pem
    /// to it and restart it (a restart continues from its state). Revoking twice changes nothing.
    Revoke {
        /// CA directory holding ca.pem, ca.key and the certificate to revoke.
        #[arg(
            long,
            value_name = "DIR",
            env = "FD_CERTS_DIR",
            default_value = "certs"
        )]
        dir: PathBuf,
        /// Name of the node whose certificate (DIR/<NAME>.pem) is revoked.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace: the
            // messages already say which file was wrong and what to do.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            dir,
            federation,
            force,
        } => {
            fd_certs::init_ca_dir(&dir, &federation, force)
                .with_context(|| format!("creating the federation CA in {}", dir.display()))?;
            println!(
                "wrote {}  (CA certificate: copy it to every node and the coordinator)",
                dir.join(fd_certs::pki::CA_CERT_FILE).display()
            );
            println!(
                "wrote {}  (CA private key, mode 0600)",
                dir.join(fd_certs::pki::CA_KEY_FILE).display()
            );
            println!(
                "Keep ca.key with the operator: whoever holds it can admit any node to the \
                 \"{federation}\" federation. Never copy it to a node or the coordinator."
            );
        }
        Command::Issue {
            dir,
            name,
            server,
            san,
        } => {
            let sans = if san.is_empty() {
                vec![name.clone()]
            } else {
                san
            };
            let kind = if server { "server" } else { "node" };
            let (cert, key) =
                fd_certs::issue_to_dir(&dir, &name, server.then_some(sans.as_slice()))
                    .with_context(|| format!("issuing the {kind} certificate for {name}"))?;
            println!("wrote {}  ({kind} certificate)", cert.display());
            println!("wrote {}  (private key, mode 0600)", key.display());
            if server {
                println!("valid for: {}", sans.join(", "));
            }
            println!(
                "Give {name} these two files and {} (the key over a secure channel).",
                dir.join(fd_certs::pki::CA_CERT_FILE).display()
            );
        }
        Command::Revoke { dir, name } => {
            let (crl, newly) = fd_certs::revoke_in_dir(&dir, &name)
                .with_context(|| format!("revoking the certificate of {name}"))?;
            if newly {
                println!("revoked {name}; wrote {}", crl.display());
            } else {
                println!("{name} was already revoked; rewrote {}", crl.display());
            }
            println!(
                "Copy {} to the coordinator (its config's `crl`) and restart it: it refuses \
                 revoked certificates from then on.",
                crl.display()
            );
        }
    }
    Ok(())
}
