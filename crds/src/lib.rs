//! Mend's Kubernetes resource types.
//!
//! This crate will hold the `StorageCluster` custom resource (group `mend.dev`, version
//! `v1alpha1`): its spec, its status in Kubernetes API conventions, and the schemars schema from
//! which the CRD YAML in `manifests/` is generated. It holds types only; the controller lives in
//! the `operator` crate. Nothing is defined yet: the operator issue builds it.
