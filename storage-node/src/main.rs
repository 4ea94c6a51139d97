//! The `storage-node` command: without a subcommand it serves as a cluster member, with
//! etcd's flags; the subcommands are offline tools (`demo`, `snapshot`, `dump-db`, ...).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use storage_node::cli::{LogFormat, ServeArgs, init_logging};
use storage_node::tools::{backup, benchmark, demo, dump, snapshot};

/// Mend's etcd-compatible storage node. Without a subcommand it runs a cluster member
/// configured with etcd's flags.
#[derive(Parser)]
#[command(
    name = "storage-node",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
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
    /// Move a stopped member's data directory into a backups directory (a heal's "back up and
    /// wipe" step) and delete the oldest backups beyond --keep.
    BackupData {
        /// The member's data directory (`--data-dir` of the node).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where backups are kept.
        #[arg(long)]
        backup_dir: PathBuf,
        /// The backup's name (a plain file name; names should sort by time).
        #[arg(long)]
        name: String,
        /// Backups to keep, the new one included.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
    /// Check a snapshot file (`etcdctl snapshot save` from a Mend member) or build a member of
    /// a new cluster from one, as etcdutl does for etcd's.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Print a stopped member's consistent index, revisions, AuthRevision, users, roles, leases
    /// and membership.
    DumpDb {
        /// The member's data directory (`--data-dir` of the node).
        data_dir: PathBuf,
    },
    /// Load etcd v3 endpoints as etcd's benchmark tool does, or (--compare-etcd) a 3-member
    /// etcd 3.4 and a 3-member Mend cluster started here, side by side.
    Benchmark(benchmark::BenchmarkArgs),
    /// Print a stopped member's raft log: vote, committed index, and one line per entry.
    DumpLog {
        /// The member's data directory (`--data-dir` of the node).
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Check the whole file and print its hash, revision, total records and size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long, value_enum, default_value_t)]
        write_out: snapshot::WriteOut,
    },
    /// Create a data directory for one member of a new cluster from the snapshot: its keys at
    /// their revisions, leases, users, roles and AuthRevision. Run it for every member, then
    /// start each with the same --name, --initial-cluster and --initial-cluster-token.
    Restore(snapshot::RestoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        init_logging("info,openraft=warn", cli.serve.log_format);
        return serve(cli.serve);
    };
    init_logging("error", LogFormat::Text);
    match command {
        Cmd::Demo {
            data_dir,
            bcrypt_cost,
        } => run_demo(data_dir, bcrypt_cost),
        Cmd::BackupData {
            data_dir,
            backup_dir,
            name,
            keep,
        } => print_or_fail(
            "backup-data",
            backup::move_aside(&data_dir, &backup_dir, &name, keep).map(|moved| match moved {
                Some(path) => format!("{}\n", path.display()),
                None => "no data to back up\n".to_string(),
            }),
        ),
        Cmd::Snapshot(SnapshotCmd::Status { file, write_out }) => {
            print_or_fail("snapshot status", snapshot::status(&file, write_out))
        }
        Cmd::Snapshot(SnapshotCmd::Restore(args)) => {
            print_or_fail("snapshot restore", snapshot::restore(&args))
        }
        Cmd::DumpDb { data_dir } => print_or_fail("dump-db", dump::dump_db(&data_dir)),
        Cmd::DumpLog { data_dir } => print_or_fail("dump-log", dump::dump_log(&data_dir)),
        Cmd::Benchmark(args) => run_benchmark(args),
    }
}

fn run_benchmark(args: benchmark::BenchmarkArgs) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| benchmark::Error::Task(e.to_string()))
        .and_then(|runtime| runtime.block_on(benchmark::run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storage-node benchmark: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_or_fail(tool: &str, result: Result<String, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("storage-node {tool}: {e}");
            ExitCode::FAILURE
        }
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

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("storage-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(storage_node::server::member::run(args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "member stopped");
            eprintln!("storage-node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers, Ctrl-C through tokio is the remaining way to stop cleanly.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
