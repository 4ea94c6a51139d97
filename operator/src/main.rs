//! Mend's operator.
//!
//! It will run `StorageCluster`s: on Kubernetes as a kube-runtime controller (`operator run`), and
//! without Kubernetes as a supervisor of local storage-node processes (`operator local`), with the
//! same probe → detector → planner → executor healing loop in both. Not built yet: the operator
//! and self-healing issues build it. Until then the binary only says so.

fn main() {
    eprintln!("operator: not built yet; see README.md for what runs today");
    std::process::exit(2);
}
