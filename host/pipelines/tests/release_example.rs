//! The bundled `examples/pipelines/release.yaml`: it validates against the
//! roles the bundled plugins declare in their `capstan.toml`, and a run of it
//! goes from a push to prod through the machine, the way an executor drives it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use capstan_pipelines::machine::{
    Action, Decision, Event, Machine, Outcome, RoleGrant, Run, RunStatus,
};
use capstan_pipelines::model::{Provider, PushEvent, Trigger, resolve_params};
use capstan_pipelines::{PluginCatalog, load};
use serde_json::{Value, json};

/// Plugins as the repository bundles them: name, version and role read
/// from `plugins/*/capstan.toml` (what the registry would answer).
struct BundledPlugins(BTreeMap<String, (String, String)>);

impl BundledPlugins {
    fn read(root: &Path) -> Result<Self> {
        let mut plugins = BTreeMap::new();
        for dir in std::fs::read_dir(root.join("plugins"))? {
            let manifest = dir?.path().join("capstan.toml");
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| manifest.display().to_string())?;
            let doc: toml::Table = toml::from_str(&text)?;
            let field = |k: &str| {
                doc.get(k)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .context(k.to_string())
            };
            plugins.insert(field("name")?, (field("version")?, field("role")?));
        }
        Ok(Self(plugins))
    }
}

impl PluginCatalog for BundledPlugins {
    fn kind_of(&self, name: &str, version: Option<&str>) -> Option<String> {
        let (v, role) = self.0.get(name)?;
        version.is_none_or(|want| want == v).then(|| role.clone())
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("repo root")
}

#[test]
fn the_release_example_validates_against_the_bundled_plugins() -> Result<()> {
    let catalog = BundledPlugins::read(repo_root())?;
    assert_eq!(
        catalog.kind_of("wait-rollout", None).as_deref(),
        Some("deploy-step")
    );
    assert_eq!(
        catalog.kind_of("http-probe", None).as_deref(),
        Some("metrics-source")
    );
    let path = repo_root().join("examples/pipelines/release.yaml");
    let text = std::fs::read_to_string(&path)?;
    let p = load("examples/pipelines/release.yaml", &text, &catalog)?;
    assert_eq!((p.name.as_str(), p.project.as_str()), ("release", "shop"));

    let Trigger::Push(push) = &p.triggers[0] else {
        bail!("first trigger is the push")
    };
    let to = |r: &str| PushEvent {
        provider: Provider::Github,
        repo: "acme/shop".into(),
        git_ref: r.into(),
    };
    assert!(push.matches(&to("refs/heads/main")));
    assert!(!push.matches(&to("refs/heads/feature-x")));

    // The same file with a metrics-source as a step is refused, naming it.
    let bad = text.replace("plugin: wait-rollout", "plugin: http-probe");
    let err = load("release.yaml", &bad, &catalog)
        .expect_err("wrong role")
        .to_string();
    assert!(
        err.contains(r#"release.yaml: step "wait_test": plugin: plugin "http-probe" is a metrics-source, not a deploy-step"#),
        "{err}"
    );
    Ok(())
}

/// What an executor would answer for each action; records the invocations.
fn answer(action: &Action, calls: &mut Vec<(String, Value)>) -> Option<Event> {
    match action {
        Action::StartStep(i) => {
            calls.push((i.step.clone(), i.params.clone()));
            let outputs: BTreeMap<String, Value> = match i.step.as_str() {
                "render" => BTreeMap::from([
                    ("manifest".into(), json!("[]")),
                    ("image".into(), i.params["image"].clone()),
                ]),
                "wait_test" => BTreeMap::from([("available".into(), json!("1"))]),
                _ => BTreeMap::new(),
            };
            let outcome = Outcome::Succeeded {
                outputs,
                message: "ok".into(),
            };
            Some(Event::StepFinished {
                step: i.step.clone(),
                attempt: i.attempt,
                outcome,
            })
        }
        Action::AcquireLock { environment, .. } => Some(Event::LockGranted {
            environment: environment.clone(),
        }),
        Action::RequestApproval {
            step,
            role,
            project,
            ..
        } => Some(Event::Approval(Decision {
            step: step.clone(),
            user: "rita".into(),
            roles: vec![RoleGrant {
                project: project.clone(),
                role: role.clone(),
            }],
            approve: true,
            comment: "tested in test".into(),
        })),
        _ => None,
    }
}

#[test]
fn a_push_to_main_runs_the_release_example_to_prod() -> Result<()> {
    let catalog = BundledPlugins::read(repo_root())?;
    let text = std::fs::read_to_string(repo_root().join("examples/pipelines/release.yaml"))?;
    let p = load("release.yaml", &text, &catalog)?;
    let params =
        resolve_params(&p.params, &BTreeMap::new()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let trigger = json!({"kind": "push", "provider": "github", "repo": "acme/shop", "ref": "refs/heads/main",
        "branch": "main", "sha": "4f2a9c1", "pusher": "dev"});
    let machine = Machine::new(&p);
    let mut run = Run::new(&p, "r-1", trigger, params, Some("dev"));
    let mut pending = vec![Event::Start];
    let mut calls = Vec::new();
    let mut log = Vec::new();
    let mut now = 1_800_000_000_000;
    while let Some(event) = pending.pop() {
        now += 10;
        let t = machine.apply(&run, event, now)?;
        run = t.run;
        pending.extend(t.actions.iter().filter_map(|a| answer(a, &mut calls)));
        log.extend(t.actions);
    }
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.reason);
    let order: Vec<&str> = calls.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        order,
        [
            "render",
            "deploy_test",
            "wait_test",
            "smoke_test",
            "deploy_prod",
            "wait_prod",
            "notify"
        ]
    );
    let image = json!("registry.example.com/shop:4f2a9c1");
    assert_eq!(calls[0].1["image"], image, "the pushed commit is the tag");
    assert_eq!(calls[1].1["cluster"], "test");
    assert_eq!(
        calls[4].1["image"], image,
        "prod gets the image tested in test"
    );
    assert_eq!(calls[4].1["cluster"], "prod");
    assert_eq!(calls[4].1["replicas"], json!(2));
    assert_eq!(
        calls[6].1["json"]["text"],
        "shop registry.example.com/shop:4f2a9c1 is live in prod"
    );
    assert_eq!(run.steps["approve_prod"].approvals[0].user, "rita");
    assert!(run.locks.is_empty(), "both locks released: {:?}", run.locks);
    // prod's steps roll back on failure, and a rollback undoes test's steps
    // too, so test's lock is kept until prod is done.
    let at = |want: &dyn Fn(&Action) -> bool| log.iter().position(want).expect("action present");
    let test_released =
        at(&|a| matches!(a, Action::ReleaseLock { environment } if environment == "test"));
    let prod_waited = at(&|a| matches!(a, Action::StartStep(i) if i.step == "wait_prod"));
    assert!(test_released > prod_waited);
    Ok(())
}
