//! Mend's operator.
//!
//! It will run `StorageCluster`s: on Kubernetes as a kube-runtime controller (`operator run`), and
//! without Kubernetes as a supervisor of local storage-node processes (`operator local`), with the
//! same probe → detector → planner → executor healing loop in both. The decision half
//! (detector, planner) is in the library; the binary comes with the operator and self-healing
//! issues. Until then it only says so.

fn main() {
    eprintln!("operator: not built yet; see README.md for what runs today");
    std::process::exit(2);
}
