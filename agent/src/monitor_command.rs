//! The monitor command template (`--monitor-command`): parsed once when the agent's
//! configuration is loaded, rendered by the supervisor for each session.
//!
//! The template is split into words as a POSIX shell would split it (no shell runs);
//! inside each word `{name}` is a placeholder and `{{` / `}}` are literal braces. An
//! unknown placeholder or an unbalanced brace is a configuration error, so what the
//! configuration check accepts is exactly what the supervisor renders. Substituted
//! values are never scanned again: a value holding braces cannot inject a placeholder,
//! and a value holding spaces stays one argument.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One value a monitor command can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placeholder {
    /// `{session}`: the session directory's name.
    Session,
    /// `{primary_vol}`.
    PrimaryVol,
    /// `{secondary}`: `[user@]host::vol`.
    Secondary,
    /// `{secondary_host}`.
    SecondaryHost,
    /// `{secondary_vol}`.
    SecondaryVol,
    /// `{node}`: this node's id.
    Node,
    /// `{session_dir}`: the session directory's path.
    SessionDir,
    /// `{config_file}`: the session's `gsyncd.conf`.
    ConfigFile,
    /// `{bricks}`: comma-separated local primary brick paths.
    Bricks,
}

impl Placeholder {
    /// Every placeholder, in the order help texts list them.
    pub const ALL: [Placeholder; 9] = [
        Placeholder::Session,
        Placeholder::PrimaryVol,
        Placeholder::Secondary,
        Placeholder::SecondaryHost,
        Placeholder::SecondaryVol,
        Placeholder::Node,
        Placeholder::SessionDir,
        Placeholder::ConfigFile,
        Placeholder::Bricks,
    ];

    /// The name written between braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Session => "session",
            Placeholder::PrimaryVol => "primary_vol",
            Placeholder::Secondary => "secondary",
            Placeholder::SecondaryHost => "secondary_host",
            Placeholder::SecondaryVol => "secondary_vol",
            Placeholder::Node => "node",
            Placeholder::SessionDir => "session_dir",
            Placeholder::ConfigFile => "config_file",
            Placeholder::Bricks => "bricks",
        }
    }

    fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// `{session}, {primary_vol}, ...` for error and help texts.
    pub fn list() -> String {
        Placeholder::ALL
            .iter()
            .map(|p| format!("{{{}}}", p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a monitor command template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorCommandError {
    /// Empty, or only whitespace.
    #[error("is empty")]
    Empty,
    /// Unbalanced quotes or a trailing backslash.
    #[error("cannot split into words: {0}")]
    Split(String),
    /// `{name}` with a name that is not a placeholder.
    #[error("unknown placeholder {{{name}}} (known: {known})", known = Placeholder::list())]
    UnknownPlaceholder {
        /// The name between the braces.
        name: String,
    },
    /// A `{` without its `}` or a lone `}`.
    #[error("unmatched '{brace}' in {word:?} (write {brace}{brace} for a literal brace)")]
    UnmatchedBrace {
        /// The brace.
        brace: char,
        /// The word it is in.
        word: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(Placeholder),
}

/// A parsed monitor command: words of literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MonitorCommand {
    template: String,
    words: Vec<Vec<Piece>>,
}

impl MonitorCommand {
    /// Parses a template as `--monitor-command` and `monitor_command` take it.
    pub fn parse(template: &str) -> Result<MonitorCommand, MonitorCommandError> {
        let words =
            shell_words::split(template).map_err(|e| MonitorCommandError::Split(e.to_string()))?;
        if words.is_empty() {
            return Err(MonitorCommandError::Empty);
        }
        let words = words
            .iter()
            .map(|word| parse_word(word))
            .collect::<Result<_, _>>()?;
        Ok(MonitorCommand {
            template: template.to_owned(),
            words,
        })
    }

    /// A command whose first word is `program` taken literally (braces and spaces in
    /// it mean nothing), followed by `args` parsed as template words.
    pub fn with_program(program: &str, args: &[&str]) -> Result<Self, MonitorCommandError> {
        let mut words = vec![vec![Piece::Literal(program.to_owned())]];
        for arg in args {
            words.push(parse_word(arg)?);
        }
        let mut quoted = vec![shell_words::quote(program).into_owned()];
        quoted.extend(args.iter().map(|arg| shell_words::quote(arg).into_owned()));
        Ok(MonitorCommand {
            template: quoted.join(" "),
            words,
        })
    }

    /// The template as written.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The argv to run, each placeholder replaced by `value(placeholder)`.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> Vec<String> {
        self.words
            .iter()
            .map(|pieces| {
                let mut word = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => word.push_str(text),
                        Piece::Value(placeholder) => word.push_str(&value(*placeholder)),
                    }
                }
                word
            })
            .collect()
    }
}

