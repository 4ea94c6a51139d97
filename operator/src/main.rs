//! Mend's operator.
//!
//! It will run `StorageCluster`s: on Kubernetes as a kube-runtime controller (`operator run`), and
//! without Kubernetes as a supervisor of local storage-node processes (`operator local`), with the
//! same probe → detector → planner → executor healing loop in both. Today it runs the controller
//! (`operator run`) and prints the CRD (`operator crd`); `operator local` comes with the
//! self-healing issue.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mend's operator for self-healing, etcd-compatible key-value clusters.
#[derive(Parser)]
// Without a subcommand there is nothing to do: show the help and exit 2, as for any usage error.
#[command(name = "operator", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the StorageCluster CustomResourceDefinition as YAML (manifests/crd.yaml).
    Crd,
    /// Run the Kubernetes controller: reconcile every StorageCluster (leader-elected).
    Run(operator::controller::RunArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Crd => match operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("operator crd: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => operator::controller::run_cli(args),
    }
}
