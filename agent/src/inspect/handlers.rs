//! The `Agent` side of inspect: gathering membership, replica and raw namespaces for
//! each `/v1/inspect/...` route.

use super::*;

impl Agent {
    /// `inspect members`: every node the local agent knows.
    pub async fn inspect_members(&self) -> MembersResponse {
        let membership = self.mesh().membership().await;
        MembersResponse {
            members: membership
                .members
                .values()
                .map(|m| member_row(m, &membership.self_id))
                .collect(),
        }
    }

    /// `inspect sessions [P [S]]`: every register of every session in scope, and which
    /// nodes merged each session's latest write.
    pub async fn inspect_sessions(
        &self,
        primary: Option<&str>,
        secondary: Option<&str>,
    ) -> Result<SessionsResponse, ApiError> {
        let only = match (primary, secondary) {
            (Some(p), Some(s)) => Some(parse(p, s)?),
            _ => None,
        };
        let mesh = self.mesh();
        let replica = mesh.replica();
        let membership = mesh.membership().await;
        let namespaces = session_namespaces(mesh, &membership).await;
        if let Some(id) = &only
            && !replica.sessions.contains_key(id)
        {
            return Err(not_created(id));
        }
        let mut sessions = Vec::new();
        for (id, record) in &replica.sessions {
            if only.as_ref().is_some_and(|o| o != id)
                || primary.is_some_and(|p| p != id.primary_volume)
            {
                continue;
            }
            let key = format!("{SESSION_PREFIX}{}", id.key());
            let latest = latest_write_of(&key, &namespaces);
            let acked = acked_by(mesh, &membership.self_id, id, latest.as_ref()).await;
            let nodes = convergence(&membership, latest.as_ref(), &acked);
            let pick = |state: Convergence| -> Vec<String> {
                nodes
                    .iter()
                    .filter(|c| c.state == state)
                    .map(|c| c.node.clone())
                    .collect()
            };
            let view = record.view();
            // `registers()` and `register_values()` list registers in the same order.
            let registers = record
                .registers()
                .into_iter()
                .zip(register_values(record))
                .map(|((name, stamp), value)| RegisterRow {
                    carried_by: namespaces
                        .iter()
                        .filter(|(_, ns)| {
                            ns.keys.get(&key).is_some_and(|(_, r)| {
                                r.as_ref().is_some_and(|r| r.carries(&name, &stamp))
                            })
                        })
                        .map(|(node, _)| node.clone())
                        .collect(),
                    register: value.register,
                    value: value.value,
                    stamp: value.stamp,
                    writer: value.writer,
                })
                .collect();
            sessions.push(SessionInspect {
                session: id.to_string(),
                key: key.clone(),
                primary_volume: id.primary_volume.clone(),
                secondary_user: id.secondary_user.clone(),
                secondary_host: id.secondary_host.clone(),
                secondary_volume: id.secondary_volume.clone(),
                exists: view.exists,
                desired_state: view.desired.to_string(),
                registers,
                latest_write: latest,
                converged_nodes: pick(Convergence::Merged),
                lagging_nodes: pick(Convergence::Lagging),
                dead_nodes: pick(Convergence::Dead),
                nodes,
            });
        }
        Ok(SessionsResponse {
            local_node: membership.self_id.clone(),
            sessions,
        })
    }

    /// `inspect keys NODE [PREFIX]`: that node's raw namespace as held here, decoded.
    pub async fn inspect_keys(
        &self,
        node: &str,
        prefix: Option<&str>,
    ) -> Result<KeysResponse, ApiError> {
        let membership = self.mesh().membership().await;
        let member = known_member(&membership, node)?;
        let raw = self
            .mesh()
            .raw_keys(node)
            .await
            .ok_or_else(|| unknown_node(&membership, node))?;
        let keys = raw
            .into_iter()
            .filter(|(key, _)| prefix.is_none_or(|p| key.starts_with(p)))
            .map(|(key, (version, value, deleted))| {
                let (kind, decoded) = if deleted {
                    (key_kind(&key), Err("deleted key (tombstone)".to_string()))
                } else {
                    decode_value(&key, &value)
                };
                let (decoded, decode_error) = match decoded {
                    Ok(value) => (Some(value), None),
                    Err(error) => (None, Some(error)),
                };
                KeyRow {
                    size: value.len(),
                    kind: kind.to_string(),
                    key,
                    version,
                    deleted,
                    raw: value,
                    decoded,
                    decode_error,
                }
            })
            .collect();
        Ok(KeysResponse {
            node: node.to_string(),
            generation: member.generation,
            held_by: membership.self_id.clone(),
            prefix: prefix.map(str::to_string),
            keys,
        })
    }