impl fmt::Display for MonitorCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl TryFrom<String> for MonitorCommand {
    type Error = MonitorCommandError;

    fn try_from(template: String) -> Result<Self, Self::Error> {
        MonitorCommand::parse(&template)
    }
}

impl From<MonitorCommand> for String {
    fn from(command: MonitorCommand) -> String {
        command.template
    }
}

fn parse_word(word: &str) -> Result<Vec<Piece>, MonitorCommandError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = word;
    while let Some(c) = rest.chars().next() {
        match c {
            '{' if rest.starts_with("{{") => {
                literal.push('{');
                rest = &rest[2..];
            }
            '}' if rest.starts_with("}}") => {
                literal.push('}');
                rest = &rest[2..];
            }
            '{' => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| MonitorCommandError::UnmatchedBrace {
                        brace: '{',
                        word: word.to_owned(),
                    })?;
                let name = &rest[1..end];
                let placeholder = Placeholder::from_name(name).ok_or_else(|| {
                    MonitorCommandError::UnknownPlaceholder {
                        name: name.to_owned(),
                    }
                })?;
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Value(placeholder));
                rest = &rest[end + 1..];
            }
            '}' => {
                return Err(MonitorCommandError::UnmatchedBrace {
                    brace: '}',
                    word: word.to_owned(),
                });
            }
            c => {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(placeholder: Placeholder) -> String {
        match placeholder {
            Placeholder::Session => "gv0_h_gv1".into(),
            Placeholder::Bricks => "/b 1,/b2".into(),
            Placeholder::SessionDir => "/d/geo-replication/gv0_h_gv1".into(),
            Placeholder::Node => "{primary_vol}".into(),
            other => format!("<{}>", other.name()),
        }
    }

    #[test]
    fn renders_inside_words_without_a_shell_and_never_rescans_values() {
        let command = MonitorCommand::parse(
            "/usr/bin/mon --name=\"{session}\" --bricks {bricks} '$HOME;' {{lit}} {session_dir}/x {node} x{primary_vol}-{secondary}y",
        )
        .unwrap();
        assert_eq!(
            command.render(values),
            [
                "/usr/bin/mon",
                "--name=gv0_h_gv1",
                "--bricks",
                "/b 1,/b2",
                "$HOME;",
                "{lit}",
                "/d/geo-replication/gv0_h_gv1/x",
                "{primary_vol}",
                "x<primary_vol>-<secondary>y",
            ]
        );
    }

    #[test]
    fn what_is_accepted_is_what_is_rendered() {
        // `{{node}}` is a literal `{node}`, never the node id.
        let command = MonitorCommand::parse("mon {{node}} {node}").unwrap();
        assert_eq!(command.render(values), ["mon", "{node}", "{primary_vol}"]);
        for placeholder in Placeholder::ALL {
            let command =
                MonitorCommand::parse(&format!("mon {{{}}}", placeholder.name())).unwrap();
            assert_eq!(command.render(values)[1], values(placeholder));
        }
    }

    #[test]
    fn bad_templates_name_what_is_wrong() {
        let error = MonitorCommand::parse("mon {nope}").unwrap_err();
        assert_eq!(
            error,
            MonitorCommandError::UnknownPlaceholder {
                name: "nope".into()
            }
        );
        let text = error.to_string();
        assert!(
            text.contains("{nope}") && text.contains("{session_dir}"),
            "{text}"
        );
        assert!(matches!(
            MonitorCommand::parse("mon {node"),
            Err(MonitorCommandError::UnmatchedBrace { brace: '{', .. })
        ));
        assert!(matches!(
            MonitorCommand::parse("mon a}b"),
            Err(MonitorCommandError::UnmatchedBrace { brace: '}', .. })
        ));
        assert_eq!(
            MonitorCommand::parse("   "),
            Err(MonitorCommandError::Empty)
        );
        assert!(matches!(
            MonitorCommand::parse("mon 'open"),
            Err(MonitorCommandError::Split(_))
        ));
    }

    #[test]
    fn a_literal_program_may_hold_braces_and_the_template_round_trips() {
        let command =
            MonitorCommand::with_program("/opt/my {odd} dir/georepd", &["monitor", "{node}"])
                .unwrap();
        assert_eq!(
            command.render(values),
            ["/opt/my {odd} dir/georepd", "monitor", "{primary_vol}"]
        );
        let json = serde_json::to_string(&MonitorCommand::parse("a {node}").unwrap()).unwrap();
        assert_eq!(json, "\"a {node}\"");
        let back: MonitorCommand = serde_json::from_str(&json).unwrap();
        assert_eq!(back.render(values), ["a", "{primary_vol}"]);
        assert!(serde_json::from_str::<MonitorCommand>("\"a {nope}\"").is_err());
    }
}
