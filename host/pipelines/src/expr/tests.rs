//! Templates, conditions, reference paths and the output cap.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn scope() -> Scope {
    Scope {
        trigger: json!({"kind": "push", "ref": "refs/heads/main", "branch": "main", "sha": "abc123"}),
        params: BTreeMap::from([
            ("replicas".to_string(), json!(2)),
            ("tier".to_string(), json!("large")),
        ]),
        steps: BTreeMap::from([(
            "render".to_string(),
            StepView {
                status: "succeeded".into(),
                outputs: BTreeMap::from([("image".to_string(), json!("shop:1.2"))]),
            },
        )]),
        run: json!({"id": "r1", "pipeline": "release", "project": "shop", "status": "failed"}),
    }
}

#[test]
fn a_whole_string_expression_keeps_its_type_and_mixed_text_is_spliced() {
    let s = scope();
    assert_eq!(s.render_str("${{ params.replicas + 1 }}"), Ok(json!(3)));
    assert_eq!(s.render_str("${{params.tier}}"), Ok(json!("large")));
    assert_eq!(
        s.render_str(
            "deploy ${{ steps.render.outputs.image }} @ ${{ trigger.sha }} x${{ params.replicas }}"
        ),
        Ok(json!("deploy shop:1.2 @ abc123 x2"))
    );
    assert_eq!(s.render_str("no expressions"), Ok(json!("no expressions")));
    let params = json!({"name": "shop", "env": {"TAG": "${{ trigger.branch }}"}, "list": ["${{ run.id }}", 4]});
    assert_eq!(
        s.render(&params),
        Ok(json!({"name": "shop", "env": {"TAG": "main"}, "list": ["r1", 4]}))
    );
}

#[test]
fn conditions_must_be_bool_and_may_be_wrapped() {
    let s = scope();
    assert_eq!(
        s.condition(r#"params.tier == "large" && trigger.branch == "main""#),
        Ok(true)
    );
    assert_eq!(
        s.condition("${{ steps.render.status != 'succeeded' }}"),
        Ok(false)
    );
    assert_eq!(s.condition(r#"run.status == "failed""#), Ok(true));
    let err = s.condition("params.replicas").expect_err("not a bool");
    assert_eq!(
        err.to_string(),
        "condition \"params.replicas\" gave 2, not true or false"
    );
}

#[test]
fn errors_name_the_expression_and_the_problem() {
    let s = scope();
    let err = s
        .render_str("${{ steps.render.outputs.tag }}")
        .expect_err("missing output");
    assert!(
        matches!(&err, ExprError::Eval { expr, .. } if expr == "steps.render.outputs.tag"),
        "{err}"
    );
    assert!(err.to_string().contains("tag"), "{err}");

    let err = s.render_str("x ${{ params.tier").expect_err("unclosed");
    assert_eq!(err, ExprError::Unclosed("x ${{ params.tier".into()));

    let err = compile("params.tier ==").expect_err("syntax");
    assert!(
        matches!(&err, ExprError::Syntax { message, .. } if message.contains("column")),
        "{err}"
    );
}

fn paths(expr: &str) -> Vec<String> {
    let p = compile(expr).expect("compiles");
    let mut v: Vec<String> = references(&p).into_iter().map(|p| p.join(".")).collect();
    v.sort();
    v
}

#[test]
fn references_lists_the_variable_paths_read() {
    assert_eq!(
        paths(
            r#"steps.render.outputs.image != "" && params.tier in ["a"] && trigger.ref.startsWith("refs/tags/")"#
        ),
        ["params.tier", "steps.render.outputs.image", "trigger.ref"]
    );
    assert_eq!(
        paths(r#"steps["render"].outputs["image"]"#),
        ["steps.render.outputs.image"]
    );
    assert_eq!(paths("has(steps.a.outputs.x)"), ["steps.a.outputs.x"]);
    assert_eq!(
        paths("[1, 2].all(x, x < params.max) && {'k': run.id}.size() > 0"),
        ["params.max", "run.id"],
        "macro variables are not references"
    );
    assert_eq!(
        paths("steps[params.which].status"),
        ["params.which", "steps"]
    );
}

#[test]
fn segments_split_text_and_expressions() {
    assert_eq!(
        segments("a${{ x }}b${{y}}"),
        Ok(vec![
            Segment::Text("a".into()),
            Segment::Expr("x".into()),
            Segment::Text("b".into()),
            Segment::Expr("y".into()),
        ])
    );
}

#[test]
fn oversize_or_missing_outputs_are_clear_errors() {
    let limits = OutputLimits {
        per_output: 16,
        total: 20,
    };
    let ok = BTreeMap::from([("a".to_string(), json!("0123456789"))]);
    assert_eq!(check_outputs(&ok, &["a"], limits), Ok(()));

    let err = check_outputs(&ok, &["a", "b"], limits).expect_err("missing b");
    assert_eq!(err, "declared output \"b\" was not returned");

    let big = BTreeMap::from([("manifest".to_string(), json!("x".repeat(40)))]);
    let err = check_outputs(&big, &[], limits).expect_err("oversize");
    assert!(
        err.starts_with("output \"manifest\" is 42 bytes, over the 16-byte cap"),
        "{err}"
    );

    let many = BTreeMap::from([
        ("a".to_string(), json!("0123456789")),
        ("b".to_string(), json!("0123456789")),
    ]);
    let err = check_outputs(&many, &[], limits).expect_err("total");
    assert_eq!(
        err,
        "outputs total 24 bytes, over the 20-byte cap for one step"
    );
}