    /// `inspect explain P S [--node N]`: why the monitor is or is not running on a node.
    pub async fn inspect_explain(
        &self,
        primary: &str,
        secondary: &str,
        node: Option<&str>,
    ) -> Result<ExplainResponse, ApiError> {
        let id = parse(primary, secondary)?;
        let mesh = self.mesh();
        let replica = mesh.replica();
        let view = replica.view(&id).ok_or_else(|| not_created(&id))?;
        let membership = mesh.membership().await;
        let node = node.unwrap_or(&membership.self_id).to_string();
        let member = known_member(&membership, &node)?;
        let key = format!("{MONITOR_PREFIX}{}", id.key());
        let status = self
            .published::<NodeSessionStatus>(&key)
            .await
            .remove(&node);
        let published_at_ms = status
            .as_ref()
            .map(|s| s.published_at_ms)
            .filter(|at| *at > 0);
        let report_age_ms = published_at_ms.map(|at| self.now_millis().saturating_sub(at));
        let report = status.map(|status| status.report);
        let namespaces = session_namespaces(mesh, &membership).await;
        let latest = latest_write_of(&format!("{SESSION_PREFIX}{}", id.key()), &namespaces);
        let acked = acked_by(mesh, &membership.self_id, &id, latest.as_ref()).await;
        let primary_bricks: Vec<Brick> = member
            .info
            .as_ref()
            .map(|info| info.bricks_of(&id.primary_volume).cloned().collect())
            .unwrap_or_default();
        let facts = ExplainFacts {
            node: &node,
            is_self: node == membership.self_id,
            view: &view,
            live: member.live,
            last_heard_ms: member.last_heard_ms,
            primary_bricks: &primary_bricks,
            hosts_secondary: member.hosts(&id.secondary_volume),
            report: report.as_ref(),
            report_age_ms,
            latest_write: latest.as_ref(),
            seen: Seen::clone(&member.seen),
            acked: acked.contains(&node),
        };
        let reason = explain_reason(&facts);
        let (message, mut sentences) = explain_text(&facts, reason);
        if view.options.push_pem {
            let installs = self.key_installs(&id).await;
            let published = self
                .published::<SessionKeys>(&crate::keys::keys_key(&id))
                .await
                .remove(&node);
            sentences.extend(key_sentences(
                &node,
                &view,
                !primary_bricks.is_empty(),
                member.hosts(&id.secondary_volume),
                published.as_ref(),
                &installs,
            ));
        }
        let merged_latest_write = facts.merged();
        let node_seen = facts.node_seen();
        let hosts_secondary = facts.hosts_secondary;
        Ok(ExplainResponse {
            ok: true,
            session: id.to_string(),
            local_node: membership.self_id.clone(),
            reason,
            message,
            sentences,
            exists: view.exists,
            desired_state: view.desired.to_string(),
            desired_stamp: view.desired_stamp.as_ref().map(ToString::to_string),
            node_live: member.live,
            last_heard_ms: member.last_heard_ms,
            merged_latest_write,
            primary_bricks,
            hosts_secondary,
            monitor: report
                .as_ref()
                .map(|r| monitor_view(r, published_at_ms, report_age_ms)),
            latest_write: latest,
            node_seen,
            node,
        })
    }

