//! `config`: list every key (`GET /v1/config`), print one, set one or reset
//! one (`POST /v1/op`).

use georep_api::types::{ConfigResponse, ConfigRow};
use georep_mesh::session_config;
use georep_mesh::{SessionId, SessionOp};
use serde_json::json;

use crate::args::{ConfigArgs, Globals};
use crate::client::{decode, with_query};
use crate::lifecycle::{between, parse_session, render_op, send};
use crate::output::{CommandError, Exit, Report, Table};

/// What a `config` command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigAction {
    /// Every key.
    List,
    /// One key's effective value.
    Get(String),
    /// Set a key.
    Set(String, String),
    /// Reset a key to its default.
    Reset(String),
}

/// Reads the action from the arguments (`'!KEY'` means reset, as in gluster).
pub fn action(a: &ConfigArgs) -> Result<ConfigAction, CommandError> {
    let usage = |m: &str| Err(CommandError::Usage(m.to_owned()));
    let action = match (&a.reset, &a.key, &a.value) {
        (Some(key), None, None) => ConfigAction::Reset(key.clone()),
        (Some(_), _, _) => return usage("--reset KEY takes no other KEY or VALUE"),
        (None, None, _) => ConfigAction::List,
        (None, Some(key), value) => match (key.strip_prefix('!'), value) {
            (Some(_), Some(_)) => return usage("'!KEY' resets KEY and takes no VALUE"),
            (Some(bare), None) => ConfigAction::Reset(bare.to_owned()),
            (None, Some(value)) => ConfigAction::Set(key.clone(), value.clone()),
            (None, None) => ConfigAction::Get(key.clone()),
        },
    };
    if let ConfigAction::Reset(key) | ConfigAction::Get(key) | ConfigAction::Set(key, _) = &action
        && key.trim().is_empty()
    {
        return usage("the config key is empty");
    }
    if a.no_wait && matches!(action, ConfigAction::List | ConfigAction::Get(_)) {
        return usage("--no-wait applies only when setting or resetting a key");
    }
    Ok(action)
}

/// `config`.
pub async fn config(g: &Globals, a: &ConfigArgs) -> Report {
    let (id, action) = match parse_session(&a.session.primary, &a.session.secondary)
        .and_then(|id| Ok((id, action(a)?)))
    {
        Ok(parsed) => parsed,
        Err(e) => return e.report(g.json, None),
    };
    let session = id.to_string();
    let result = match action {
        ConfigAction::List => read(g, &id, None)
            .await
            .map(|resp| render_list(&resp, g.json)),
        ConfigAction::Get(key) => match read(g, &id, Some(&key)).await {
            Ok(resp) => render_get(&resp, &key, g.json),
            Err(e) => Err(e),
        },
        ConfigAction::Set(key, value) => {
            let key_name = canonical(&key).to_owned();
            let op = SessionOp::SetConfig { key, value };
            return match g
                .client()
                .op(&id.primary_volume, &id.secondary(), op, !a.no_wait)
                .await
            {
                // Shown as stored (validated and normalised), not as typed.
                Ok((resp, raw)) => {
                    let doing = format!(
                        "Setting config {key_name} = {} of geo-replication session between {}",
                        resp.value.as_deref().unwrap_or("?"),
                        between(&id)
                    );
                    render_op(&resp, &raw, &doing, g.json, g.timeout.as_secs())
                }
                Err(e) => e.report(g.json, Some(&session)),
            };
        }
        ConfigAction::Reset(key) => {
            let doing = format!(
                "Resetting config {} of geo-replication session between {}",
                canonical(&key),
                between(&id)
            );
            let op = SessionOp::ResetConfig { key };
            return send(g, &id, op, a.no_wait, &doing).await;
        }
    };
    result.unwrap_or_else(|e| e.report(g.json, Some(&session)))
}

/// The key's canonical spelling when it is known (the agent judges unknown ones).
fn canonical(key: &str) -> &str {
    session_config::lookup(key).map_or(key, |k| k.name)
}

async fn read(
    g: &Globals,
    id: &SessionId,
    key: Option<&str>,
) -> Result<ConfigResponse, CommandError> {
    let secondary = id.secondary();
    let path = with_query(
        "/v1/config",
        &[
            ("primary", Some(&id.primary_volume)),
            ("secondary", Some(&secondary)),
            ("key", key),
        ],
    );
    decode(&g.client().get(&path).await?)
}

