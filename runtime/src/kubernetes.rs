//! Kubernetes runtime (kube-rs).
