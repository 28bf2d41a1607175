//! The provisioning engine: a provisioner plugin's `plan` made real and kept
//! true. An instance (plugin, name, cluster, spec) is planned (kinds by API
//! discovery, a server-side apply dry-run per object, a normalized diff
//! against the live object, a verdict each), the plan stored with the live
//! resourceVersions it saw, approved through the shared gate where the
//! cluster asks for it, and applied exactly as reviewed: in waves, each
//! waited on by kstatus rules, members tracked as a kubectl ApplySet and
//! pruned with UID preconditions. Destroy removes the set in reverse order
//! and reports what Namespace termination waits on. A drift sweep re-plans
//! applied instances under a lease.
//!
//! Every Kubernetes call runs under the provisioner's own kube grants and
//! is audited ([`kube`]). The pure parts: [`normalize`], [`applyset`],
//! [`order`], [`kstatus`]; the tables: [`store`]; the host side: [`engine`].

pub mod applyset;
pub mod engine;
pub mod kstatus;
pub mod kube;
pub mod model;
pub mod normalize;
pub mod order;
pub mod store;

pub use engine::{Engine, EngineConfig, ProvisionError, ProvisionMetrics};
