//! Mend's operator.
//!
//! Runs `StorageCluster`s on Kubernetes as a kube-runtime controller (`operator run`), and
//! without Kubernetes as a supervisor of local storage-node processes (`operator local`, and
//! `operator demo` which plays the etcd 11651 failure and heals it), and prints the CRD
//! (`operator crd`). The same probe → detector → planner → executor loop
//! heals on Kubernetes and locally.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::supervisor::{Config, Supervisor};
use storage_node::cli::LogFormat;

/// Mend's operator for self-healing, etcd-compatible key-value clusters.
#[derive(Parser)]
// Without a subcommand there is nothing to do: show the help and exit 2, as for any usage error.
#[command(name = "operator", version, about, arg_required_else_help = true)]
struct Cli {
    /// Log lines as text or JSON (on stderr).
    #[arg(long, global = true, env = "MEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the StorageCluster CustomResourceDefinition as YAML (manifests/crd.yaml).
    Crd,
    /// Run the Kubernetes controller: reconcile every StorageCluster (leader-elected).
    Run(operator::controller::RunArgs),
    /// Run a StorageCluster as local storage-node processes: start and restart its members,
    /// turn auth on, probe, detect divergence and heal it, until Ctrl-C.
    Local {
        /// The StorageCluster YAML (as for kubectl apply).
        spec: PathBuf,
        /// Keeps member data, backups, status.json and root-credentials; reuse it to resume.
        #[arg(long)]
        workdir: PathBuf,
        /// An extra flag for every storage-node started (repeatable), e.g.
        /// --node-arg=--unsafe-reproduce-etcd-11651.
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
        /// The storage-node binary; by default the one beside this operator binary.
        #[arg(long, env = "MEND_STORAGE_NODE")]
        storage_node: Option<PathBuf>,
        /// Serve the healing metrics on http://ADDR/metrics (e.g. 127.0.0.1:9090).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Watch the etcd 11651 failure happen on three local members and get healed; exits 0
    /// only if every acknowledged write is on every member at the end.
    Demo {
        /// Work directory to keep (a temporary one, removed afterwards, by default).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// The storage-node binary; by default the one beside this operator binary.
        #[arg(long, env = "MEND_STORAGE_NODE")]
        storage_node: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    storage_node::cli::init_logging("info,tower=warn,h2=warn", format);
}

fn main() -> ExitCode {
    // Two rustls providers are built in (ring, Mend's and kube's; aws-lc-rs, object_store's
    // S3 client): clients that ask rustls for the process default (kube's) need one named.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
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
        Cmd::Run(args) => {
            init_logging(cli.log_format);
            operator::controller::run_cli(args)
        }
        Cmd::Local {
            spec,
            workdir,
            node_args,
            storage_node,
            metrics_addr,
        } => {
            init_logging(cli.log_format);
            exit(
                "operator local",
                local(spec, workdir, node_args, storage_node, metrics_addr),
            )
        }
        Cmd::Demo {
            workdir,
            storage_node,
        } => {
            init_logging(cli.log_format);
            exit("operator demo", demo(workdir, storage_node))
        }
    }
}

fn exit(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The storage-node binary: as given, or beside this executable (where cargo builds both).
fn storage_node_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let beside = std::env::current_exe()?.with_file_name("storage-node");
    anyhow::ensure!(
        beside.exists(),
        "{} not found: build it (cargo build --release) or pass --storage-node",
        beside.display()
    );
    Ok(beside)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn local(
    spec: PathBuf,
    workdir: PathBuf,
    node_args: Vec<String>,
    storage_node: Option<PathBuf>,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let yaml =
        std::fs::read_to_string(&spec).map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
    let cluster: crds::StorageCluster = operator::yaml::parse_strict(&yaml)
        .map_err(|e| anyhow::anyhow!("{} is not a StorageCluster: {e}", spec.display()))?;
    let name = cluster
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "local".into());
    let mut sup = Supervisor::open(Config {
        name,
        spec: cluster.spec.clone(),
        workdir,
        storage_node: storage_node_binary(storage_node)?,
        node_args,
        print_table: true,
        spec_file: Some(spec),
        annotations: cluster.metadata.annotations.clone().unwrap_or_default(),
    })?;
    runtime()?.block_on(async {
        if let Some(addr) = metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
            let mut registry = operator::metrics::registry();
            sup.metrics().register(&mut registry);
            let registry = std::sync::Arc::new(registry);
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                operator::metrics::CONTENT_TYPE,
                            )],
                            operator::metrics::encode(&registry),
                        )
                    }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            });
        }
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                ticked = sup.tick() => {
                    if let Err(e) = ticked {
                        tracing::error!(error = %e, "tick failed");
                    }
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(sup.interval()) => {}
            }
        }
        tracing::info!("stopping members");
        sup.shutdown()?;
        anyhow::Ok(())
    })
}

fn demo(workdir: Option<PathBuf>, storage_node: Option<PathBuf>) -> anyhow::Result<()> {
    let storage_node = storage_node_binary(storage_node)?;
    let temp = match &workdir {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let workdir = match (workdir, &temp) {
        (Some(dir), _) => dir,
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => anyhow::bail!("no work directory"),
    };
    let summary = runtime()?.block_on(async {
        tokio::select! {
            result = operator::demo::run(workdir, storage_node) => result.map_err(anyhow::Error::from),
            () = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    println!("\n{summary}");
    Ok(())
}
