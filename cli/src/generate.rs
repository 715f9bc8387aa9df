//! `georep generate`: man pages and shell completions from the clap definition (for
//! packaging; `georepd generate` does the same for the agent).

use std::path::Path;

use crate::args::GenerateCommand;
use crate::output::{CommandError, Exit, Report};

/// Runs `generate ...` for `command` (the whole `georep` definition).
pub fn generate(command: clap::Command, what: &GenerateCommand) -> Report {
    let result = match what {
        GenerateCommand::Man { out } => man_pages(command, out).map(|written| {
            let mut report = Report::new(Exit::Done);
            report.stdout = written.join("\n") + "\n";
            report
        }),
        GenerateCommand::Completions { shell } => {
            let mut command = command;
            let name = command.get_name().to_string();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, name, &mut script);
            let mut report = Report::new(Exit::Done);
            report.stdout = String::from_utf8_lossy(&script).into_owned();
            Ok(report)
        }
    };
    result.unwrap_or_else(|e| e.report(false, None))
}

/// Writes `NAME.1` and `NAME-SUB[-SUB...].1` for every visible subcommand into `out`.
fn man_pages(command: clap::Command, out: &Path) -> Result<Vec<String>, CommandError> {
    std::fs::create_dir_all(out)
        .map_err(|e| CommandError::Failed(format!("cannot create {}: {e}", out.display())))?;
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    write_page(&command, out, &mut written)?;
    Ok(written)
}

/// One page; after `build()` a subcommand's display name is `georep-create`.
fn write_page(
    command: &clap::Command,
    out: &Path,
    written: &mut Vec<String>,
) -> Result<(), CommandError> {
    let name = command.get_display_name().unwrap_or(command.get_name());
    let path = out.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut text)
        .and_then(|()| std::fs::write(&path, &text))
        .map_err(|e| CommandError::Failed(format!("cannot write {}: {e}", path.display())))?;
    written.push(path.display().to_string());
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            write_page(sub, out, written)?;
        }
    }
    Ok(())
}
