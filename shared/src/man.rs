//! Manual pages generated from a binary's clap definition (`clap_mangen`): one page per
//! command and per visible subcommand (`fleetwave.1`, `fleetwave-rollout.1`,
//! `fleetwave-rollout-status.1`, ...), so `man` has the same text as `--help`, down to each
//! subcommand. The top page also gets hand-written roff from `deploy/debian/man/NAME.roff`:
//! what comes before its first `.SH` continues the DESCRIPTION, the `.SH` sections (exit
//! status, files, see also) follow the generated ones.
//!
//! Only built with the `man` feature: the CLI and the coordinator print their pages
//! (`fleetwave man DIR`, `fleetwave-coordinator man DIR`), xtask prints the agent's.

use std::io;
use std::path::{Path, PathBuf};

/// Writes the pages of `cmd` into `dir` and returns their paths, top page first.
/// `extra` is the roff described in the module documentation ("" for none).
pub fn write_pages(cmd: clap::Command, extra: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let version = cmd.get_version().unwrap_or_default().to_string();
    write_subpages(&cmd, &name, &version, dir, &mut written)?;
    let top = dir.join(format!("{name}.1"));
    std::fs::write(&top, top_page(&cmd, extra)?)?;
    written.insert(0, top);
    Ok(written)
}

/// The `man DIR [--extra FILE]` command of each binary: writes the pages with the roff
/// read from `extra_file`, and prints each page's path.
pub fn print_pages(cmd: clap::Command, extra_file: Option<&Path>, dir: &Path) -> io::Result<()> {
    let extra = match extra_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })?,
        None => String::new(),
    };
    for page in write_pages(cmd, &extra, dir)? {
        println!("{}", page.display());
    }
    Ok(())
}

/// The top page: the generated sections with `extra` woven in.
fn top_page(cmd: &clap::Command, extra: &str) -> io::Result<Vec<u8>> {
    let (description, sections) = match extra.find("\n.SH ") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None if extra.starts_with(".SH ") => ("", extra),
        None => (extra, ""),
    };
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    push_roff(&mut out, description);
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    man.render_extra_section(&mut out)?;
    push_roff(&mut out, sections);
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn push_roff(out: &mut Vec<u8>, roff: &str) {
    let roff = roff.trim();
    if !roff.is_empty() {
        out.extend_from_slice(roff.as_bytes());
        out.push(b'\n');
    }
}

/// A page per visible subcommand, named after its path (`fleetwave-rollout-status.1`).
/// `usage` is how the command is typed (`fleetwave rollout`), `page` its page's name
/// (`fleetwave-rollout`).
fn write_subpages(
    cmd: &clap::Command,
    usage: &str,
    version: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let page_of = |usage: &str| usage.replace(' ', "-");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let usage = format!("{usage} {}", sub.get_name());
        let name = page_of(&usage);
        let page = sub
            .clone()
            .name(name.clone())
            .display_name(name.clone())
            .bin_name(usage.clone())
            .version(version.to_string());
        let mut out = Vec::new();
        clap_mangen::Man::new(page.clone()).render(&mut out)?;
        let file = dir.join(format!("{name}.1"));
        std::fs::write(&file, out)?;
        written.push(file);
        write_subpages(&page, &usage, version, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    /// A tool with nested commands.
    #[derive(Parser)]
    #[command(name = "tool", version = "1.2.3", about = "A tool")]
    struct Tool {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Work on rollouts.
        #[command(subcommand)]
        Rollout(Rollout),
        /// Not for people.
        #[command(hide = true)]
        Secret,
    }

    #[derive(Subcommand)]
    enum Rollout {
        /// Show a rollout's status.
        Status {
            /// Follow it until it ends.
            #[arg(long)]
            watch: bool,
        },
    }

    #[test]
    fn a_page_per_visible_command_with_the_extra_sections_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "Each command has its own help.\n.SH FILES\n.I /etc/tool.toml\n";
        let pages =
            write_pages(<Tool as clap::CommandFactory>::command(), extra, dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["tool.1", "tool-rollout.1", "tool-rollout-status.1"],
            "hidden commands and help have no page"
        );
        let top = std::fs::read_to_string(&pages[0]).unwrap();
        let description = top.find(".SH DESCRIPTION").unwrap();
        let note = top.find("Each command has its own help.").unwrap();
        let options = top.find(".SH OPTIONS").unwrap();
        let files = top.find(".SH FILES").unwrap();
        assert!(
            description < note && note < options && options < files,
            "{top}"
        );
        assert!(
            top.contains("tool\\-rollout(1)"),
            "subcommands refer to their pages: {top}"
        );
        let status = std::fs::read_to_string(&pages[2]).unwrap();
        assert!(status.contains("\\-\\-watch"), "{status}");
        assert!(status.contains("Follow it until it ends"), "{status}");
        assert!(
            status.contains(".TH tool-rollout-status 1  \"tool-rollout-status 1.2.3\""),
            "titled with the program's version: {status}"
        );
    }
}