/// The table (or JSON) of every key.
pub fn render_list(resp: &ConfigResponse, json: bool) -> Report {
    if json {
        let config: serde_json::Map<String, serde_json::Value> = resp
            .keys
            .iter()
            .map(|row| (row.key.clone(), json!(row.value)))
            .collect();
        return Report::json(
            Exit::Done,
            &json!({"ok": true, "session": resp.session, "config": config, "keys": resp.keys}),
        );
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut table = Table::new(&["KEY", "VALUE", "DEFAULT", "SET", "LIVE"]);
    for ConfigRow {
        key,
        value,
        default,
        set,
        live,
    } in &resp.keys
    {
        table.push(vec![
            key.clone(),
            value.clone(),
            default.clone(),
            yes_no(*set),
            yes_no(*live),
        ]);
    }
    let mut report = Report::new(Exit::Done);
    report.stdout = table.render();
    report
        .out("LIVE keys apply without restarting monitors; changing any other key restarts them.");
    report
}

/// One key's value (just the value, as gluster prints it).
pub fn render_get(resp: &ConfigResponse, asked: &str, json: bool) -> Result<Report, CommandError> {
    let row = resp.keys.first().ok_or_else(|| {
        CommandError::Failed(format!(
            "{}: georepd returned no value for `{asked}`",
            resp.session
        ))
    })?;
    Ok(if json {
        Report::json(
            Exit::Done,
            &json!({"ok": true, "session": resp.session, "key": row.key, "value": row.value}),
        )
    } else {
        let mut report = Report::new(Exit::Done);
        report.out(&row.value);
        report
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn action_of(args: &[&str]) -> Result<ConfigAction, CommandError> {
        let argv = ["georep", "config", "gv0", "n4::gv1"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Config(a) => action(&a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bang_key_means_reset() {
        assert_eq!(action_of(&[]).unwrap(), ConfigAction::List);
        assert_eq!(
            action_of(&["sync-jobs"]).unwrap(),
            ConfigAction::Get("sync-jobs".into())
        );
        assert_eq!(
            action_of(&["sync-jobs", "8"]).unwrap(),
            ConfigAction::Set("sync-jobs".into(), "8".into())
        );
        assert_eq!(
            action_of(&["!sync-jobs"]).unwrap(),
            ConfigAction::Reset("sync-jobs".into())
        );
        assert_eq!(
            action_of(&["--reset", "sync_jobs", "--no-wait"]).unwrap(),
            ConfigAction::Reset("sync_jobs".into())
        );
        for bad in [
            &["!sync-jobs", "8"][..],
            &["!"],
            &["--reset", "a", "b"],
            &["sync-jobs", "--no-wait"],
        ] {
            assert_eq!(action_of(bad).unwrap_err().exit(), Exit::Usage, "{bad:?}");
        }
    }

    fn response() -> ConfigResponse {
        ConfigResponse {
            ok: true,
            session: "gv0 -> n4::gv1".into(),
            keys: vec![
                ConfigRow {
                    key: "sync-jobs".into(),
                    value: "8".into(),
                    default: "3".into(),
                    set: true,
                    live: false,
                },
                ConfigRow {
                    key: "checkpoint".into(),
                    value: "0".into(),
                    default: "0".into(),
                    set: false,
                    live: true,
                },
            ],
        }
    }

    #[test]
    fn list_renders_table_and_json() {
        let report = render_list(&response(), false);
        let lines: Vec<&str> = report.stdout.lines().collect();
        assert_eq!(lines[0], "KEY           VALUE    DEFAULT    SET    LIVE");
        assert!(lines[1].starts_with("-----"));
        assert_eq!(lines[2], "sync-jobs     8        3          yes    no");
        assert_eq!(lines[3], "checkpoint    0        0          no     yes");

        let report = render_list(&response(), true);
        let v: serde_json::Value = serde_json::from_str(report.stdout.trim()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["config"]["sync-jobs"], "8");
        assert_eq!(v["keys"][1]["live"], true);
    }

    #[test]
    fn get_prints_just_the_value() {
        let mut resp = response();
        resp.keys.truncate(1);
        assert_eq!(render_get(&resp, "sync_jobs", false).unwrap().stdout, "8\n");
        let json = render_get(&resp, "sync_jobs", true).unwrap();
        let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
        assert_eq!(v["key"], "sync-jobs");
        assert_eq!(v["value"], "8");
        resp.keys.clear();
        assert_eq!(
            render_get(&resp, "x", false).unwrap_err().exit(),
            Exit::Failed
        );
    }
}
