//! What a container "runs": its command and args read as a tiny shell, giving the output lines
//! (for logs), when it exits and with which code (for the lifecycle). Deterministic by design.

use crate::podspec::Container;

/// How a container's main process ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Exits `at_secs` after start with `code`.
    Exit { at_secs: u64, code: i32 },
    /// Runs until stopped, printing nothing more (e.g. `sleep infinity`).
    Idle,
    /// A long-running server: banner, then one line per second.
    Server,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Output lines with their offset from the container's start, seconds.
    pub lines: Vec<(u64, String)>,
    pub end: End,
}

impl Program {
    pub fn of(c: &Container, hostname: &str) -> Program {
        let argv: Vec<String> = c.command.iter().chain(&c.args).cloned().collect();
        let Some(commands) = commands_of(&argv) else {
            return server(c);
        };
        let mut lines = Vec::new();
        let mut at = 0u64;
        let mut status = 0;
        for words in commands {
            let Some((cmd, rest)) = words.split_first() else { continue };
            match base(cmd) {
                "echo" => {
                    let (newline, rest) = match rest.first().map(String::as_str) {
                        Some("-n") => (false, &rest[1..]),
                        _ => (true, rest),
                    };
                    let text = rest.join(" ");
                    for l in text.split('\n') {
                        lines.push((at, l.to_string()));
                    }
                    let _ = newline;
                    status = 0;
                }
                "env" | "printenv" => {
                    for (k, v) in environment(c, hostname, false) {
                        lines.push((at, format!("{k}={v}")));
                    }
                    status = 0;
                }
                "hostname" => {
                    lines.push((at, hostname.to_string()));
                    status = 0;
                }
                "sleep" => match rest.first().map(|s| s.parse::<f64>()) {
                    Some(Ok(n)) if n.is_finite() => {
                        at += n.ceil() as u64;
                        status = 0;
                    }
                    _ => return Program { lines, end: End::Idle },
                },
                "exit" => {
                    let code = rest.first().and_then(|s| s.parse().ok()).unwrap_or(status);
                    return Program { lines, end: End::Exit { at_secs: at, code } };
                }
                "true" | ":" => status = 0,
                "false" => status = 1,
                _ => return server(c),
            }
        }
        Program { lines, end: End::Exit { at_secs: at, code: status } }
    }

    /// Output lines up to `secs` after start.
    pub fn lines_until(&self, c: &Container, secs: u64) -> Vec<(u64, String)> {
        match self.end {
            End::Server => server_lines(c, 0, secs),
            _ => self.lines.iter().filter(|(at, _)| *at <= secs).cloned().collect(),
        }
    }
}

fn server(_c: &Container) -> Program {
    Program { lines: Vec::new(), end: End::Server }
}

/// A server's deterministic output between two offsets (inclusive).
pub fn server_lines(c: &Container, from: u64, to: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for t in from..=to {
        if t == 0 {
            out.push((0, format!("cube-sim: container {} started from image {}", c.name, c.image)));
            let keys: Vec<&str> = c.env.iter().map(|e| e.name.as_str()).collect();
            out.push((0, format!("cube-sim: environment keys: {}", keys.join(","))));
        } else {
            out.push((t, format!("cube-sim: {} tick {t}", c.name)));
        }
    }
    out
}

/// The environment a container sees, in a stable order.
pub fn environment(c: &Container, hostname: &str, tty: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOSTNAME".to_string(), hostname.to_string()),
    ];
    if tty {
        env.push(("TERM".to_string(), "xterm".to_string()));
    }
    for e in &c.env {
        env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
    }
    env.push(("HOME".to_string(), "/root".to_string()));
    env
}

fn base(cmd: &str) -> &str {
    cmd.rsplit('/').next().unwrap_or(cmd)
}

/// The simple commands of an argv: itself, or the script of `sh -c "..."`. None: no command
/// (the image's entrypoint, which the simulator treats as a server).
pub fn commands_of(argv: &[String]) -> Option<Vec<Vec<String>>> {
    let (first, rest) = argv.split_first()?;
    if matches!(base(first), "sh" | "bash" | "ash") && rest.first().map(String::as_str) == Some("-c") {
        let script = rest.get(1).cloned().unwrap_or_default();
        return Some(split_script(&script));
    }
    Some(vec![argv.to_vec()])
}

/// Splits a script on `;`, `&&` and newlines (outside quotes) into word lists.
pub fn split_script(script: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    let flush_word = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(ch) = chars.next() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            (None, ' ' | '\t') => flush_word(&mut word, &mut in_word, &mut words),
            (None, ';' | '\n') => {
                flush_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, '&') if chars.peek() == Some(&'&') => {
                chars.next();
                flush_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    flush_word(&mut word, &mut in_word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: &[&str], args: &[&str]) -> Container {
        Container {
            name: "app".into(),
            image: "uhub.service.ucloud.cn/x/y:1".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn echo_prints_its_args_and_exits_zero() {
        let p = Program::of(&container(&["echo"], &["hello", "world"]), "h");
        assert_eq!(p.lines, vec![(0, "hello world".to_string())]);
        assert_eq!(p.end, End::Exit { at_secs: 0, code: 0 });
    }

    #[test]
    fn shell_scripts_sleep_then_exit_with_the_given_code() {
        let p = Program::of(&container(&["sh", "-c"], &["echo 'a b'; sleep 3 && exit 2"]), "h");
        assert_eq!(p.lines, vec![(0, "a b".to_string())]);
        assert_eq!(p.end, End::Exit { at_secs: 3, code: 2 });
    }

    #[test]
    fn sleep_infinity_idles_and_unknown_commands_serve() {
        assert_eq!(Program::of(&container(&["sh", "-c", "echo hi; sleep infinity"], &[]), "h").end, End::Idle);
        assert_eq!(Program::of(&container(&["nginx"], &["-g", "daemon off;"]), "h").end, End::Server);
        assert_eq!(Program::of(&container(&[], &[]), "h").end, End::Server);
    }
}
