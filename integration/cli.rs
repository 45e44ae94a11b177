//! The command line without a gateway: `check` from standard input and its
//! warnings, shell completions, the man pages, and a closed output pipe.

mod netns;

use netns::tunwall_into_closed_pipe;
use std::process::{Command, Output};

fn tunwall(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tunwall");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/example.toml");

#[test]
fn check_reads_standard_input_and_names_it() {
    let text = std::fs::read_to_string(EXAMPLE).expect("example config");
    let out = tunwall(&["check", "-c", "-"], Some(&text));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("<stdin>: valid"), "{}", stdout(&out));
    assert!(stdout(&out).contains("layer auth_connect"));
    let out = tunwall(&["check", "-c", "-"], Some("[flows]\nudp_idle = 60\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("tunwall: <stdin>:2:12: udp_idle: a bare number"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_warns_on_stderr_and_still_exits_0() {
    let text = "[gateway]\ncontrol_socket = \"tunwall.sock\"\n\n[[port]]\nname = \"lan\"\ndevice = \"tw-lan\"\nzone = \"inside\"\nroutes = [\"198.18.1.5/24\"]\n\n[[port]]\nname = \"wan\"\ndevice = \"tw-wan\"\nzone = \"outside\"\n";
    let out = tunwall(&["check", "-c", "-"], Some(text));
    assert!(out.status.success(), "{}", stderr(&out));
    let warnings: Vec<String> = stderr(&out).lines().map(str::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[0]
            .starts_with("warning: <stdin>:2:18: control_socket \"tunwall.sock\" is relative")
    );
    assert!(warnings[1].starts_with("warning: <stdin>:8:11: \"198.18.1.5/24\" has host bits set"));
    assert!(warnings[2].starts_with("warning: <stdin>:11:8: port \"wan\" has no routes"));
    assert!(
        !stdout(&out).contains("warning"),
        "warnings go to stderr only"
    );
    // The example is clean.
    let out = tunwall(&["check", "-c", EXAMPLE], None);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
    // No ports at all.
    let out = tunwall(&["check", "-c", "-"], Some("[flows]\nmax_flows = 100\n"));
    assert!(out.status.success());
    assert_eq!(
        stderr(&out).trim_end(),
        "warning: <stdin>: no [[port]]: the gateway would forward nothing"
    );
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    // A policy long enough to overflow any pipe buffer.
    let mut text = std::fs::read_to_string(EXAMPLE).expect("example config");
    for i in 0..2000 {
        text.push_str(&format!(
            "\n[[filter]]\nname = \"f{i}\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = \"tcp\"\nremote_port = {}\n",
            1000 + i
        ));
    }
    let commands: [(&[&str], Option<&str>); 4] = [
        (&["check", "-c", "-"], Some(&text)),
        (&["simulate"], None),
        (&["man"], None),
        (&["completions", "bash"], None),
    ];
    for (args, input) in commands {
        let out = tunwall_into_closed_pipe(args, input);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "tunwall {args:?}: {:?}: {}",
            out.status,
            stderr(&out)
        );
    }
}

const COMMANDS: [&str; 7] = ["run", "check", "reload", "flows", "stats", "events", "man"];

#[test]
fn completions_for_bash_zsh_and_fish_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tunwall(&["completions", shell], None);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for command in COMMANDS {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        assert!(script.contains("prometheus"), "{shell} lacks options");
    }
    let out = tunwall(&["completions", "tcsh"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_pages_describe_every_command() {
    let out = tunwall(&["man"], None);
    assert!(out.status.success());
    let page = stdout(&out);
    assert!(
        page.starts_with(".ie") && page.contains(".TH tunwall 1"),
        "{page}"
    );
    for command in COMMANDS {
        assert!(
            page.contains(&format!("tunwall\\-{command}(1)")),
            "{command}"
        );
    }
    assert!(page.contains("SIGUSR1 reopens the event file"));
    let dir = std::env::temp_dir().join(format!("tunwall-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = tunwall(&["man", "--dir", dir.to_str().expect("utf-8")], None);
    let pages: Vec<String> = std::fs::read_dir(&dir)
        .expect("pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let check = std::fs::read_to_string(dir.join("tunwall-check.1")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", stderr(&out));
    for command in COMMANDS {
        assert!(pages.contains(&format!("tunwall-{command}.1")), "{pages:?}");
    }
    assert!(pages.contains(&"tunwall.1".to_string()));
    assert!(check.contains("reads it from standard input"), "{check}");
}
