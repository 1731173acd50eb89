//! Running the build's commands: checked, streamed line by line to the
//! progress reporter, with the tail of their output kept for errors.

use super::*;

/// Run a build command, streaming its output; fail with the output's tail.
pub(super) fn run_checked(
    step: &'static str,
    command: &mut Command,
    env: &[(String, String)],
    root: &Path,
    progress: &dyn ImageProgress,
) -> Result<(), ImageError> {
    let shown = show_command(command);
    let (status, tail) = run_streaming(command, env, progress)?;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::CommandFailed {
        step,
        command: shown,
        status: describe_status(status),
        tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        root: root.to_path_buf(),
    })
}

/// Run `command` with exactly `env`, passing each line of stdout and stderr to
/// `progress.line` as it arrives; returns the exit status and the last lines.
pub(super) fn run_streaming(
    command: &mut Command,
    env: &[(String, String)],
    progress: &dyn ImageProgress,
) -> Result<(ExitStatus, VecDeque<String>), ImageError> {
    let shown = show_command(command);
    let mut child = command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            command: shown.clone(),
            source,
        })?;

    // One reader thread per pipe (either could fill and block the child);
    // lines come back to this thread, since `progress` need not be Send.
    let (sender, receiver) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(spawn_line_reader(stdout, sender.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(spawn_line_reader(stderr, sender.clone()));
    }
    drop(sender);

    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in receiver {
        progress.line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|source| ImageError::Spawn {
        command: shown,
        source,
    })?;
    Ok((status, tail))
}

pub(super) fn spawn_line_reader<R: Read + Send + 'static>(
    pipe: R,
    sender: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if sender.send(line.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

pub(super) fn show_command(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

pub(super) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
