//! Starts the test Kubernetes API server (etcd + kube-apiserver, as the
//! end-to-end tests do) for a script: prints the admin kubeconfig's path
//! once `/readyz` answers, then runs until its standard input closes or it
//! is killed; the servers stop with it. No kube-controller-manager runs, so
//! this process plays the quota controller for every namespace (a
//! ResourceQuota becomes ready). `tests/contract.sh` uses it.

use std::io::Read;
use std::sync::atomic::Ordering;

fn main() -> anyhow::Result<()> {
    let env = capstan_tests::kube_env::KubeEnv::start()?;
    let quotas = env.quota_controller(None);
    println!("{}", env.kubeconfig.display());
    // Until the caller closes our stdin or kills us.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    quotas.store(true, Ordering::Relaxed);
    drop(env);
    Ok(())
}
