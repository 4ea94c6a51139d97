//! The `storage-node` command.
//!
//! Today it offers the engine's offline tools: `demo` plays etcd issue 11651 on three members
//! with the fix and with the fault switch, and `dump-db` prints what a stopped member holds.
//! Serving the etcd API comes with replication.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use storage_node::tools::{demo, dump};

/// Mend's etcd-compatible storage node.
#[derive(Parser)]
#[command(name = "storage-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Play etcd issue 11651 on three members sharing one log: once with the fix, once with
    /// the fault switch. Exits 0 when the fix keeps members equal and the switch reproduces the
    /// bug exactly.
    Demo {
        /// Where the members' data goes (default: a temporary directory, removed afterwards).
        #[arg(long, env = "MEND_DEMO_DIR")]
        data_dir: Option<PathBuf>,
        /// bcrypt cost for the demo users' passwords (etcd uses 10).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
        bcrypt_cost: u32,
    },
    /// Print a stopped member's consistent index, revisions, AuthRevision, users, roles, leases
    /// and membership.
    DumpDb {
        /// The member's data directory (`--data-dir` of the node).
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Demo {
            data_dir,
            bcrypt_cost,
        } => run_demo(data_dir, bcrypt_cost),
        Cmd::DumpDb { data_dir } => match dump::dump_db(&data_dir) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("storage-node dump-db: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_demo(data_dir: Option<PathBuf>, bcrypt_cost: u32) -> ExitCode {
    let temp = match data_dir {
        Some(_) => None,
        None => match tempfile::tempdir() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("storage-node demo: cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let root = data_dir.unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    println!(
        "etcd issue 11651 on three members applying one log (data in {})\n",
        root.display()
    );
    let rounds = demo::round(&root.join("fixed"), false, bcrypt_cost)
        .and_then(|fixed| Ok((fixed, demo::round(&root.join("faulty"), true, bcrypt_cost)?)));
    let (fixed, faulty) = match rounds {
        Ok(r) => r,
        Err(e) => {
            eprintln!("storage-node demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", demo::render(&fixed));
    println!("{}", demo::render(&faulty));
    if demo::as_expected(&fixed, &faulty) {
        println!(
            "OK: the fix keeps all members equal; the fault switch reproduces the seed (drift {}, {} silently dropped writes).",
            faulty.auth_revision_drift(),
            faulty.silently_dropped_writes()
        );
        ExitCode::SUCCESS
    } else {
        println!("UNEXPECTED: the rounds above do not show what the demo promises.");
        ExitCode::FAILURE
    }
}