    /// `inspect diff A B`: the session writes and frontier entries on which two nodes'
    /// published views differ, as the local agent knows them.
    pub async fn inspect_diff(&self, a: &str, b: &str) -> Result<DiffResponse, ApiError> {
        let membership = self.mesh().membership().await;
        let member_a = known_member(&membership, a)?;
        let member_b = known_member(&membership, b)?;
        let namespaces = session_namespaces(self.mesh(), &membership).await;
        let (writes, seen) = diff_frontiers(a, &member_a.seen, b, &member_b.seen, &namespaces);
        let differs = !writes.is_empty() || !seen.is_empty();
        let message = if differs {
            let only = |pick: fn(&WriteDiff) -> bool| writes.iter().filter(|w| pick(w)).count();
            format!(
                "{a} and {b} differ: {} session write(s) merged by {a} only, {} by {b} only, {} differing seen entr{}",
                only(|w| w.merged_by_a),
                only(|w| w.merged_by_b),
                seen.len(),
                if seen.len() == 1 { "y" } else { "ies" }
            )
        } else {
            format!(
                "no differences: {a} and {b} have merged the same session writes (as {} knows them)",
                membership.self_id
            )
        };
        Ok(DiffResponse {
            a: a.to_string(),
            b: b.to_string(),
            local_node: membership.self_id.clone(),
            differs,
            writes,
            seen,
            message,
        })
    }
}

/// Every known node's `s/` keys as gossiped here (latest generation of each node).
async fn session_namespaces(
    mesh: &MeshNode,
    membership: &Membership,
) -> BTreeMap<String, Namespace> {
    let mut namespaces = BTreeMap::new();
    for member in membership.members.values() {
        let Some(raw) = mesh.raw_keys(&member.node_id).await else {
            continue;
        };
        let keys = raw
            .into_iter()
            .filter(|(key, (_, _, deleted))| key.starts_with(SESSION_PREFIX) && !deleted)
            .map(|(key, (version, value, _))| {
                (key, (version, codec::decode::<SessionRecord>(&value).ok()))
            })
            .collect();
        namespaces.insert(
            member.node_id.clone(),
            Namespace {
                generation: member.generation,
                keys,
            },
        );
    }
    namespaces
}

/// The nodes known here to hold the latest write besides their published frontiers:
/// this node if it holds it, and those that acknowledged its eager push when this node
/// carries it (only a writer hears acknowledgements, and only of its own writes).
async fn acked_by(
    mesh: &MeshNode,
    self_id: &str,
    id: &SessionId,
    latest: Option<&LatestWrite>,
) -> BTreeSet<String> {
    // What `status` and `--wait` count for the same write (this node holding it,
    // pushes acknowledged here) counts here too: one answer everywhere.
    let mut confirmed = BTreeSet::new();
    if let Some(latest) = latest
        && mesh
            .latest_write(id)
            .is_some_and(|(stamp, _, _)| stamp.to_string() == latest.stamp)
        && let Some(progress) = mesh.session_progress(id).await
    {
        confirmed.extend(progress.confirmed);
    }
    confirmed.extend(pushes_acked(mesh, self_id, id, latest).await);
    confirmed
}

/// The nodes that acknowledged this node's eager push of the latest write.
async fn pushes_acked(
    mesh: &MeshNode,
    self_id: &str,
    id: &SessionId,
    latest: Option<&LatestWrite>,
) -> BTreeSet<String> {
    let Some((latest, own)) =
        latest.and_then(|w| Some((w, w.carriers.iter().find(|c| c.origin == self_id)?)))
    else {
        return BTreeSet::new();
    };
    let Some(stamp) = Hlc::parse(&latest.stamp) else {
        return BTreeSet::new();
    };
    let receipt = WriteReceipt {
        session: id.clone(),
        origin: own.origin.clone(),
        position: own.position(),
        stamp,
    };
    mesh.progress(&receipt)
        .await
        .confirmed
        .into_iter()
        .collect()
}

fn parse(primary: &str, secondary: &str) -> Result<SessionId, ApiError> {
    Ok(SessionId::parse(primary, secondary)?)
}

fn not_created(id: &SessionId) -> ApiError {
    StateError::NotCreated(id.clone()).into()
}

fn unknown_node(membership: &Membership, node: &str) -> ApiError {
    let known: Vec<&str> = membership.members.keys().map(String::as_str).collect();
    ApiError::Refused {
        code: georep_api::ErrorCode::UnknownNode,
        session: None,
        message: format!(
            "node `{node}` is not known to {} (known nodes: {}); check the node id with `georep inspect members`",
            membership.self_id,
            known.join(", ")
        ),
    }
}

fn known_member<'a>(membership: &'a Membership, node: &str) -> Result<&'a Member, ApiError> {
    membership
        .members
        .get(node)
        .ok_or_else(|| unknown_node(membership, node))
}
